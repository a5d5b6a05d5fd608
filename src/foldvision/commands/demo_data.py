"""The built-in demo corpus: scikit-learn's real 8x8 handwritten digits as a competition folder.

    python -m foldvision.commands.demo_data inputs/digits

Writes `train.csv` (image_id,label), `train/*.png`, `test/*.png`, `sample_submission.csv` (image_id,label:
a digit per test image) and `test_labels.csv`, the held-back answers for `foldvision evaluate`.
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



def build(out: Path, test_size: float = 0.2, seed: int = 0, limit: int | None = None) -> tuple[int, int]:
    """Write the corpus to `out`; `limit` keeps a stratified sample of that many images (for tests)."""
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 ink levels -> 8-bit gray
    ids = [f"d{i:04d}" for i in range(len(images))]
    keep = np.arange(len(images))
    if limit is not None:
        keep, _ = train_test_split(keep, train_size=limit, random_state=seed, stratify=digits.target)
    train_idx, test_idx = train_test_split(keep, test_size=test_size, random_state=seed,
                                           stratify=digits.target[keep])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, idx in (("train", train_idx), ("test", test_idx)):
        (tmp / split).mkdir(parents=True)
        for i in idx:
            Image.fromarray(images[i], mode="L").save(tmp / split / f"{ids[i]}.png")
    labels = lambda idx: pl.DataFrame({"image_id": [ids[i] for i in idx], "label": digits.target[idx]})  # noqa: E731
    labels(train_idx).write_csv(tmp / "train.csv")
    labels(test_idx).write_csv(tmp / "test_labels.csv")
    labels(test_idx).with_columns(label=pl.lit(0)).write_csv(tmp / "sample_submission.csv")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the corpus appears whole or not at all
    return len(train_idx), len(test_idx)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision demo-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("inputs/digits"))
    parser.add_argument("--limit", type=int, help="keep a stratified sample of this many images")
    args = parser.parse_args(argv)
    n_train, n_test = build(args.out, limit=args.limit)
    print(f"demo corpus: {args.out} ({n_train} train, {n_test} test 8x8 digit images)")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
