"""Reading a corpus: the label table, the image files it names, the class order, and the images themselves.

A corpus is a folder (`data.dir`) holding a label table (`train.csv`: an id and a label per row), a folder of
training images, a folder of test images and a sample submission. Ids may name files with or without their
extension, and images may sit in nested folders.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from foldvision.config import DataConfig
from foldvision.console import console
from foldvision.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
ID_NAMES = ("id", "image_id", "imageid", "image", "img", "file_name", "filename", "file", "fname", "name", "path")
LABEL_NAMES = ("label", "target", "class", "category", "y", "labels", "class_name")


def read_table(path: Path) -> pd.DataFrame:
    """A CSV/TSV as strings (ids such as '007' keep their zeros); UTF-8 with or without BOM, else Shift-JIS."""
    if not path.is_file():
        raise UserError(f"{path} not found: check data.dir and the file name in the config")
    sep = "\t" if path.suffix.lower() == ".tsv" else None  # None: let pandas sniff , or ;
    for encoding in ("utf-8-sig", "cp932"):
        try:
            table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding=encoding,
                                engine="python")
            break
        except UnicodeDecodeError:
            continue
        except pd.errors.ParserError as e:
            raise UserError(f"{path}: not a readable CSV/TSV ({str(e).splitlines()[0]})") from None
        except pd.errors.EmptyDataError:
            raise UserError(f"{path}: the file is empty") from None
    else:
        raise UserError(f"{path}: neither UTF-8 nor Shift-JIS; re-save it as UTF-8")
    if encoding == "cp932":
        console.print(f"[yellow]note[/]: {path} read as Shift-JIS (cp932)")
    table.columns = [str(c).strip() for c in table.columns]
    return table


def _pick_column(table: pd.DataFrame, given: str | None, names: tuple[str, ...], what: str, key: str,
                 path: Path, exclude: tuple[str, ...] = ()) -> str:
    if given is not None:
        if given not in table.columns:
            raise UserError(f"{path}: no column '{given}' ({key}); columns are {', '.join(table.columns)}")
        return given
    lower = {c.lower(): c for c in table.columns if c not in exclude}
    for name in names:
        if name in lower:
            console.print(f"[dim]{path.name}: using column '{lower[name]}' as the {what} (set {key} to change)[/]")
            return lower[name]
    raise UserError(
        f"{path}: no {what} column among {', '.join(table.columns)}; name it with {key}=<column>"
    )


class ImageIndex:
    """Every image file under a folder, found by relative path, by path without extension, or by file name."""

    def __init__(self, folder: Path):
        if not folder.is_dir():
            raise UserError(f"image folder {folder} not found: check data.dir and the folder name in the config")
        self.folder = folder
        self.by_key: dict[str, str | None] = {}
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                if not name.lower().endswith(IMAGE_EXTENSIONS) or name.startswith("."):
                    continue
                rel = Path(root, name).relative_to(folder).as_posix()
                for key in dict.fromkeys((rel, rel.rsplit(".", 1)[0], name, name.rsplit(".", 1)[0])):
                    # a key two files share (a.jpg and a.png) is ambiguous: None marks it
                    self.by_key[key] = None if key in self.by_key and key != rel else rel
        self.files = sorted({v for v in self.by_key.values() if v})
        if not self.files:
            raise UserError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found in it")

    def resolve(self, image_id: str, where: str) -> str:
        """The path of `image_id` relative to the folder, or a UserError naming `where` it came from."""
        key = image_id.strip().replace("\\", "/")
        if key in self.by_key:
            rel = self.by_key[key]
            if rel is None:
                raise UserError(f"{where}: id '{image_id}' matches several files in {self.folder}; "
                                "use ids with the file extension")
            return rel
        raise UserError(f"{where}: no image for id '{image_id}' in {self.folder}; add the file or drop the row")


@dataclass
class Corpus:
    """The training table of a corpus: one row per image, with its resolved path and label."""

    table: pd.DataFrame  # columns: id, path (relative to image_dir), label, and group when configured
    image_dir: Path
    classes: list[str]  # the fixed class order: probability columns and model outputs follow it


def sort_classes(labels: list[str]) -> list[str]:
    """Numeric labels in numeric order (2 before 10), other labels in string order."""
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def read_train(cfg: DataConfig) -> Corpus:
    if cfg.dir is None:
        raise UserError("data.dir is not set: pass it, e.g. make train DATA=inputs/<corpus> or data.dir=...")
    root = Path(cfg.dir)
    path = root / cfg.train_csv
    table = read_table(path)
    id_col = _pick_column(table, cfg.id_col, ID_NAMES, "image id", "data.id_col", path)
    label_col = _pick_column(table, cfg.label_col, LABEL_NAMES, "label", "data.label_col", path, exclude=(id_col,))
    if len(table) == 0:
        raise UserError(f"{path}: the table has a header but no rows")
    columns = {"id": table[id_col].str.strip(), "label": table[label_col].str.strip()}
    if cfg.group_col is not None:
        if cfg.group_col not in table.columns:
            raise UserError(f"{path}: no column '{cfg.group_col}' (data.group_col); "
                            f"columns are {', '.join(table.columns)}")
        columns["group"] = table[cfg.group_col].str.strip()
    out = pd.DataFrame(columns)
    for column, name in (("id", id_col), ("label", label_col)):
        empty = out.index[out[column].isin(["", "nan", "NaN", "NA", "None"])]
        if len(empty):
            raise UserError(f"{path}: row {empty[0] + 2} has an empty {name!r} ({len(empty)} rows in all); "
                            "fill or drop them")
    dupes = out["id"][out["id"].duplicated()]
    if len(dupes):
        first = dupes.iloc[0]
        rows = [int(i) + 2 for i in out.index[out["id"] == first]]
        raise UserError(f"{path}: id '{first}' appears on rows {rows} ({dupes.nunique()} duplicated ids); "
                        "keep one row per image")
    index = ImageIndex(root / cfg.train_images)
    out.insert(1, "path", [index.resolve(i, f"{path} row {n + 2}") for n, i in enumerate(out["id"])])
    classes = sort_classes(out["label"].tolist())
    if len(classes) < 2:
        raise UserError(f"{path}: only one class ('{classes[0]}') in column '{label_col}'; "
                        "a classifier needs at least two")
    return Corpus(out, index.folder, classes)


def read_test(cfg: DataConfig) -> tuple[pd.DataFrame, Path]:
    """The test images (id, path) in the sample submission's order, or every file of the test folder."""
    root = Path(cfg.dir)
    index = ImageIndex(root / cfg.test_images)
    if cfg.sample_submission is None:
        ids = [f.rsplit(".", 1)[0] for f in index.files]
        return pd.DataFrame({"id": ids, "path": index.files}), index.folder
    sample_path = root / cfg.sample_submission
    sample = read_table(sample_path)
    ids = sample.iloc[:, 0].str.strip()
    paths = [index.resolve(i, f"{sample_path} row {n + 2}") for n, i in enumerate(ids)]
    unused = len(set(index.files) - set(paths))
    if unused:
        warnings.warn(f"{index.folder}: {unused} images are not in {sample_path.name}; they are not predicted",
                      stacklevel=2)
    return pd.DataFrame({"id": ids, "path": paths}), index.folder


def load_image(path: Path, channels: int) -> np.ndarray:
    """An image file as a uint8 HxWxC array (C = `channels`), EXIF orientation applied.

    16- and 32-bit grayscale are scaled to 8 bits; palette, alpha and CMYK images are converted.
    """
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                top = 65535.0 if im.mode.startswith("I") and arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
            elif im.mode in ("P", "PA", "LA"):
                im = im.convert("RGBA")
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read the image ({e}); replace the file or drop its row") from None
    return arr if arr.ndim == 3 else arr[:, :, None]


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, class index) pairs; the class index is -1 for unlabelled (test) images."""

    def __init__(self, image_dir: Path, paths: list[str], targets: np.ndarray | None, transform, channels: int):
        self.image_dir = image_dir
        self.paths = list(paths)
        self.targets = np.full(len(self.paths), -1) if targets is None else np.asarray(targets)
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.image_dir / self.paths[i], self.channels)
        return self.transform(image=image)["image"], int(self.targets[i])


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own albumentations stream (its RNG ignores torch's and numpy's seeds)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)
