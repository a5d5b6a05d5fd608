"""Validate a corpus before any training.

    python -m foldvision.commands.check <exp> [key=value ...]        (make check EXP=<exp> DATA=<corpus>)

The config is resolved in memory: check writes nothing, into a run folder or anywhere else.

Reports images per class and per fold, image sizes/modes/formats, unreadable files (every image is decoded),
duplicate images (same bytes) inside train and between train and test (a leak), and groups split across
folds. Exits 1 when it finds errors; duplicates and leaks are warnings.
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
import pandas as pd
from PIL import ImageOps

from foldvision.config import CONFIG_DIR, Config, load_config
from foldvision.console import out as console
from foldvision.corpus import dangling_link, open_image, read_table, read_test, read_train
from foldvision.errors import UserError
from foldvision.splits import assign_folds, corpus_folds_path


@dataclass
class ImageFacts:
    path: str
    digest: str | None  # sha1 of the file bytes
    size: tuple[int, int] | None
    mode: str | None
    format: str | None
    error: str | None


def inspect_image(path: Path, max_pixels: int | None) -> ImageFacts:
    """Hash the bytes and decode the whole image (a header alone does not reveal truncation)."""
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
            ImageOps.exif_transpose(im).load()
    except Exception as e:  # noqa: BLE001 - any decoder failure is a finding to report, not a crash
        reason = "empty file (0 bytes)" if not data else f"{type(e).__name__}: {e}"
        return ImageFacts(str(path), digest, None, None, None, reason)
    return ImageFacts(str(path), digest, size, mode, fmt, None)


def inspect_all(root: Path, paths: list[str], max_pixels: int | None) -> list[ImageFacts]:
    with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes and hashlib hashes without the GIL
        return list(pool.map(lambda rel: inspect_image(root / rel, max_pixels), paths))


def _spread(values: list[int]) -> str:
    return f"{min(values)} / {int(np.median(values))} / {max(values)}"


def run(cfg: Config) -> int:
    errors: list[str] = []
    warnings: list[str] = []
    corpus = read_train(cfg.data, verify=False)
    table = corpus.table
    console.print(f"[bold]{corpus.source}[/]: {len(table)} images, {len(corpus.classes)} classes")

    # folds: the saved corpus split if there is one, else the one `make folds` would write
    folds_path = corpus_folds_path(cfg)
    if folds_path.is_file():
        saved = read_table(folds_path)
        table = table.assign(fold=table["id"].map(dict(zip(saved["id"], saved["fold"]))))
        if table["fold"].isna().any():
            errors.append(f"{folds_path} does not cover {table['fold'].isna().sum()} images; delete it to re-split")
    else:
        try:
            groups = table["group"].tolist() if "group" in table else None
            table = table.assign(fold=assign_folds(table["label"].tolist(), groups, cfg.cv.n_folds, cfg.cv.seed))
        except UserError as e:
            errors.append(str(e))
    counts = pd.crosstab(table["label"], table["fold"] if "fold" in table else "n", margins=True, margins_name="all")
    console.print(counts.reindex([*corpus.classes, "all"]).to_string())
    if "group" in table and "fold" in table:
        split = table.dropna(subset=["fold"]).groupby("group")["fold"].nunique()
        if (split > 1).any():
            errors.append(f"{(split > 1).sum()} groups span several folds (e.g. '{split[split > 1].index[0]}'): "
                          f"delete {folds_path} and re-split with data.group_col set")

    facts = inspect_all(corpus.image_dir, table["path"].tolist(), cfg.data.max_image_pixels)
    test = read_test(cfg.data, verify=False)  # every image is decoded below: all unreadable ones listed
    test_facts = inspect_all(test.image_dir, test.table["path"].tolist(), cfg.data.max_image_pixels) if test else []
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

    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(facts):
        if f.digest:
            by_digest[f.digest].append(i)
    copies = [rows for rows in by_digest.values() if len(rows) > 1]
    if copies:
        labels = table["label"].tolist()
        conflicting = [rows for rows in copies if len({labels[i] for i in rows}) > 1]
        ids = table["id"].tolist()
        folds = table["fold"].tolist() if "fold" in table else None
        # a copy in another fold is validated on while its twin is trained on: the OOF score is inflated
        across = [rows for rows in copies if folds is not None and len({folds[i] for i in rows}) > 1]
        warnings.append(f"{sum(len(r) for r in copies)} train images are copies of another ({len(copies)} groups, "
                        f"e.g. {', '.join(ids[i] for i in copies[0][:3])}); {len(conflicting)} groups disagree on "
                        f"the label; {len(across)} groups span folds (a CV leak: drop the copies, or give each "
                        "group one id in a data.group_col column)")
    leaks = [f for f in test_facts if f.digest in by_digest]
    if leaks:
        warnings.append(f"leak: {len(leaks)} test images are byte-identical to train images "
                        f"(e.g. {Path(leaks[0].path).name} = {table['id'].iloc[by_digest[leaks[0].digest][0]]})")

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
