"""Validate a corpus before any training.

    python -m foldvision.commands.check <exp> [key=value ...]        (make check EXP=<exp> DATA=<corpus>)

The config is resolved in memory: check writes nothing into a run folder, the corpus or the splits; its one
file is the perceptual-hash cache under data.cache_dir (below).

Reports images per class (tag, grade; or the regression target's spread) and per fold, image
sizes/modes/formats, unreadable files (every image is decoded), duplicate images (same bytes) inside train and
between train and test (a leak), near-duplicates (resized, recompressed, slightly cropped or mirrored copies:
foldvision.duplicates, within cv.near_duplicate_distance and cv.near_duplicate_confirm bits) and groups split
across folds. Exits 1 when it finds errors; duplicates and leaks are warnings. The folds stage reuses the hash
cache (cv.near_duplicates=group).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import ImageOps

from foldvision import duplicates
from foldvision.config import CONFIG_DIR, Config, load_config
from foldvision.console import out as console
from foldvision.corpus import dangling_link, open_image, read_test, read_train
from foldvision.errors import UserError
from foldvision.run import stamps_json
from foldvision.splits import assign_folds, corpus_folds_path, describe_names, fold_counts
from foldvision.tables import read_table
from foldvision.targets import Task

TOP_CLUSTERS = 5  # the largest near-duplicate clusters printed


@dataclass
class ImageFacts:
    path: str
    digest: str | None  # sha1 of the file bytes
    size: tuple[int, int] | None
    mode: str | None
    format: str | None
    error: str | None
    phash: tuple[int, ...] | None = None  # foldvision.duplicates.hash_image of the decoded image


def inspect_image(path: Path, max_pixels: int | None, cache: duplicates.HashCache) -> ImageFacts:
    """Hash the bytes and decode the whole image (a header alone does not reveal truncation); its perceptual
    hashes come from the cache by content, or from the decoded pixels."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return ImageFacts(str(path), None, None, None, None, dangling_link(path) or str(e))
    digest = hashlib.sha1(data).hexdigest()
    try:
        with open_image(path) as im:
            size, mode, fmt = im.size, im.mode, im.format
            if max_pixels is not None and size[0] * size[1] > max_pixels:
                return ImageFacts(str(path), digest, size, mode, fmt, f"{size[0]}x{size[1]} over data.max_image_pixels")
            upright = ImageOps.exif_transpose(im)
            upright.load()
            phash = cache.get(digest[:16]) or duplicates.hash_image(upright)
    except Exception as e:  # noqa: BLE001 - any decoder failure is a finding to report, not a crash
        reason = "empty file (0 bytes)" if not data else f"{type(e).__name__}: {e}"
        return ImageFacts(str(path), digest, None, None, None, reason)
    return ImageFacts(str(path), digest, size, mode, fmt, None, phash)


def inspect_all(root: Path, paths: list[str], max_pixels: int | None, cache: duplicates.HashCache
                ) -> list[ImageFacts]:
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes and hashlib hashes without the GIL
        facts = list(pool.map(lambda rel: inspect_image(root / rel, max_pixels, cache), paths))
    for f in facts:  # the content digest keys the cache: the run's stamps use the same sha1 (run.ContentHashes)
        if f.digest:
            cache.put(f.digest[:16], f.phash)
    return facts


def _spread(values: list[int]) -> str:
    return f"{min(values)} / {int(np.median(values))} / {max(values)}"


def folds_and_counts(cfg: Config, table: pl.DataFrame, task: Task, errors: list[str],
                     groups: list[str] | None) -> pl.DataFrame:
    """`table` with the fold of each image (the saved corpus split if there is one, else the one `make folds`
    would write with `groups`), after printing the images per class, tag or grade and fold (or the regression
    target's spread per fold); what is wrong is added to `errors`."""
    folds_path = corpus_folds_path(cfg, task.kind)
    if folds_path.is_file():
        saved = read_table(folds_path)
        fold_of = dict(zip(saved["id"].to_list(), saved["fold"].to_list()))
        table = table.with_columns(fold=pl.Series([fold_of.get(i) for i in table["id"].to_list()], dtype=pl.String))
        if table["fold"].null_count():
            errors.append(f"{folds_path} does not cover {table['fold'].null_count()} images; delete it to re-split")
    else:
        try:
            folds = assign_folds(table["label"].to_list(), groups, cfg.cv.n_folds, cfg.cv.seed, task)
            table = table.with_columns(fold=pl.Series(folds, dtype=pl.Int64))
        except UserError as e:
            errors.append(str(e))
    has_folds = "fold" in table.columns
    console.print(fold_counts(table["label"].to_list(), table["fold"].to_list() if has_folds else None,
                              list(task.names), task.kind))
    if "group" in table.columns and has_folds:
        spans = (table.drop_nulls("fold").group_by("group").agg(pl.col("fold").n_unique())
                 .filter(pl.col("fold") > 1).sort("group"))
        if spans.height:
            errors.append(f"{spans.height} groups span several folds (e.g. '{spans['group'][0]}'): "
                          f"delete {folds_path} and re-split with data.group_col set")
    return table


def copies_and_leaks(table: pl.DataFrame, facts: list[ImageFacts], test_facts: list[ImageFacts]) -> list[str]:
    """Warnings: training images that are byte-identical copies of each other, and test images that are
    copies of training images (a leak)."""
    warnings = []
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(facts):
        if f.digest:
            by_digest[f.digest].append(i)
    copies = [rows for rows in by_digest.values() if len(rows) > 1]
    ids = table["id"].to_list()
    if copies:
        labels = table["label"].to_list()
        conflicting = [rows for rows in copies if len({labels[i] for i in rows}) > 1]
        folds = table["fold"].to_list() if "fold" in table.columns else None
        # a copy in another fold is validated on while its twin is trained on: the OOF score is inflated
        across = [rows for rows in copies if folds is not None and len({folds[i] for i in rows}) > 1]
        warnings.append(f"{sum(len(r) for r in copies)} train images are copies of another ({len(copies)} groups, "
                        f"e.g. {', '.join(ids[i] for i in copies[0][:3])}); {len(conflicting)} groups disagree on "
                        f"the label; {len(across)} groups span folds (a CV leak: drop the copies, or give each "
                        "group one id in a data.group_col column)")
    leaks = [f for f in test_facts if f.digest in by_digest]
    if leaks:
        warnings.append(f"leak: {len(leaks)} test images are byte-identical to train images "
                        f"(e.g. {Path(leaks[0].path).name} = {ids[by_digest[leaks[0].digest][0]]})")
    return warnings


def near_duplicates(cfg: Config, table: pl.DataFrame, facts: list[ImageFacts], test_facts: list[ImageFacts],
                    candidates: np.ndarray) -> list[str]:
    """Prints the near-duplicate clusters among the training images (largest first) and the `candidates`
    (pairs within cv.near_duplicate_distance, any fine distance) by distance; warnings: clusters that span
    folds, and test images near a training image. Byte-identical copies are left to `copies_and_leaks`."""
    ids, limit, confirm = table["id"].to_list(), cfg.cv.near_duplicate_distance, cfg.cv.near_duplicate_confirm
    digest = [f.digest for f in facts]
    candidates = candidates[[digest[i] != digest[j] for i, j in candidates[:, :2]]] if len(candidates) else candidates
    pairs = candidates[candidates[:, 3] <= confirm]
    found = duplicates.clusters(len(facts), pairs)
    console.print(f"near-duplicates (phash within {limit} of 64 bits and {confirm} of 256; mirrored, cropped): "
                  f"{len(found)} clusters, {sum(map(len, found))} train images")
    if len(candidates):
        console.print(f"  candidate pairs by distance of 64 bits: {duplicates.distance_counts(candidates)}; of 256 "
                      f"bits: {duplicates.distance_counts(candidates, fine=True)}")
    for rows in found[:TOP_CLUSTERS]:
        more = f" ... (+{len(rows) - 8})" if len(rows) > 8 else ""
        console.print(f"  {len(rows)}: {', '.join(ids[i] for i in rows[:8])}{more}")
    loose = duplicates.too_loose(found, len(facts), cfg.cv.n_folds)
    warnings = [f"cv.near_duplicate_distance={limit}, cv.near_duplicate_confirm={confirm}: {loose}"] if loose else []
    folds = table["fold"].to_list() if "fold" in table.columns else None
    across = [rows for rows in found if folds is not None and len({folds[i] for i in rows}) > 1]
    if across:
        example = ", ".join(ids[i] for i in across[0][:3])
        warnings.append(f"{len(across)} near-duplicate clusters span folds (e.g. {example}): the OOF score is "
                        "inflated; set cv.near_duplicates=group to keep each in one fold")
    test_hashes, test_valid = duplicates.pack(f.phash for f in test_facts)
    train_hashes, train_valid = duplicates.pack(f.phash for f in facts)
    near_test = duplicates.near_pairs(test_hashes, train_hashes, limit, confirm, test_valid, train_valid)
    if len(near_test):  # byte-identical ones are copies_and_leaks' to report
        near_test = near_test[[test_facts[i].digest != digest[j] for i, j in near_test[:, :2]]]
    if len(near_test):
        i, j, d, fine = near_test[0]
        warnings.append(f"leak: {len(set(near_test[:, 0].tolist()))} test images are near-duplicates of train images "
                        f"(e.g. {Path(test_facts[i].path).name} ~ {ids[j]}, {d} of 64 and {fine} of 256 bits apart)")
    return warnings


def run(cfg: Config) -> int:
    errors: list[str] = []
    corpus = read_train(cfg.data, verify=False)
    console.print(f"[bold]{corpus.source}[/]: {corpus.table.height} images, {describe_names(corpus.task)}")
    cache = duplicates.HashCache(stamps_json(cfg).parent)
    facts = inspect_all(corpus.image_dir, corpus.table["path"].to_list(), cfg.data.max_image_pixels, cache)
    test = read_test(cfg.data, verify=False)  # every image is decoded below: all unreadable ones listed
    test_facts = (inspect_all(test.image_dir, test.table["path"].to_list(), cfg.data.max_image_pixels, cache)
                  if test else [])
    cache.save()
    hashes, valid = duplicates.pack(f.phash for f in facts)
    candidates = duplicates.near_pairs(hashes, None, cfg.cv.near_duplicate_distance, duplicates.FINE_BITS, valid)
    groups = corpus.table["group"].to_list() if "group" in corpus.table.columns else None
    if cfg.cv.near_duplicates == "group":  # the split `make folds` would make: as splits.split_groups
        pairs = candidates[candidates[:, 3] <= cfg.cv.near_duplicate_confirm]
        groups = duplicates.split_groups(pairs, groups, corpus.table.height)
    table = folds_and_counts(cfg, corpus.table, corpus.task, errors, groups)
    for f in facts + test_facts:
        if f.error:
            errors.append(f"{f.path}: {f.error}")
    readable = [f for f in facts + test_facts if f.size]
    if readable:
        console.print(f"images: {len(facts)} train, {len(test_facts)} test; "
                      f"width min/median/max {_spread([f.size[0] for f in readable])}, "
                      f"height {_spread([f.size[1] for f in readable])}")
        console.print(f"modes: {dict(Counter(f.mode for f in readable))}; "
                      f"formats: {dict(Counter(f.format for f in readable))}")
    warnings = copies_and_leaks(table, facts, test_facts) + near_duplicates(cfg, table, facts, test_facts, candidates)

    for w in warnings:
        console.print(f"[yellow]warning[/]: {w}")
    for e in errors[:20]:
        console.print(f"[red]error[/]: {e}")
    if len(errors) > 20:
        console.print(f"[red]... and {len(errors) - 20} more errors[/]")
    console.print(f"check: {len(errors)} errors, {len(warnings)} warnings")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision check", description=__doc__.split("\n\n")[0])
    parser.add_argument("exp", help="experiment name (configs/<exp>.yaml) or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.dir=inputs/<corpus>")
    parser.add_argument("--configs", type=Path, default=CONFIG_DIR, help="folder of experiment configs")
    args = parser.parse_args(argv)
    sys.exit(run(load_config(args.exp, args.overrides, args.configs)))


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
