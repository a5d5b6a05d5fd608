"""Reading a corpus: the label table, the image files it names, the class order; no image is decoded here.

A corpus is a folder (`data.dir`) holding a label table (`train.csv`: an id and a label per row), a folder of
training images, a folder of test images and a sample submission. Ids may name files with or without their
extension, and images may sit in nested folders. The labels are classes, multi-label tags (one delimited column
or several 0/1 columns), regression values or ordinal grades: `data.task`, or read by `detect_task` and said in
one line; each is kept as a string in foldvision.targets' form.

Tables are read by foldvision.tables (every cell a string: '007' keeps its zeros, 'NA' stays text until it is
checked), then checked as a whole: missing-value marks, repeated ids, two ids naming one file, numbers spelt two
ways. Every mistake is one UserError naming the file and the row. The stages downstream get polars DataFrames
(without the row numbers).
Nothing here imports torch, so the stages that only read tables stay light.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import polars as pl
from PIL import Image, UnidentifiedImageError
from rich.markup import escape

from foldvision import layout
from foldvision.config import DataConfig
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.tables import (MISSING_MARKS, NUMBER, ROW, plural, read_numbered, refuse_missing,
                                refuse_multiline, refuse_repeats, strings, unique_names)
from foldvision.targets import TAG_SEP, Task

_PLAIN_INTEGER = re.compile(r"-?\d+")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
# Looked for in this order (a name earlier in a list wins); the later names are those competitions use
# (Planet's image_name and tags, APTOS's id_code and diagnosis, DR's level, ChestX-ray14's Image Index, ...).
ID_NAMES = ("id", "image_id", "imageid", "image", "img", "file_name", "filename", "file", "fname", "name", "path",
            "image_name", "image_path", "filepath", "file_path", "img_name", "img_id", "id_code", "image index")
LABEL_NAMES = ("label", "target", "class", "category", "y", "labels", "class_name",
               "tags", "tag", "score", "grade", "level", "diagnosis", "finding labels", "attribute_ids", "pawpularity")


def _pick_column(columns: list[str], given: str | None, names: tuple[str, ...], what: str, key: str,
                 path: Path, exclude: tuple[str, ...] = ()) -> str:
    columns = [c for c in columns if c != ROW]
    if given is not None:
        if given not in columns:
            raise UserError(f"{path}: no column '{given}' ({key}); columns are {', '.join(columns)}")
        return given
    lower = {c.lower(): c for c in columns if c not in exclude}
    for name in names:
        if name in lower:
            console.print(f"[dim]{escape(path.name)}: using column '{escape(lower[name])}' as the {what} "
                          f"(set {key} to change)[/]")
            return lower[name]
    raise UserError(f"{path}: no {what} column among {', '.join(columns)}; name it with {key}=<column>")



def _refuse_shared_files(table: pl.DataFrame, path: Path) -> None:
    """Two ids ('a' and 'a.jpg') that name one image file would train on it twice, perhaps under two labels."""
    shared = ~table.get_column("path").is_first_distinct()
    if not shared.any():
        return
    image = table.filter(shared).get_column("path")[0]
    rows = table.filter(pl.col("path") == image)
    named = [f"{r[ROW]} ({r['id']!r})" for r in rows.iter_rows(named=True)]
    labels = rows.get_column("label").unique(maintain_order=True).to_list() if "label" in rows.columns else []
    differ = f", with different labels ({', '.join(map(repr, labels))})" if len(labels) > 1 else ""
    more = table.filter(shared).get_column("path").n_unique() - 1
    also = f" ({plural(more, 'more file')} so named)" if more else ""
    raise UserError(f"{path}: rows {', '.join(named[:-1])} and {named[-1]} name the same image {image}{differ}{also}; "
                    "keep one row per image")


def canonical_numbers(labels: list[str]) -> dict[str, str]:
    """When every label is a number: the spellings to read as another ('1.0' -> '1'), so one number is one class.

    An integer written as a float ('1.0', '2.00', '1e2') always becomes the integer. Zero-padded integers ('01')
    are category codes and stay as written, unless another spelling of the same number is there too ('01' and
    '1'); then every integer is written plainly. A fractional label ('1.5') stays as written.
    """
    if not labels or not all(NUMBER.fullmatch(s) for s in labels):
        return {}
    values = {s: Decimal(s) for s in labels}
    # a huge exponent ('1e999') is no class index: left as written rather than expanded
    plain = {s: str(int(v)) for s, v in values.items() if abs(v.adjusted()) < 30 and v == v.to_integral_value()}
    mapping = {s: c for s, c in plain.items() if s != c and not _PLAIN_INTEGER.fullmatch(s)}
    spellings: dict[Decimal, set[str]] = defaultdict(set)
    for s in labels:
        spellings[values[s]].add(mapping.get(s, s))
    if any(len(names) > 1 for names in spellings.values()):
        mapping = {s: c for s, c in plain.items() if s != c}
    return mapping


def _canonical_labels(table: pl.DataFrame, path: Path) -> pl.DataFrame:
    """Numbers spelt two ways made one class, said in one line."""
    labels = table.get_column("label").unique(maintain_order=True).to_list()
    mapping = canonical_numbers(labels)
    if not mapping:
        return table
    counts = dict(table.get_column("label").value_counts().iter_rows())
    said = [f"'{s}' read as class '{mapping[s]}' ({plural(counts[s], 'row')})" for s in labels if s in mapping]
    more = f", and {len(said) - 5} more" if len(said) > 5 else ""
    console.print(f"[yellow]note[/]: {escape(path.name)}: labels: {escape(', '.join(said[:5]))}{more}: "
                  "one number, one class")
    return table.with_columns(pl.col("label").replace(mapping))


# ---- the target kind (data.task) ---------------------------------------------------------------------------------

LABEL_DELIMS = (" ", "|", ";", ",")  # what data.label_delim=null looks for between multi-label tags
MAX_NUMBER_CLASSES = 20  # auto: fractional numbers taking more distinct values than this are a regression target
_NUMBER_CELL = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"  # NUMBER, anchored for polars
_DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+")
_ZERO_ONE = ("0", "1", "0.0", "1.0")


def split_tags(cell: str, delim: str | None) -> list[str]:
    """A tag cell's tags as a label table writes them (`delim` None: the cell is one tag)."""
    if delim is None:
        return [cell] if cell else []
    parts = cell.split() if delim == " " else cell.split(delim)
    return [t.strip() for t in parts if t.strip()]


def _combines(distinct: list[str], delim: str) -> int | None:
    """How many tags `delim` splits the distinct cells into, when the cells are combinations of fewer tags
    (see detect_task, rule 1); else None."""
    split = [split_tags(c, delim) for c in distinct]
    tags = {t for parts in split for t in parts}
    if not len(tags) < len(distinct):
        return None
    alone = {parts[0] for parts in split if len(parts) == 1}
    within = {t for parts in split if len(parts) > 1 for t in parts}
    return len(tags) if 2 * len(tags) <= len(distinct) or alone & within else None


def _tag_delimiter(distinct: list[str], given: str | None, strict: bool) -> str | None:
    """The delimiter between tags: data.label_delim, else the one of LABEL_DELIMS that the cells hold and that
    gives the fewest tags (`strict`, for auto: only one that makes the cells combinations of tags)."""
    if given is not None:
        return given
    best: tuple[int, str] | None = None
    for delim in LABEL_DELIMS:
        if not any(delim in c for c in distinct):
            continue
        if delim == "," and all(_DECIMAL_COMMA.fullmatch(c) for c in distinct):
            continue  # '1,5': numbers with a decimal comma, not tags
        n = _combines(distinct, delim) if strict else len({t for c in distinct for t in split_tags(c, delim)})
        if n is not None and (best is None or n < best[0]):
            best = (n, delim)
    return best[1] if best else None


def detect_task(cells: list[str], cfg: DataConfig) -> tuple[str, str | None]:
    """The task kind of a label column's filled `cells` and, for multi-label, the delimiter between its tags.

    data.task other than auto is taken as said, and so is data.label_delim (multi-label). auto's rules, in this
    order (the line read_train prints says which was taken and how to change it; nothing is picked silently):
    1. multi-label when a delimiter (each of space, |, ;, ,) occurs in some cell and the
       distinct cells are combinations of fewer distinct tags: the tags are at most half as many as the cells,
       or one tag is a cell of its own as well as part of another ('sea' and 'sea sunset'). Class names that
       only share a word ('Common wheat', 'Common Chickweed') are not; nor are numbers with a decimal comma.
       Of several delimiters, the one giving the fewest tags.
    2. regression when every cell is a number, some with a fraction, taking more than MAX_NUMBER_CLASSES
       distinct values (a mean of raters' scores such as 1.683333).
    3. otherwise single-label classes, integers included: integer grades are ordinal only with
       data.task=ordinal, integer scores regression only with data.task=regression (the line says so).
    """
    distinct = sorted(set(cells))
    if cfg.task != "auto":
        return cfg.task, _tag_delimiter(distinct, cfg.label_delim, strict=False) if cfg.task == "multilabel" else None
    if cfg.label_delim is not None:  # a delimiter between tags given: the column holds tags
        return "multilabel", cfg.label_delim
    delim = _tag_delimiter(distinct, None, strict=True)
    if delim is not None:
        return "multilabel", delim
    if distinct and all(NUMBER.fullmatch(c) for c in distinct):
        values = {Decimal(c) for c in distinct}
        if len(values) > MAX_NUMBER_CLASSES and any(v != v.to_integral_value() for v in values):
            return "regression", None
    return "single", None


def _say_task(path: Path, holds: str, kind: str, cfg: DataConfig, how: str = "set data.task to change") -> None:
    """The one line saying what the label table was read as (`how`: what changes it, under auto)."""
    reading = {"single": "single-label", "multilabel": "multi-label", "regression": "regression",
               "ordinal": "ordinal grades"}[kind]
    how = how if cfg.task == "auto" else "data.task"
    console.print(f"[dim]{escape(path.name)}: {escape(holds)}: {reading} ({how})[/]")


def _row_error(bad: pl.DataFrame, path: Path, what: str) -> UserError:
    """One line naming the first of the `bad` rows (and how many there are); `what` uses {value}."""
    first = bad.row(0, named=True)
    return UserError(f"{path}: row {first[ROW]}: {what.format(value=first['label'])} "
                     f"({plural(bad.height, 'such row')})")


def _read_numbers(out: pl.DataFrame, column: str, kind: str, path: Path) -> pl.DataFrame:
    """Regression values and ordinal grades are numbers; a cell that is not one is an error naming its row."""
    bad = out.filter(~pl.col("label").str.contains(_NUMBER_CELL))
    if bad.height:
        raise _row_error(bad, path, f"'{column}' is '{{value}}', not a number; a {kind} target is one number per "
                                    "image: fix the row, or set data.task")
    return out.with_columns(value=pl.col("label").cast(pl.Float64))


def _read_regression(out: pl.DataFrame, column: str, cfg: DataConfig, path: Path) -> tuple[pl.DataFrame, list]:
    out = _read_numbers(out, column, "regression", path)
    values = out["value"]
    if values.n_unique() < 2:
        raise UserError(f"{path}: every row has {column} = {out['label'][0]}; a regression target needs at least "
                        "two values")
    _say_task(path, f"column '{column}' holds {values.n_unique()} distinct numbers from {values.min():g} to "
                    f"{values.max():g}", "regression", cfg)
    return out.drop("value"), [column]


def _read_grades(out: pl.DataFrame, column: str, cfg: DataConfig, path: Path) -> tuple[pl.DataFrame, list]:
    """Ordinal grades: whole numbers 0..K-1 with K = the highest grade + 1 (so a grade below 0 is the one
    outside); a grade in 0..K-1 without an image is said in one line."""
    out = _read_numbers(out, column, "ordinal", path)
    bad = out.filter(pl.col("value") != pl.col("value").round())
    if bad.height:
        raise _row_error(bad, path, f"grade '{{value}}' ('{column}') is not a whole number; ordinal grades are "
                                    "integers 0..K-1 (data.task=regression reads real values)")
    k = int(out["value"].max()) + 1
    bad = out.filter(pl.col("value") < 0)
    if bad.height:
        raise _row_error(bad, path, f"grade {{value}} ('{column}') is outside 0..{k - 1}: ordinal grades count "
                                    "from 0 (K = the highest grade + 1); shift the grades to start at 0")
    if k < 2:
        raise UserError(f"{path}: every grade in '{column}' is 0; ordinal grades need at least two (0..K-1)")
    out = out.with_columns(label=pl.col("value").cast(pl.Int64).cast(pl.String)).drop("value")
    names = [str(g) for g in range(k)]
    unseen = sorted(set(names) - set(out["label"].unique().to_list()), key=int)
    _say_task(path, f"column '{column}' holds grades 0..{k - 1}", "ordinal", cfg)
    if unseen:
        console.print(f"[yellow]note[/]: {escape(path.name)}: {plural(len(unseen), 'grade')} of 0..{k - 1} "
                      f"({', '.join(unseen)}) on no image: K is the highest grade + 1; the model meets "
                      "them only between their neighbours")
    return out, names


def _join_tags(tags: pl.DataFrame) -> tuple[pl.Series, list[str]]:
    """From (ROW, tag) pairs: each row's label (its tags in names order, joined by TAG_SEP) and the names."""
    names = sort_classes(tags["tag"].to_list())
    rank = pl.DataFrame({"tag": names, "rank": range(len(names))}, schema={"tag": pl.String, "rank": pl.Int64})
    joined = (tags.join(rank, on="tag").unique([ROW, "tag"]).sort(ROW, "rank")
              .group_by(ROW, maintain_order=True).agg(label=pl.col("tag").str.join(TAG_SEP)))
    return joined, names


def _refuse_untagged(out: pl.DataFrame, where: str, cfg: DataConfig, path: Path) -> None:
    untagged = out.filter(pl.col("label") == "")
    if untagged.height and not cfg.empty_tags:
        row = untagged.get_column(ROW)[0]
        raise UserError(f"{path}: row {row} has no tag ({where}; {plural(untagged.height, 'such row')}); set "
                        "data.empty_tags=true if an image may have none, or fill the row")


def _read_tags(out: pl.DataFrame, column: str, delim: str | None, cfg: DataConfig,
               path: Path) -> tuple[pl.DataFrame, list]:
    """Multi-label tags in one column, split by `delim`; an empty cell (or a missing-value mark) is no tag."""
    refuse_multiline(out, "label", column, path)
    cells = pl.when(pl.col("label").str.to_lowercase().is_in(MISSING_MARKS)).then(pl.lit("")).otherwise("label")
    if delim is None:
        parts = pl.concat_list(cells)
    elif delim == " ":
        parts = cells.str.replace_all(r"\s+", " ").str.split(" ")
    else:
        parts = cells.str.split(delim)
    tags = (out.select(ROW, tag=parts).explode("tag").with_columns(pl.col("tag").str.strip_chars())
            .filter(pl.col("tag") != ""))
    bad = tags.filter(pl.col("tag").str.contains(TAG_SEP, literal=True))
    if bad.height:
        first = bad.row(0, named=True)
        raise UserError(f"{path}: row {first[ROW]}: tag '{first['tag']}' holds '{TAG_SEP}', which foldvision joins "
                        f"tags with; rename the tag (or set data.label_delim='{TAG_SEP}' if it separates tags)")
    joined, names = _join_tags(tags)
    out = out.drop("label").join(joined, on=ROW, how="left", maintain_order="left").with_columns(
        pl.col("label").fill_null(""))
    _refuse_untagged(out, f"'{column}' is empty", cfg, path)
    if not names:
        raise UserError(f"{path}: no row of '{column}' holds a tag; multi-label needs at least one")
    most = int(out["label"].str.count_matches(TAG_SEP, literal=True).max()) + 1
    how = {" ": "space", None: "one"}.get(delim, f"'{delim}'")
    _say_task(path, f"column '{column}' holds {plural(len(names), 'tag')} ({how}-separated), up to {most} per "
                    "image", "multilabel", cfg, "data.label_delim" if cfg.label_delim else "set data.task to change")
    return out, names


def _read_tag_columns(table: pl.DataFrame, out: pl.DataFrame, columns: list[str], cfg: DataConfig,
                      path: Path) -> tuple[pl.DataFrame, list]:
    """Multi-label tags as 0/1 columns (HPA, ChestX-ray14 style): each column a tag, named by its header."""
    for column in columns:
        if TAG_SEP in column:
            raise UserError(f"{path}: column '{column}' (a tag of data.label_cols) holds '{TAG_SEP}', which "
                            "foldvision joins tags with; rename the column")
        bad = table.filter(~pl.col(column).str.strip_chars().is_in(_ZERO_ONE))
        if bad.height:
            first = bad.row(0, named=True)
            raise UserError(f"{path}: row {first[ROW]}: '{column}' is '{first[column]}'; tag columns "
                            f"(data.label_cols) hold 0 or 1 ({plural(bad.height, 'such row')})")
    names = sort_classes(columns)
    flags = [pl.when(pl.col(n).str.strip_chars().is_in(("1", "1.0"))).then(pl.lit(n)) for n in names]
    labels = table.select(ROW, label=pl.concat_str(flags, separator=TAG_SEP, ignore_nulls=True))
    out = out.join(labels, on=ROW, how="left", maintain_order="left")
    _refuse_untagged(out, f"0 in every one of {', '.join(names)}", cfg, path)
    most = int(out["label"].str.count_matches(TAG_SEP, literal=True).max()) + 1
    shown = ", ".join(f"'{c}'" for c in names[:4]) + (f", ... ({len(names)} columns)" if len(names) > 4 else "")
    _say_task(path, f"columns {shown} hold {plural(len(names), 'tag')} as 0/1, up to {most} per image",
              "multilabel", cfg)
    return out, names


def _read_classes(out: pl.DataFrame, column: str, cfg: DataConfig, path: Path) -> tuple[pl.DataFrame, list]:
    out = _canonical_labels(out, path)
    names = sort_classes(out["label"].to_list())
    how = "set data.task to change"
    if all(NUMBER.fullmatch(c) for c in names):  # numbers read as classes: say how to read them otherwise
        how = "numbers as classes: set data.task=ordinal or regression for grades or scores"
    _say_task(path, f"column '{column}' holds {len(names)} class{'es' * (len(names) != 1)}", "single", cfg, how)
    return out, names


def _one_hot_columns(table: pl.DataFrame, cfg: DataConfig, id_col: str) -> list[str] | None:
    """auto or multilabel with no label column by name: the columns holding only 0 and 1 (two or more) are the
    tags; None when there are not two."""
    if cfg.label_col is not None or cfg.task not in ("auto", "multilabel"):
        return None
    others = [c for c in table.columns if c not in (ROW, id_col, cfg.group_col)]
    binary = [c for c in others if table.get_column(c).str.strip_chars().is_in(_ZERO_ONE).all()]
    return binary if len(binary) >= 2 else None


def _label_source(table: pl.DataFrame, cfg: DataConfig, id_col: str, path: Path) -> tuple[str | None, list | None]:
    """Where the labels are: one column (its name), or 0/1 tag columns (data.label_cols, or found under auto)."""
    if cfg.label_cols is not None:
        missing = [c for c in cfg.label_cols if c not in table.columns]
        if missing:
            raise UserError(f"{path}: no column '{missing[0]}' (data.label_cols); columns are "
                            f"{', '.join(c for c in table.columns if c != ROW)}")
        return None, list(cfg.label_cols)
    try:
        return _pick_column(table.columns, cfg.label_col, LABEL_NAMES, "label", "data.label_col", path,
                            exclude=(id_col,)), None
    except UserError:
        found = _one_hot_columns(table, cfg, id_col)
        if found is None:
            raise
        return None, found


def _read_labels(table: pl.DataFrame, out: pl.DataFrame, source: tuple[str | None, list | None], kind: str,
                 delim: str | None, cfg: DataConfig, path: Path) -> tuple[pl.DataFrame, list]:
    """`out` with each row's label as folds.csv keeps it (foldvision.targets), and the task's names."""
    column, tag_columns = source
    if tag_columns is not None:
        return _read_tag_columns(table, out, tag_columns, cfg, path)
    reader = {"single": _read_classes, "regression": _read_regression, "ordinal": _read_grades}.get(kind)
    if reader is None:
        return _read_tags(out, column, delim, cfg, path)
    return reader(out, column, cfg, path)


# ---- the image files ---------------------------------------------------------------------------------------------

def _nfc(text: str) -> str:
    # ASCII is NFC already: the common case skips the Unicode tables
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _nfc_all(texts: pl.Series) -> pl.Series:
    return texts.str.normalize("NFC") if texts.str.contains(r"[^\x00-\x7F]").any() else texts


class ImageIndex:
    """Every image file under a folder, found by relative path, by path without extension, or by file name.

    Keys are in Unicode NFC, as are the ids looked up: a name macOS wrote decomposed (NFD) matches an id typed
    composed; the path returned is always the name on disk. A relative path names its own file even when it is
    another file's name elsewhere; any other key two files share (a.jpg and a.png) is ambiguous. Hidden folders
    (.cache, .ipynb_checkpoints) and the folder `exclude` (the test images, when the class folders sit right in
    the corpus folder beside test/) are not searched.
    """

    def __init__(self, folder: Path, base: Path | None = None, exclude: Path | None = None):
        if not folder.is_dir():
            raise UserError(f"image folder {folder} not found: check data.dir and the folder name in the config")
        paths = []
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d) != exclude)
            rel_root = Path(root).relative_to(folder).as_posix()
            prefix = "" if rel_root == "." else rel_root + "/"
            paths.extend(prefix + name for name in files)
        self._build(folder, paths, base)
        if not self.files:
            raise UserError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found in it")

    @classmethod
    def from_paths(cls, folder: Path, paths: list[str], base: Path | None = None) -> ImageIndex:
        """The index of `paths` ('/'-separated, relative to `folder`) without looking at the disk; the walk of
        a folder builds its index the same way. For file lists known already (a listing, a benchmark)."""
        index = cls.__new__(cls)
        index._build(folder, list(paths), base)
        return index

    def _build(self, folder: Path, paths: list[str], base: Path | None) -> None:
        self.folder = folder
        self.prefix = folder.relative_to(base).as_posix() + "/" if base is not None and folder != base else ""
        pattern = "(?i)(^|/)[^./][^/]*(" + "|".join(re.escape(e) for e in IMAGE_EXTENSIONS) + ")$"
        listed = pl.Series("rel", paths, dtype=pl.String)
        rel = listed.filter(listed.str.contains(pattern))
        self.files = rel.sort().to_list()
        frame = pl.DataFrame({"rel": rel, "key": _nfc_all(rel)})
        strip_ext = r"\.[^./]*$"
        frame = frame.with_columns(name=pl.col("key").str.split("/").list.last(),
                                   stem=pl.col("key").str.replace(strip_ext, ""))
        frame = frame.with_columns(name_stem=pl.col("name").str.replace(strip_ext, ""))
        # One row per (key, file); a file at the top of the folder has name == path and name stem == stem, which
        # are left out. Whether a key is ambiguous is judged only for the keys looked up (resolve_all): grouping
        # every key of a million files would cost more than the lookups themselves.
        self._keys = pl.concat([
            frame.select("key", "rel", exact=pl.lit(True)),
            frame.select(key="stem", rel="rel", exact=pl.lit(False)),
            frame.filter(pl.col("name") != pl.col("key")).select(key="name", rel="rel", exact=pl.lit(False)),
            frame.filter(pl.col("name_stem") != pl.col("stem")).select(key="name_stem", rel="rel", exact=pl.lit(False)),
        ])

    def __contains__(self, image_id: str) -> bool:
        return self._keys.filter(pl.col("key") == _nfc(image_id.strip().replace("\\", "/"))).height > 0

    def relative(self, rel: str) -> str:
        """A path relative to the folder, made relative to the base the index was given."""
        return self.prefix + rel

    def resolve(self, image_id: str, where: str) -> str:
        """The path of `image_id` relative to the base, or a UserError naming `where` it came from."""
        return self.resolve_all(pl.Series([image_id]), pl.Series([0]), where)[0]

    def resolve_all(self, ids: pl.Series, rows: pl.Series, where: str) -> pl.Series:
        """The path of every id (relative to the base), in order; an id with no file, or with several, is an
        error naming its row (`rows`: line numbers in the file `where`; 0 names no row)."""
        keys = _nfc_all(ids.str.strip_chars().str.replace_all("\\", "/", literal=True))
        query = pl.DataFrame({ROW: rows, "id": ids, "key": keys}).with_row_index("i")
        found = query.join(self._keys, on="key", how="left", maintain_order="left")
        if found.height == query.height:  # every id matched one file or none
            found = found.select(ROW, "id", path="rel", known=pl.col("rel").is_not_null())
        else:  # some id matched several files: one exact path wins, else it is ambiguous
            found = found.group_by("i", maintain_order=True).agg(
                pl.col(ROW, "id").first(), n=pl.col("rel").count(), n_exact=pl.col("exact").sum(),
                exact=pl.col("rel").filter(pl.col("exact")).first(), rel=pl.col("rel").first(),
            ).select(
                ROW, "id", known=pl.col("n") > 0,
                path=pl.when(pl.col("n_exact") == 1).then("exact").when(pl.col("n") == 1).then("rel"),
            )
        bad = found.filter(pl.col("path").is_null())
        if bad.height:
            first = bad.row(0, named=True)
            at = f"{where} row {first[ROW]}" if first[ROW] else where
            if first["known"]:
                raise UserError(f"{at}: id '{first['id']}' matches several files in {self.folder}; "
                                "use ids with the file extension")
            missing = bad.filter(~pl.col("known")).height
            more = f" (and {plural(missing - 1, 'more id')} without one)" if missing > 1 else ""
            raise UserError(f"{at}: no image for id '{first['id']}' in {self.folder}{more}; "
                            "add the file or drop the row")
        return found.select(pl.lit(self.prefix) + pl.col("path")).to_series().alias("path")


# ---- the training set --------------------------------------------------------------------------------------------

@dataclass
class Corpus:
    """The training table of a corpus: one row per image, with its resolved path and label."""

    table: pl.DataFrame  # columns: id, path (relative to image_dir), label, and group when configured (strings)
    image_dir: Path  # the corpus folder (data.dir): paths are relative to it
    classes: list[str]  # the task's names in their fixed order (classes, tags, grades or the target's name)
    source: Path  # the label table, or the folder of class folders
    kind: str = "single"  # the task kind, data.task resolved (foldvision.targets)

    @property
    def task(self) -> Task:
        return Task(self.kind, tuple(self.classes))


def sort_classes(labels: list[str]) -> list[str]:
    """Numeric labels in numeric order (2 before 10), other labels in string order."""
    unique = sorted(set(labels))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return unique


def rows_from_table(cfg: DataConfig, path: Path, index: ImageIndex) -> pl.DataFrame:
    """The label table read, checked and matched to the image files: id, path, label[, group]."""
    return read_rows(cfg, path, index)[0]


def read_rows(cfg: DataConfig, path: Path, index: ImageIndex) -> tuple[pl.DataFrame, Task]:
    """The label table read, checked and matched to the image files (id, path, label[, group]: each label as
    foldvision.targets keeps it in folds.csv), and its task (data.task, or what auto read: `detect_task`)."""
    table = read_numbered(path, cfg.encoding)
    id_col = _pick_column(table.columns, cfg.id_col, ID_NAMES, "image id", "data.id_col", path)
    source = _label_source(table, cfg, id_col, path)
    label_col = source[0]
    if table.height == 0:
        raise UserError(f"{path}: the table has a header but no rows")
    columns = {"id": pl.col(id_col).str.strip_chars()}
    if label_col is not None:
        columns["label"] = pl.col(label_col).str.strip_chars()
    if cfg.group_col is not None:
        if cfg.group_col not in table.columns:
            raise UserError(f"{path}: no column '{cfg.group_col}' (data.group_col); "
                            f"columns are {', '.join(c for c in table.columns if c != ROW)}")
        columns["group"] = pl.col(cfg.group_col).str.strip_chars()
    out = table.select(ROW, **columns)
    kind, delim = "multilabel", None
    if label_col is not None:
        filled = out.filter(~pl.col("label").str.to_lowercase().is_in(MISSING_MARKS))
        kind, delim = detect_task(filled.get_column("label").unique().to_list(), cfg)
    one_per_row = kind != "multilabel"  # a multi-label cell may be empty (data.empty_tags)
    refuse_missing(out, "id", id_col, path, "fill or drop them")
    if one_per_row:
        refuse_missing(out, "label", label_col, path, "fill or drop them")
    refuse_multiline(out, "id", id_col, path)
    if one_per_row:
        refuse_multiline(out, "label", label_col, path)
    if cfg.group_col is not None:
        refuse_missing(out, "group", cfg.group_col, path, "fill in the groups, or drop data.group_col")
    refuse_repeats(out, "id", path, "keep one row per image")
    out, names = _read_labels(table, out, source, kind, delim, cfg, path)
    out = out.with_columns(index.resolve_all(out.get_column("id"), out.get_column(ROW), str(path)))
    _refuse_shared_files(out, path)
    return out.select("id", "path", "label", *(["group"] if cfg.group_col is not None else [])), Task(kind, names)


def _rows_from_folders(cfg: DataConfig, index: ImageIndex) -> pl.DataFrame:
    """One folder per class (ImageFolder): the label is the first folder of each image's path."""
    if cfg.group_col is not None:
        raise UserError("data.group_col needs a label table with that column; a folder-per-class corpus has none")
    paths = [f for f in index.files if "/" in f]
    loose = len(index.files) - len(paths)
    if not paths:
        raise UserError(f"{index.folder}: no label table and no class folders; add train.csv or one folder per class")
    if loose:
        console.print(f"[yellow]warning[/]: {loose} images lie outside the class folders of "
                      f"{escape(str(index.folder))}; skipped")
    # a class is a name, not a path: a folder macOS wrote decomposed (NFD) is the class typed composed
    return strings({"id": [p.rsplit(".", 1)[0] for p in paths], "path": [index.relative(p) for p in paths],
                     "label": [_nfc(p.split("/", 1)[0]) for p in paths]})


def read_train(cfg: DataConfig, verify: bool = True) -> Corpus:
    """The training table; `verify` opens every image's header (check.py decodes them all instead)."""
    lay = layout.resolve(cfg)
    if lay.inferred:
        console.print(f"[dim]layout: {escape(lay.describe())}[/]")
    index = ImageIndex(lay.train_dir, lay.root, exclude=lay.test_dir)
    if lay.train_table is not None:
        (out, task), where = read_rows(cfg, lay.train_table, index), lay.train_table
    else:
        if cfg.task not in ("auto", "single"):
            raise UserError(f"data.task={cfg.task} needs a label table (train.csv); a folder-per-class corpus "
                            f"({lay.train_dir}) holds single-label classes: add a table or set data.task=auto")
        out, where = _rows_from_folders(cfg, index), lay.train_dir
        task = Task("single", tuple(sort_classes(out["label"].to_list())))
    if task.kind == "single" and len(task.names) < 2:
        raise UserError(f"{where}: only one class ('{task.names[0]}'); a classifier needs at least two")
    if verify:
        verify_images(lay.root, out["path"], cfg.max_image_pixels)
    return Corpus(out, lay.root, list(task.names), where, task.kind)


# ---- the test set ------------------------------------------------------------------------------------------------

def _sample(path: Path, header: str, index: ImageIndex | None, encoding: str | None) -> tuple[pl.DataFrame, bool]:
    """The sample submission (with ROW) and whether it has a header row.

    SIGNATE samples often have none: with header="auto" the first row is data when its first cell names
    a test image (or, without a test folder, when its other cells are all numbers).
    """
    raw = read_numbered(path, encoding, has_header=False)
    first = [str(c or "").strip() for c in raw.drop(ROW).row(0)] if raw.height else []
    if header == "auto":
        if not first:
            headerless = False
        elif index is not None:
            headerless = first[0] in index
        else:
            headerless = len(first) > 1 and all(NUMBER.fullmatch(c) for c in first[1:])
        header = "no" if headerless else "yes"
        if headerless:
            console.print(f"[dim]{escape(path.name)}: no header row (its first row is test image "
                          f"'{escape(first[0])}')[/]")
    cells = [c for c in raw.columns if c != ROW]
    if header == "no":
        return raw.rename({c: f"column{i}" for i, c in enumerate(cells)}), False
    named = raw.slice(1).rename(dict(zip(cells, unique_names(first))))
    return named, True


def read_sample(path: Path, header: str, index: ImageIndex | None,
                encoding: str | None = None) -> tuple[pl.DataFrame, bool]:
    """The sample submission as strings, and whether it has a header row (see `_sample`)."""
    table, has_header = _sample(path, header, index, encoding)
    return table.drop(ROW), has_header


@dataclass
class TestSet:
    table: pl.DataFrame  # id, path (relative to image_dir), in the order the submission needs
    image_dir: Path
    sample: pl.DataFrame | None  # the sample submission as read (strings), None when there is none
    sample_path: Path | None
    sample_header: bool


def _test_ids(table: pl.DataFrame, path: Path, what: str) -> pl.DataFrame:
    """ROW and id (the first column) of a sample submission or test table, checked: rows, no gaps, no repeats."""
    if table.height == 0:
        raise UserError(f"{path}: a header but no rows; {what} must list every test id")
    id_col = next(c for c in table.columns if c != ROW)
    out = table.select(ROW, id=pl.col(id_col).str.strip_chars())
    refuse_missing(out, "id", id_col, path, "fill or drop them")
    refuse_multiline(out, "id", id_col, path)
    refuse_repeats(out, "id", path, "keep one row per test image")
    return out


def read_test(cfg: DataConfig, verify: bool = True) -> TestSet | None:
    """The test images in the sample submission's order (or the test table's, or the test folder's),
    or None when the corpus has no test set; `verify` opens every image's header (check.py decodes them all
    instead)."""
    lay = layout.resolve(cfg)
    index = ImageIndex(lay.test_dir, lay.root) if lay.test_dir is not None else None
    sample, header = None, True
    if lay.sample is not None:
        sample, header = _sample(lay.sample, cfg.sample_header, index, cfg.encoding)
        ids, where = _test_ids(sample, lay.sample, "the sample submission"), lay.sample
    elif lay.test_table is not None:
        ids, where = _test_ids(read_numbered(lay.test_table, cfg.encoding), lay.test_table, "the test table"), lay.test_table
    elif index is not None:
        files = index.files
        return TestSet(strings({"id": [f.rsplit(".", 1)[0] for f in files],
                                 "path": [index.relative(f) for f in files]}), lay.root, None, None, True)
    else:
        return None
    if index is None:
        raise UserError(f"{where} lists test ids but the corpus has no test image folder; set data.test_images")
    paths = index.resolve_all(ids.get_column("id"), ids.get_column(ROW), str(where)).to_list()
    unused = len(index.files) - len(set(paths))
    if unused:
        console.print(f"[yellow]warning[/]: {unused} images in {escape(str(index.folder))} are not in "
                      f"{escape(where.name)}; they are not predicted")
    if verify:
        verify_images(lay.root, paths, cfg.max_image_pixels)
    return TestSet(strings({"id": ids.get_column("id"), "path": paths}), lay.root,
                   None if sample is None else sample.drop(ROW), lay.sample, header)


# ---- the images, opened but not decoded --------------------------------------------------------------------------

def open_image(path: Path) -> Image.Image:
    """`Image.open` without PIL's own decompression-bomb guard: foldvision applies data.max_image_pixels instead
    (with a message naming the file and the key), and PIL's global limit cannot be set per corpus."""
    Image.MAX_IMAGE_PIXELS = None  # set here, where images are opened, so importing foldvision changes nothing
    return Image.open(path)


def dangling_link(path: Path) -> str | None:
    """For a symbolic link whose target is gone (a moved disk, a deleted download): what it is, with its target.
    "No such file" about a file the user sees listed would send them looking in the wrong place."""
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)}, which does not exist"
    return None


def verify_images(root: Path, paths, max_pixels: int | None) -> None:
    """Open every image's header (no decoding: fast): zero-byte, non-image and oversized files fail here,
    before any training, with the file named. Truncated data is only found when decoding (load_image)."""
    for rel in paths:
        path = root / rel
        try:
            with open_image(path) as im:
                width, height = im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if dangling_link(path):
                raise UserError(f"{path}: {dangling_link(path)}; restore the file it points to, or drop its row")
            reason = "empty file (0 bytes)" if path.is_file() and path.stat().st_size == 0 else str(e)
            raise UserError(f"{path}: not a readable image ({reason}); replace the file or drop its row") from None
        if max_pixels is not None and width * height > max_pixels:
            raise UserError(f"{path}: {width}x{height} = {width * height:,} pixels, over data.max_image_pixels="
                            f"{max_pixels:,} (decompression-bomb guard); raise the limit if the image is genuine")
