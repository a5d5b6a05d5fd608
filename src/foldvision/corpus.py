"""Reading a corpus: the label table, the image files it names, the class order; no image is decoded here.

A corpus is a folder (`data.dir`) holding a label table (`train.csv`: an id and a label per row), a folder of
training images, a folder of test images and a sample submission. Ids may name files with or without their
extension, and images may sit in nested folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from foldvision import layout
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
    """Every image file under a folder, found by relative path, by path without extension, or by file name.

    Hidden folders (.cache, .ipynb_checkpoints) and the folder `exclude` (the test images, when the class
    folders sit right in the corpus folder beside test/) are not searched.
    """

    def __init__(self, folder: Path, base: Path | None = None, exclude: Path | None = None):
        if not folder.is_dir():
            raise UserError(f"image folder {folder} not found: check data.dir and the folder name in the config")
        self.folder = folder
        self.prefix = folder.relative_to(base).as_posix() + "/" if base is not None and folder != base else ""
        self.by_key: dict[str, str | None] = {}
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d) != exclude)
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

    def relative(self, rel: str) -> str:
        """A path relative to the folder, made relative to the base the index was given."""
        return self.prefix + rel

    def resolve(self, image_id: str, where: str) -> str:
        """The path of `image_id` relative to the base, or a UserError naming `where` it came from."""
        key = image_id.strip().replace("\\", "/")
        if key in self.by_key:
            rel = self.by_key[key]
            if rel is None:
                raise UserError(f"{where}: id '{image_id}' matches several files in {self.folder}; "
                                "use ids with the file extension")
            return self.relative(rel)
        raise UserError(f"{where}: no image for id '{image_id}' in {self.folder}; add the file or drop the row")


@dataclass
class Corpus:
    """The training table of a corpus: one row per image, with its resolved path and label."""

    table: pd.DataFrame  # columns: id, path (relative to image_dir), label, and group when configured
    image_dir: Path  # the corpus folder (data.dir): paths are relative to it
    classes: list[str]  # the fixed class order: probability columns and model outputs follow it
    source: Path  # the label table, or the folder of class folders


def sort_classes(labels: list[str]) -> list[str]:
    """Numeric labels in numeric order (2 before 10), other labels in string order."""
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def _rows_from_table(cfg: DataConfig, path: Path, index: ImageIndex) -> pd.DataFrame:
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
    out.insert(1, "path", [index.resolve(i, f"{path} row {n + 2}") for n, i in enumerate(out["id"])])
    return out


def _rows_from_folders(cfg: DataConfig, index: ImageIndex) -> pd.DataFrame:
    """One folder per class (ImageFolder): the label is the first folder of each image's path."""
    if cfg.group_col is not None:
        raise UserError("data.group_col needs a label table with that column; a folder-per-class corpus has none")
    paths = [f for f in index.files if "/" in f]
    loose = len(index.files) - len(paths)
    if not paths:
        raise UserError(f"{index.folder}: no label table and no class folders; add train.csv or one folder per class")
    if loose:
        console.print(f"[yellow]warning[/]: {loose} images lie outside the class folders of {index.folder}; skipped")
    return pd.DataFrame({"id": [p.rsplit(".", 1)[0] for p in paths], "path": [index.relative(p) for p in paths],
                         "label": [p.split("/", 1)[0] for p in paths]})


def read_train(cfg: DataConfig, verify: bool = True) -> Corpus:
    """The training table; `verify` opens every image's header (check.py decodes them all instead)."""
    lay = layout.resolve(cfg)
    if lay.inferred:
        console.print(f"[dim]layout: {lay.describe()}[/]")
    index = ImageIndex(lay.train_dir, lay.root, exclude=lay.test_dir)
    if lay.train_table is not None:
        out, where = _rows_from_table(cfg, lay.train_table, index), lay.train_table
    else:
        out, where = _rows_from_folders(cfg, index), lay.train_dir
    classes = sort_classes(out["label"].tolist())
    if len(classes) < 2:
        raise UserError(f"{where}: only one class ('{classes[0]}'); a classifier needs at least two")
    if verify:
        verify_images(lay.root, out["path"], cfg.max_image_pixels)
    return Corpus(out, lay.root, classes, where)


def read_sample(path: Path, header: str, index: ImageIndex | None) -> tuple[pd.DataFrame, bool]:
    """The sample submission and whether it has a header row.

    SIGNATE samples often have none: with header="auto" the first row is data when its first cell names
    a test image (or, without a test folder, when its other cells are all numbers).
    """
    table = read_table(path)
    if header == "auto":
        first = [str(c) for c in table.columns]
        if index is not None:
            headerless = first[0] in index.by_key
        else:
            headerless = len(first) > 1 and all(_is_number(c) for c in first[1:])
        header = "no" if headerless else "yes"
        if headerless:
            console.print(f"[dim]{path.name}: no header row (its first row is test image '{first[0]}')[/]")
    if header == "no":
        table = pd.concat([pd.DataFrame([table.columns], columns=table.columns), table], ignore_index=True)
        table.columns = [f"column{i}" for i in range(table.shape[1])]
    return table, header == "yes"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@dataclass
class TestSet:
    table: pd.DataFrame  # id, path (relative to image_dir), in the order the submission needs
    image_dir: Path
    sample: pd.DataFrame | None  # the sample submission as read (strings), None when there is none
    sample_path: Path | None
    sample_header: bool


def read_test(cfg: DataConfig, verify: bool = True) -> TestSet | None:
    """The test images in the sample submission's order (or the test table's, or the test folder's),
    or None when the corpus has no test set; `verify` opens every image's header (check.py decodes them all
    instead)."""
    lay = layout.resolve(cfg)
    index = ImageIndex(lay.test_dir, lay.root) if lay.test_dir is not None else None
    sample, header = None, True
    if lay.sample is not None:
        sample, header = read_sample(lay.sample, cfg.sample_header, index)
        ids, where = sample.iloc[:, 0].str.strip(), lay.sample
        first_row = 2 if header else 1
    elif lay.test_table is not None:
        ids, where, first_row = read_table(lay.test_table).iloc[:, 0].str.strip(), lay.test_table, 2
    elif index is not None:
        files = index.files
        return TestSet(pd.DataFrame({"id": [f.rsplit(".", 1)[0] for f in files],
                                     "path": [index.relative(f) for f in files]}), lay.root, None, None, True)
    else:
        return None
    if index is None:
        raise UserError(f"{where} lists test ids but the corpus has no test image folder; set data.test_images")
    paths = [index.resolve(i, f"{where} row {n + first_row}") for n, i in enumerate(ids)]
    unused = len(index.files) - len(set(paths))
    if unused:
        console.print(f"[yellow]warning[/]: {unused} images in {index.folder} are not in {where.name}; "
                      "they are not predicted")
    if verify:
        verify_images(lay.root, paths, cfg.max_image_pixels)
    return TestSet(pd.DataFrame({"id": list(ids), "path": paths}), lay.root, sample, lay.sample, header)


def open_image(path: Path) -> Image.Image:
    """`Image.open` without PIL's own decompression-bomb guard: foldvision applies data.max_image_pixels instead
    (with a message naming the file and the key), and PIL's global limit cannot be set per corpus."""
    Image.MAX_IMAGE_PIXELS = None  # set here, where images are opened, so importing foldvision changes nothing
    return Image.open(path)


def verify_images(root: Path, paths, max_pixels: int | None) -> None:
    """Open every image's header (no decoding: fast): zero-byte, non-image and oversized files fail here,
    before any training, with the file named. Truncated data is only found when decoding (load_image)."""
    for rel in paths:
        path = root / rel
        try:
            with open_image(path) as im:
                width, height = im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            reason = "empty file (0 bytes)" if path.is_file() and path.stat().st_size == 0 else str(e)
            raise UserError(f"{path}: not a readable image ({reason}); replace the file or drop its row") from None
        if max_pixels is not None and width * height > max_pixels:
            raise UserError(f"{path}: {width}x{height} = {width * height:,} pixels, over data.max_image_pixels="
                            f"{max_pixels:,} (decompression-bomb guard); raise the limit if the image is genuine")
