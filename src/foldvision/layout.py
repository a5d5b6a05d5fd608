"""Where a corpus keeps its parts: the label table (or one folder per class), images, test set, sample.

Each part is named in the config or, when the config leaves it null, found under the usual names; every
inference is printed so the user sees what was assumed. "none" in the config says a part does not exist.
No image is opened here, and nothing heavy is imported: `foldvision config` uses it too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from foldvision.config import DataConfig
from foldvision.errors import UserError

TRAIN_TABLES = ("train.csv", "train.tsv", "train_master.tsv", "train_master.csv", "train_labels.csv", "labels.csv")
TRAIN_DIRS = ("train", "train_images", "train_imgs", "images", "imgs")
TEST_DIRS = ("test", "test_images", "test_imgs")
TEST_TABLES = ("test.csv", "test.tsv")
SAMPLES = ("sample_submission.csv", "sample_submit.csv", "sample_submission.tsv", "sample_submit.tsv",
           "sample.csv")


@dataclass
class Layout:
    root: Path
    train_table: Path | None  # None: one folder per class under train_dir
    train_dir: Path
    test_dir: Path | None
    test_table: Path | None
    sample: Path | None
    inferred: list[str]  # what was assumed, for the user

    def describe(self) -> str:
        return "; ".join(self.inferred)


def _part(root: Path, given: str | None, candidates: tuple[str, ...], key: str, is_dir: bool,
          inferred: list[str], what: str) -> Path | None:
    if given == "none":
        return None
    if given is not None:
        path = root / given
        if not (path.is_dir() if is_dir else path.is_file()):
            raise UserError(f"{key}: {path} not found; fix the name, or set {key}=none if the corpus has none")
        return path
    for name in candidates:
        path = root / name
        if path.is_dir() if is_dir else path.is_file():
            inferred.append(f"{what} {name}")
            return path
    return None


def resolve(cfg: DataConfig) -> Layout:
    if cfg.dir is None:
        raise UserError("data.dir is not set: pass it, e.g. make train DATA=inputs/<corpus> or data.dir=...")
    root = Path(cfg.dir)
    if not root.is_dir():
        raise UserError(f"data.dir: {root} is not a folder; point it at the corpus (DATA=inputs/<corpus>)")
    inferred: list[str] = []
    table = _part(root, cfg.train_csv, TRAIN_TABLES, "data.train_csv", False, inferred, "labels from")
    train_dir = _part(root, cfg.train_images, TRAIN_DIRS, "data.train_images", True, inferred, "train images in")
    if table is None and cfg.train_csv is None:
        inferred.append("no label table: one folder per class")
    if train_dir is None:
        if table is not None:
            raise UserError(f"{root}: no train image folder ({', '.join(TRAIN_DIRS)}); name it with data.train_images")
        train_dir = root  # class folders right in the corpus folder
        inferred.append("class folders in the corpus folder")
    test_dir = _part(root, cfg.test_images, TEST_DIRS, "data.test_images", True, inferred, "test images in")
    sample = _part(root, cfg.sample_submission, SAMPLES, "data.sample_submission", False, inferred,
                   "submission format from")
    test_table = None
    if sample is None:
        test_table = _part(root, cfg.test_csv, TEST_TABLES, "data.test_csv", False, inferred, "test ids from")
    return Layout(root, table, train_dir, test_dir, test_table, sample, inferred)


def corpus_key(root: Path) -> str:
    """`<corpus folder name>-<hash of its absolute path>`: one name per corpus, two corpora never share it (its
    folder of splits, of decoded images and of image hashes)."""
    corpus = Path(root).resolve()
    return f"{corpus.name}-{hashlib.sha1(str(corpus).encode()).hexdigest()[:8]}"
