"""The corpus split, made once per corpus and reused by every experiment on it (torch-free).

`assign_folds` is (Group)StratifiedKFold with a clear error for classes too small to split; `corpus_folds`
reads the corpus's saved split (checked against the label table and cv.n_folds) or makes and saves it. The
split lives at `data.folds_file` when the user gives one, else under `data.folds_dir` (inputs/folds), in a
folder named for the corpus: foldvision writes nothing inside a corpus folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.table import Table
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from foldvision.config import Config
from foldvision.console import console
from foldvision.corpus import read_table
from foldvision.errors import UserError
from foldvision.files import write_atomic
from foldvision.layout import corpus_key


def assign_folds(labels: list[str], groups: list[str] | None, n_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..K-1) of every row: class proportions kept per fold, groups never split."""
    by_size = sorted(Counter(labels).items(), key=lambda item: -item[1])  # stable: ties in order of appearance
    small = [(name, n) for name, n in by_size if n < n_folds]
    if small:
        name, n = small[-1]
        fix = (f"use cv.n_folds={n} or add images" if n >= 2 else
               f"no K works for a class of one image: add images of '{name}' or drop its row")
        raise UserError(
            f"class '{name}' has {n} image{'s' * (n != 1)}, fewer than cv.n_folds={n_folds} "
            f"({len(small)} such classes): {fix}"
        )
    y = np.asarray(labels)
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        n_groups = len(set(groups))
        if n_groups < n_folds:
            raise UserError(f"only {n_groups} groups for cv.n_folds={n_folds}: lower cv.n_folds or drop data.group_col")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups=np.asarray(groups))
    folds = np.full(len(y), -1, dtype=int)
    for k, (_, val_idx) in enumerate(splits):
        folds[val_idx] = k
    return folds


def corpus_folds_path(cfg: Config) -> Path:
    """The corpus's split: `data.folds_file` when the user gives one, else
    `<data.folds_dir>/<corpus>-<hash>/folds_k<K>_seed<S>[_<group>][_neardup<D>].csv` — never inside the corpus
    folder."""
    if cfg.data.folds_file:
        return Path(cfg.data.folds_file)
    name = f"folds_k{cfg.cv.n_folds}_seed{cfg.cv.seed}" + (f"_{cfg.data.group_col}" if cfg.data.group_col else "")
    if cfg.cv.near_duplicates == "group":  # another split, saved beside the plain one
        name += f"_neardup{cfg.cv.near_duplicate_distance}"
    return Path(cfg.data.folds_dir) / corpus_key(Path(cfg.data.dir)) / f"{name}.csv"


def _whole_number(text: str) -> int | None:
    """'3' or '3.0' as 3 (other tools write folds as floats); anything else None."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def check_folds_file(folds: pl.DataFrame, path: Path, n_folds: int) -> list[int]:
    """The fold numbers of a saved or user-supplied split, checked against cv.n_folds: whole numbers in
    0..K-1, every fold present, every id once. Each problem is one line naming the file and the row."""
    if not {"id", "label", "fold"} <= set(folds.columns):
        raise UserError(f"{path}: not a folds file (needs id, label, fold columns); delete it to re-split")
    numbers = [_whole_number(text.strip()) for text in folds["fold"]]
    for row, (text, k) in enumerate(zip(folds["fold"], numbers)):
        if k is None:
            raise UserError(f"{path} row {row + 2}: fold '{text}' is not a whole number; folds are 0..{n_folds - 1} "
                            f"(cv.n_folds={n_folds})")
        if not 0 <= k < n_folds:
            raise UserError(f"{path} row {row + 2}: fold {k} is outside 0..{n_folds - 1} (cv.n_folds={n_folds}); "
                            "set cv.n_folds to the file's number of folds or fix the row")
    empty = sorted(set(range(n_folds)) - set(numbers))
    if empty:
        raise UserError(f"{path}: no rows in fold {empty[0]} of 0..{n_folds - 1} (cv.n_folds={n_folds}); set "
                        f"cv.n_folds to the file's number of folds ({len(set(numbers))}) or fix the file")
    dupes = folds["id"].filter(~folds["id"].is_first_distinct())
    if len(dupes):
        first = dupes[0]
        rows = [i + 2 for i, v in enumerate(folds["id"].to_list()) if v == first]
        raise UserError(f"{path}: id '{first}' appears on rows {rows} ({dupes.n_unique()} ids repeated); "
                        "a split names each id once")
    return numbers


def check_folds_match(folds: pl.DataFrame, table: pl.DataFrame, path: Path, source: Path) -> None:
    """A saved split must cover exactly the current images with the current labels."""
    if not {"id", "label", "fold"} <= set(folds.columns):
        raise UserError(f"{path}: not a folds file (needs id, label, fold columns); delete it to re-split")
    saved = dict(zip(folds["id"], folds["label"]))
    now = dict(zip(table["id"], table["label"]))
    added, removed = now.keys() - saved.keys(), saved.keys() - now.keys()
    relabelled = [i for i in now.keys() & saved.keys() if now[i] != saved[i]]
    if added or removed or relabelled:
        example = next(iter(sorted(added) or sorted(removed) or relabelled))
        raise UserError(
            f"{path} no longer matches {source}: {len(added)} ids added, {len(removed)} removed, "
            f"{len(relabelled)} relabelled (e.g. '{example}'); delete {path} to re-split "
            "(experiments scored on the old split are then not comparable)"
        )


def split_groups(cfg: Config, table: pl.DataFrame, image_dir: Path) -> list[str] | None:
    """The groups the split keeps whole: data.group_col's, joined (cv.near_duplicates=group) with the clusters
    of near-duplicate images, so a copy never sits in another fold than its original."""
    groups = table["group"].to_list() if "group" in table.columns else None
    if cfg.cv.near_duplicates == "off":
        return groups
    from foldvision import duplicates  # noqa: PLC0415 - imagehash only when asked for

    hashes, valid = duplicates.corpus_hashes(cfg, [image_dir / p for p in table["path"].to_list()])
    pairs = duplicates.near_pairs(hashes, None, cfg.cv.near_duplicate_distance, valid_a=valid)
    found = duplicates.clusters(table.height, pairs)
    problem = duplicates.too_loose(found, table.height, cfg.cv.n_folds)
    if problem:
        raise UserError(f"cv.near_duplicates=group with cv.near_duplicate_distance={cfg.cv.near_duplicate_distance}: "
                        f"{problem}")
    console.print(f"folds: {len(found)} clusters of near-duplicate images ({sum(map(len, found))} images) are "
                  "kept in one fold each (cv.near_duplicates=group)")
    return duplicates.split_groups(pairs, groups, table.height)


def corpus_folds(cfg: Config, table: pl.DataFrame, source: Path, image_dir: Path | None = None) -> np.ndarray:
    """The corpus's saved split (made now if it does not exist yet), as a fold number per row of `table`;
    `image_dir` (the corpus folder) is read when cv.near_duplicates=group makes a new split."""
    path = corpus_folds_path(cfg)
    if path.is_file():
        saved = read_table(path)
        numbers = check_folds_file(saved, path, cfg.cv.n_folds)
        check_folds_match(saved, table, path, source)
        fold_of = dict(zip(saved["id"].to_list(), numbers))
        console.print(f"folds: reusing {path}")
        return np.array([fold_of[i] for i in table["id"].to_list()], dtype=np.int64)
    groups = split_groups(cfg, table, image_dir if image_dir is not None else Path(cfg.data.dir))
    folds = assign_folds(table["label"].to_list(), groups, cfg.cv.n_folds, cfg.cv.seed).astype(np.int64)
    split = table.select("id", "label", *(["group"] if "group" in table.columns else [])).with_columns(
        fold=pl.Series(folds))
    write_atomic(path, lambda tmp: split.write_csv(tmp))
    console.print(f"folds: wrote {path}")
    return folds


def fold_counts(labels: list[str], folds: list | None, classes: list[str]) -> Table:
    """Images per class and fold, with an `all` row and column (`folds` None: one column `n`), as printed by
    the folds stage and by check; an image without a fold (None) is not counted."""
    keys = sorted({k for k in folds if k is not None}) if folds is not None else ["n"]
    folds = folds if folds is not None else ["n"] * len(labels)
    counts = Counter(zip(labels, folds))
    table = Table("label \\ fold", *map(str, keys), "all", box=None)
    for name in [*classes, "all"]:
        row = [sum(counts[(c, k)] for c in (classes if name == "all" else [name])) for k in keys]
        table.add_row(name, *map(str, row), str(sum(row)))
    return table


@dataclass(frozen=True)
class Exclusion:
    """data.exclude applied to a split: which rows do not train, and the label each row trains with."""

    dropped: np.ndarray  # bool per split row: never in a training set (still validated in its own fold)
    y_train: np.ndarray  # class index each row trains with: the split's, or the file's new_label
    relabelled: int
    source: str | None = None

    @property
    def summary(self) -> dict:
        """What scores.json records."""
        return {"file": self.source, "dropped": int(self.dropped.sum()), "relabelled": self.relabelled}


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", ""}


def read_exclude(path: str | None, ids: list[str], y: np.ndarray, classes: list[str]) -> Exclusion:
    """data.exclude's CSV against the split (`ids`, class indices `y`): an `id` column naming training images;
    optional `new_label` (that row trains with this class instead of being dropped) and `flagged` (only its
    true rows count: runs/<exp>/label_issues.csv works as it is). Every problem is one line naming the file and
    the row."""
    if path is None:
        return Exclusion(np.zeros(len(ids), bool), y, 0)
    if not Path(path).is_file():
        raise UserError(f"data.exclude={path}: no such file; give a CSV of training ids (e.g. runs/<exp>/"
                        "label_issues.csv) or null")
    table = read_table(Path(path))
    if "id" not in table.columns:
        raise UserError(f"{path}: no 'id' column (columns: {', '.join(table.columns)}); data.exclude needs the "
                        "training ids to drop in a column named id")
    row_of = {image_id: i for i, image_id in enumerate(ids)}
    index = {c: i for i, c in enumerate(classes)}
    dropped, y_train, relabelled, seen = np.zeros(len(ids), bool), y.copy(), 0, {}
    for n, record in enumerate(table.iter_rows(named=True)):
        where = f"{path} row {n + 2}"
        flag = str(record.get("flagged", "true") or "").strip().lower()
        if flag not in _TRUE | _FALSE:
            raise UserError(f"{where}: flagged '{record['flagged']}' is not true or false")
        if flag in _FALSE:
            continue
        image_id = record["id"]
        if image_id not in row_of:
            raise UserError(f"{where}: id '{image_id}' is not a training image of this corpus")
        if image_id in seen:
            raise UserError(f"{where}: id '{image_id}' is already on row {seen[image_id]}; name each id once")
        seen[image_id] = n + 2
        new = (record.get("new_label") or "").strip()
        if new and new not in index:
            raise UserError(f"{where}: new_label '{new}' is not a class ({', '.join(classes)})")
        if new:
            y_train[row_of[image_id]], relabelled = index[new], relabelled + 1
        else:
            dropped[row_of[image_id]] = True
    return Exclusion(dropped, y_train, relabelled, str(path))
