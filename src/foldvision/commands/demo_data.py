"""The built-in demo corpora, made from scikit-learn's real 8x8 handwritten digits, as competition folders.

    python -m foldvision.commands.demo_data inputs/digits                      (single-label: make demo)
    python -m foldvision.commands.demo_data inputs/digits_tags --kind tags     (multi-label)
    python -m foldvision.commands.demo_data inputs/digits_count --kind count   (ordinal grades or regression)

digits: `train.csv` (image_id,label), `train/*.png`, `test/*.png`, `sample_submission.csv` (image_id,label: a
digit per test image) and `test_labels.csv`, the held-back answers for `foldvision evaluate`.

tags: 30x30 canvases each showing two or three digit images of different digits, tagged with the digits shown
as words, Planet-style: `train.csv` is image_name,tags with space-separated tags ('one seven'); the sample
submission has the same columns (a space-joined tags cell per test image).

count: 30x30 canvases showing 0 to 4 digit images, "how many digits": `train.csv` is image,score with the
count; read as ordinal grades 0..4 (data.task=ordinal) or as a regression target (data.task=regression); the
sample submission has one number column.

A test canvas is made only from digit images no training canvas shows: the held-back score is a fair one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

KINDS = ("digits", "tags", "count")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GRID, CELL = 3, 10  # a canvas is GRID x GRID cells of CELL pixels; a digit (8x8) sits at a random offset in its cell
MAX_COUNT = 4  # count canvases show 0..MAX_COUNT digits


def _digits() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.images * (255.0 / 16.0)).round().astype(np.uint8), digits.target  # 0..16 ink -> 8-bit gray


def _publish(tmp: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the corpus appears whole or not at all


def _fresh(out: Path) -> Path:
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def build(out: Path, test_size: float = 0.2, seed: int = 0, limit: int | None = None) -> tuple[int, int]:
    """Write the digits corpus to `out`; `limit` keeps a stratified sample of that many images (for tests)."""
    images, target = _digits()
    ids = [f"d{i:04d}" for i in range(len(images))]
    keep = np.arange(len(images))
    if limit is not None:
        keep, _ = train_test_split(keep, train_size=limit, random_state=seed, stratify=target)
    train_idx, test_idx = train_test_split(keep, test_size=test_size, random_state=seed, stratify=target[keep])
    tmp = _fresh(out)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        (tmp / split).mkdir(parents=True)
        for i in idx:
            Image.fromarray(images[i], mode="L").save(tmp / split / f"{ids[i]}.png")
    labels = lambda idx: pl.DataFrame({"image_id": [ids[i] for i in idx], "label": target[idx]})  # noqa: E731
    labels(train_idx).write_csv(tmp / "train.csv")
    labels(test_idx).write_csv(tmp / "test_labels.csv")
    labels(test_idx).with_columns(label=pl.lit(0)).write_csv(tmp / "sample_submission.csv")
    _publish(tmp, out)
    return len(train_idx), len(test_idx)


def _canvas(rng: np.random.Generator, tiles: list[np.ndarray]) -> np.ndarray:
    """The tiles (8x8 digit images) in distinct random cells of a black canvas, each at a random offset."""
    canvas = np.zeros((GRID * CELL, GRID * CELL), dtype=np.uint8)
    for tile, cell in zip(tiles, rng.choice(GRID * GRID, size=len(tiles), replace=False)):
        dy, dx = rng.integers(0, CELL - tile.shape[0] + 1, size=2)
        y, x = (cell // GRID) * CELL + dy, (cell % GRID) * CELL + dx
        canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return canvas


def _tag_canvas(rng, images, target, pool) -> tuple[np.ndarray, str]:
    """Two or three different digits, each a real image of it from `pool`; tags in the order drawn."""
    shown = rng.choice(10, size=int(rng.integers(2, 4)), replace=False)
    tiles = [images[rng.choice(pool[target[pool] == d])] for d in shown]
    return _canvas(rng, tiles), " ".join(WORDS[d] for d in shown)


def _count_canvas(rng, images, target, pool) -> tuple[np.ndarray, int]:
    n = int(rng.integers(0, MAX_COUNT + 1))
    return _canvas(rng, [images[i] for i in rng.choice(pool, size=n, replace=False)]), n


def build_canvases(out: Path, kind: str, n: int = 1000, test_size: float = 0.2, seed: int = 0) -> tuple[int, int]:
    """Write the `kind` ('tags' or 'count') corpus of `n` canvases to `out`: (train, test) canvas counts."""
    images, target = _digits()
    train_pool, test_pool = train_test_split(np.arange(len(images)), test_size=test_size, random_state=seed,
                                             stratify=target)
    id_col, label_col, draw = {"tags": ("image_name", "tags", _tag_canvas),
                               "count": ("image", "score", _count_canvas)}[kind]
    rng = np.random.default_rng(seed)
    n_test = max(1, round(n * test_size))
    tmp = _fresh(out)
    rows: dict[str, dict[str, list]] = {}
    for split, pool, count in (("train", train_pool, n - n_test), ("test", test_pool, n_test)):
        (tmp / split).mkdir(parents=True)
        rows[split] = {id_col: [], label_col: []}
        for i in range(count):
            canvas, label = draw(rng, images, target, pool)
            name = f"{split}_{i:05d}"
            Image.fromarray(canvas, mode="L").save(tmp / split / f"{name}.png")
            rows[split][id_col].append(name)
            rows[split][label_col].append(label)
    pl.DataFrame(rows["train"]).write_csv(tmp / "train.csv")
    pl.DataFrame(rows["test"]).write_csv(tmp / "test_labels.csv")
    placeholder = pl.lit("zero one") if kind == "tags" else pl.lit(0)  # Planet's sample repeats one tag set
    pl.DataFrame(rows["test"]).with_columns(placeholder.alias(label_col)).write_csv(tmp / "sample_submission.csv")
    _publish(tmp, out)
    return n - n_test, n_test


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision demo-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", help="the corpus folder (default: inputs/digits[_<kind>])")
    parser.add_argument("--kind", choices=KINDS, default="digits",
                        help="digits: single-label; tags: multi-label canvases; count: how many digits (0..4)")
    parser.add_argument("--limit", type=int, help="digits: a stratified sample of this many images; tags, count: "
                                                  "this many canvases (default 1000)")
    args = parser.parse_args(argv)
    out = args.out or Path("inputs/digits" if args.kind == "digits" else f"inputs/digits_{args.kind}")
    if args.kind == "digits":
        n_train, n_test = build(out, limit=args.limit)
        print(f"demo corpus: {out} ({n_train} train, {n_test} test 8x8 digit images)")
        return
    n_train, n_test = build_canvases(out, args.kind, n=args.limit or 1000)
    what = "two or three digits, tagged" if args.kind == "tags" else "0 to 4 digits, counted"
    print(f"demo corpus: {out} ({n_train} train, {n_test} test 30x30 canvases of {what})")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
