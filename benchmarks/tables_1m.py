"""Time the table stages of a large corpus alone: read the label table, validate it, match ids to files, split.

    .venv/bin/python benchmarks/tables_1m.py [--rows 1000000] [--classes 20] [--folds 5]

A synthetic label table (id, label among --classes classes, group of ~5 images) is written to a temporary
folder. A million empty image files would take longer to make than everything measured here, so the id -> file
index is built from the list of relative paths (`ImageIndex.from_paths`, what the folder walk itself uses)
instead of from a walk of the disk. No image is opened. Each stage prints its wall and CPU time in seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from foldvision.config import DataConfig

try:  # the split's home since the stages stopped importing each other (issue 11)
    from foldvision.splits import assign_folds
except ImportError:
    from foldvision.stages.folds import assign_folds

try:  # after the split of data.py (issue 11)
    from foldvision import corpus
except ImportError:  # before it: the same functions lived in data.py
    from foldvision import data as corpus

try:  # the table reader's own module since corpus.py was split
    from foldvision.tables import read_table
except ImportError:
    read_table = corpus.read_table


@contextmanager
def timed(name: str, results: dict[str, float]):
    """Wall seconds into `results`; CPU seconds (all threads) printed beside them, a steadier figure when the
    machine is shared (polars uses every core, so its CPU time can exceed its wall time)."""
    start, cpu = time.perf_counter(), time.process_time()
    yield
    results[name] = time.perf_counter() - start
    print(f"{name:<40} {results[name]:8.2f} s wall {time.process_time() - cpu:8.2f} s CPU", flush=True)


def write_table(path: Path, n: int, n_classes: int) -> list[str]:
    """The label table, and the relative paths of its images (two folders deep, as large corpora nest them)."""
    rng = np.random.default_rng(0)
    ids = [f"{i:07d}" for i in range(n)]
    labels = rng.integers(0, n_classes, n)
    lines = ["id,label,group"] + [f"{i},class_{k:02d},g{j // 5}" for j, (i, k) in enumerate(zip(ids, labels))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"{i[:2]}/{i[2:4]}/{i}.jpg" for i in ids]


def index_from_paths(folder: Path, base: Path, paths: list[str]):
    """`ImageIndex.from_paths` where it exists; before it did, the same keys built the way its walk built them."""
    if hasattr(corpus.ImageIndex, "from_paths"):
        return corpus.ImageIndex.from_paths(folder, paths, base)
    index = corpus.ImageIndex.__new__(corpus.ImageIndex)
    index.folder, index.prefix, index.by_key = folder, "train/", {}
    for rel in paths:
        name = rel.rsplit("/", 1)[-1]
        for key in dict.fromkeys((rel, rel.rsplit(".", 1)[0], name, name.rsplit(".", 1)[0])):
            index.by_key[key] = None if key in index.by_key and key != rel else rel
    index.files = sorted({v for v in index.by_key.values() if v})
    return index


def rows_from_table(cfg: DataConfig, path: Path, index):
    """Read, validate and match: the label-table half of `read_train`."""
    rows = getattr(corpus, "rows_from_table", None) or corpus._rows_from_table
    return rows(cfg, path, index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table_path = root / "train.csv"
        paths = write_table(table_path, args.rows, args.classes)
        print(f"{args.rows:,} rows, {args.classes} classes, {table_path.stat().st_size / 1e6:.0f} MB; "
              f"module {corpus.__name__}")
        cfg = DataConfig(dir=str(root), train_csv="train.csv", group_col="group")
        with timed("read the table", results):
            read_table(table_path)
        with timed("index 1M file names (from a list)", results):
            index = index_from_paths(root / "train", root, paths)
        with timed("read + validate + match ids to files", results):
            table = rows_from_table(cfg, table_path, index)
        results["validate + match (difference)"] = results["read + validate + match ids to files"] - results[
            "read the table"]
        print(f"{'validate + match (difference)':<40} {results['validate + match (difference)']:8.2f} s")
        with timed("class order", results):
            corpus.sort_classes(table["label"].tolist())
        with timed(f"split, {args.folds} folds, stratified", results):
            assign_folds(table["label"].tolist(), None, args.folds, 42)
        with timed(f"split, {args.folds} folds, stratified + groups", results):
            assign_folds(table["label"].tolist(), table["group"].tolist(), args.folds, 42)
    total = sum(v for k, v in results.items() if k not in ("read the table", "validate + match (difference)"))
    print(f"{'total (index, read+validate+match, split x2)':<40} {total:8.2f} s")


if __name__ == "__main__":
    main()
