"""The corpus split, made once per corpus and reused by every experiment on it (torch-free).

`assign_folds` is (Group)StratifiedKFold with a clear error for classes too small to split; `corpus_folds`
reads the corpus's saved split (checked against the label table and cv.n_folds) or makes and saves it. The
split lives at `data.folds_file` when the user gives one, else under `data.folds_dir` (inputs/folds), in a
folder named for the corpus: foldvision writes nothing inside a corpus folder.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.table import Table
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from foldvision.config import Config
from foldvision.console import console
from foldvision.corpus import LABEL_DELIMS, split_tags
from foldvision.errors import UserError, did_you_mean
from foldvision.files import write_atomic
from foldvision.layout import corpus_key
from foldvision.tables import read_table
from foldvision.targets import TAG_SEP, Task


def assign_folds(labels: list[str], groups: list[str] | None, n_folds: int, seed: int,
                 task: Task | None = None) -> np.ndarray:
    """Fold number (0..K-1) of every row, groups never split: class proportions kept per fold (single-label);
    each tag's (multi-label: `multilabel_folds`); the target's quantile bins' (regression) or the grades'
    (ordinal: `value_bins`)."""
    if task is not None and task.kind == "multilabel":
        return multilabel_folds(task.encode(labels), groups, n_folds, seed, task.names)
    if task is not None and task.is_value:
        return _stratified(value_bins(task.encode(labels), task.kind, n_folds), groups, n_folds, seed)
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
    return _stratified(np.asarray(labels), groups, n_folds, seed)


def _refuse_few_groups(groups: list[str], n_folds: int) -> None:
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise UserError(f"only {n_groups} groups for cv.n_folds={n_folds}: lower cv.n_folds or drop data.group_col")


def _stratified(y: np.ndarray, groups: list[str] | None, n_folds: int, seed: int) -> np.ndarray:
    """(Group)StratifiedKFold's fold of every row, stratified on the labels or bins `y`."""
    if len(y) < n_folds:
        raise UserError(f"{len(y)} images for cv.n_folds={n_folds}: lower cv.n_folds or add images")
    if groups is None:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        _refuse_few_groups(groups, n_folds)
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups=np.asarray(groups))
    folds = np.full(len(y), -1, dtype=int)
    for k, (_, val_idx) in enumerate(splits):
        folds[val_idx] = k
    return folds


MAX_BINS = 10  # regression: the target is stratified on at most this many quantile bins


def value_bins(values: np.ndarray, kind: str, n_folds: int) -> np.ndarray:
    """The strata of a regression target (its quantile bins, at most MAX_BINS, each of at least 2 x cv.n_folds
    images where the corpus allows) or of ordinal grades (the grade itself). A stratum with fewer images than
    folds is merged into its smaller neighbour, so StratifiedKFold can place it in every fold."""
    if kind == "ordinal":
        strata = values.astype(np.int64)
    else:
        n_bins = int(np.clip(len(values) // (2 * n_folds), 1, MAX_BINS))
        edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
        strata = np.searchsorted(edges, values, side="right")
    order = sorted(set(strata.tolist()))
    sizes = {s: int((strata == s).sum()) for s in order}
    while len(order) > 1 and min(sizes.values()) < n_folds:
        i = min(range(len(order)), key=lambda j: sizes[order[j]])
        j = i - 1 if i == len(order) - 1 or (i > 0 and sizes[order[i - 1]] <= sizes[order[i + 1]]) else i + 1
        small, into = order[i], order[j]
        strata[strata == small] = into
        sizes[into] += sizes.pop(small)
        order.remove(small)
    return strata


def multilabel_folds(y: np.ndarray, groups: list[str] | None, n_folds: int, seed: int,
                     names: tuple[str, ...]) -> np.ndarray:
    """Iterative stratification (iterative-stratification's MultilabelStratifiedKFold) of the N x K 0/1 tag
    matrix `y`, refined by `balance_folds`: every tag's rate kept per fold. With groups, each group is one
    sample tagged with every tag of its images (the library has no group-aware split: its `groups` is ignored),
    balanced by its images' tag counts, and its fold is its images'. A tag on fewer images than folds is said
    in one line; it is not an error."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold  # noqa: PLC0415 - training-side package

    if len(y) < n_folds:
        raise UserError(f"{len(y)} images for cv.n_folds={n_folds}: lower cv.n_folds or add images")
    _say_rare_tags(y, n_folds, names)
    images = np.hstack([y, np.ones((len(y), 1))])  # each image's tags, and the image itself
    if groups is not None:
        _refuse_few_groups(groups, n_folds)
        keys, member = np.unique(np.asarray(groups), return_inverse=True)
        counts = np.zeros((len(keys), images.shape[1]))
        np.add.at(counts, member, images)
    else:
        member, counts = np.arange(len(y)), images
    tagged = counts[:, :-1] > 0
    if tagged.shape[1] == 1:  # one tag: the library wants two or more columns; a plain stratified split is the same
        sample_folds = _stratified(tagged[:, 0].astype(int), None, n_folds, seed)
    else:
        splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        sample_folds = np.full(len(tagged), -1, dtype=int)
        for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(tagged)), tagged)):
            sample_folds[val_idx] = k
    return balance_folds(counts, sample_folds, n_folds)[member]


BALANCE_ROUNDS = 100  # passes over every pair of folds; each pass that finds nothing better ends the search
_CANDIDATES = 16  # per fold, the samples whose move or swap promises most, tried exactly


def balance_folds(counts: np.ndarray, folds: np.ndarray, n_folds: int) -> np.ndarray:
    """`folds` refined by moving and swapping samples between folds while that lowers the squared distance of
    every fold's column sums (`counts`: per sample, its images' count of each tag and its image count) from
    their means: each tag's images, and the images, spread evenly.

    Our own step because iterative stratification alone leaves the commonest tags unbalanced: it places
    them last, into folds the rarer tags already filled (on 240 canvases of 2-3 of 10 equally common digits, 5
    folds: a tag's count in a fold was up to 3.4-7.4 rows from its mean, by seed; 7-14 on 800). No package
    does this refinement; it keeps every group whole (a sample is a group) and is deterministic."""
    folds = folds.copy()
    target = counts.sum(axis=0) / n_folds
    sums = np.stack([counts[folds == f].sum(axis=0) for f in range(n_folds)]).astype(np.float64)
    sq = (counts.astype(np.float64) ** 2).sum(axis=1)
    for _ in range(BALANCE_ROUNDS):
        moved = False
        for f1 in range(n_folds):
            for f2 in range(n_folds):
                if f1 != f2 and _improve(counts, sq, folds, sums, target, f1, f2):
                    moved = True
        if not moved:
            break
    return folds


def _improve(counts, sq, folds, sums, target, f1: int, f2: int) -> bool:
    """The best of: a sample of f1 moved to f2, or swapped with one of f2 (among the most promising); applied
    when it lowers the objective. The change of sum((sums - target)^2) for a moved vector d is 2 d.(E1 - E2) +
    2 |d|^2 (E: the two folds' sums minus target), which ranks the candidates in one product each."""
    gap = (sums[f1] - target) - (sums[f2] - target)
    in1, in2 = np.flatnonzero(folds == f1), np.flatnonzero(folds == f2)
    if not len(in1):
        return False
    out_a = -2 * counts[in1] @ gap + 2 * sq[in1]  # a leaves f1 for f2 (its whole change when moved alone)
    top_a = np.argsort(out_a, kind="stable")[:_CANDIDATES]
    best, pick = out_a[top_a[0]], (in1[top_a[0]], None)
    if len(in2):
        in_b = 2 * counts[in2] @ gap + 2 * sq[in2]  # b leaves f2 for f1
        top_b = np.argsort(in_b, kind="stable")[:_CANDIDATES]
        cross = counts[in1[top_a]] @ counts[in2[top_b]].T
        swap = out_a[top_a][:, None] + in_b[top_b][None, :] - 4 * cross
        i, j = np.unravel_index(np.argmin(swap), swap.shape)
        if swap[i, j] < best:
            best, pick = swap[i, j], (in1[top_a[i]], in2[top_b[j]])
    if best >= -1e-9:
        return False
    a, b = pick
    folds[a], sums[f1], sums[f2] = f2, sums[f1] - counts[a], sums[f2] + counts[a]
    if b is not None:
        folds[b], sums[f2], sums[f1] = f1, sums[f2] - counts[b], sums[f1] + counts[b]
    return True


def _say_rare_tags(y: np.ndarray, n_folds: int, names: tuple[str, ...]) -> None:
    counts = y.sum(axis=0).astype(int)
    rare = [(names[i], counts[i]) for i in np.argsort(counts, kind="stable") if counts[i] < n_folds]
    if rare:
        shown = ", ".join(f"'{name}' ({n})" for name, n in rare[:5]) + (", ..." if len(rare) > 5 else "")
        console.print(f"[yellow]note[/]: {_plural_tags(len(rare))} on fewer images than cv.n_folds={n_folds}: "
                      f"{shown}; a fold without one has no positive of that tag, so its per-fold AUC/AP there is "
                      "undefined (the OOF score over all folds still counts it)")


def _plural_tags(n: int) -> str:
    return f"{n} tag{'s' * (n != 1)}"


def corpus_folds_path(cfg: Config, kind: str = "single") -> Path:
    """The corpus's split: `data.folds_file` when the user gives one, else
    `<data.folds_dir>/<corpus>-<hash>/folds_k<K>_seed<S>[_<group>][_neardup<D>-<C>][_<task kind>].csv` — never
    inside the corpus folder. A corpus read as another task kind (`kind`, data.task resolved) is stratified on
    other labels: its split is saved beside the single-label one (whose name is unchanged)."""
    if cfg.data.folds_file:
        return Path(cfg.data.folds_file)
    name = f"folds_k{cfg.cv.n_folds}_seed{cfg.cv.seed}" + (f"_{cfg.data.group_col}" if cfg.data.group_col else "")
    if cfg.cv.near_duplicates == "group":  # another split, saved beside the plain one
        name += f"_neardup{cfg.cv.near_duplicate_distance}-{cfg.cv.near_duplicate_confirm}"
    if kind != "single":
        name += f"_{kind}"
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


def _comparable(label: str, kind: str):
    """A label as a split file and the label table are compared: a user's split may write tags with their own
    delimiter and in any order ('sunset sea' is 'sea|sunset'), and numbers spelt another way ('2.0' is 2)."""
    if kind == "multilabel":
        return frozenset(re.split(r"[|;,\s]+", label.strip())) - {""}
    if kind in ("regression", "ordinal"):
        try:
            return float(label)
        except ValueError:
            return label
    return label


def check_folds_match(folds: pl.DataFrame, table: pl.DataFrame, path: Path, source: Path,
                      kind: str = "single") -> None:
    """A saved split must cover exactly the current images with the current labels (read as `kind`)."""
    if not {"id", "label", "fold"} <= set(folds.columns):
        raise UserError(f"{path}: not a folds file (needs id, label, fold columns); delete it to re-split")
    saved = {i: _comparable(label, kind) for i, label in zip(folds["id"], folds["label"])}
    now = {i: _comparable(label, kind) for i, label in zip(table["id"], table["label"])}
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
    pairs = duplicates.near_pairs(hashes, None, cfg.cv.near_duplicate_distance, cfg.cv.near_duplicate_confirm,
                                  valid_a=valid)
    found = duplicates.clusters(table.height, pairs)
    problem = duplicates.too_loose(found, table.height, cfg.cv.n_folds)
    if problem:
        raise UserError(f"cv.near_duplicates=group with cv.near_duplicate_distance={cfg.cv.near_duplicate_distance} "
                        f"and cv.near_duplicate_confirm={cfg.cv.near_duplicate_confirm}: {problem}")
    console.print(f"folds: {len(found)} clusters of near-duplicate images ({sum(map(len, found))} images) are "
                  "kept in one fold each (cv.near_duplicates=group)")
    return duplicates.split_groups(pairs, groups, table.height)


def corpus_folds(cfg: Config, table: pl.DataFrame, source: Path, image_dir: Path | None = None,
                 task: Task | None = None) -> np.ndarray:
    """The corpus's saved split (made now if it does not exist yet), as a fold number per row of `table`
    (labels read as `task`, single-label when None); `image_dir` (the corpus folder) is read when
    cv.near_duplicates=group makes a new split."""
    kind = task.kind if task is not None else "single"
    path = corpus_folds_path(cfg, kind)
    if path.is_file():
        saved = read_table(path)
        numbers = check_folds_file(saved, path, cfg.cv.n_folds)
        check_folds_match(saved, table, path, source, kind)
        fold_of = dict(zip(saved["id"].to_list(), numbers))
        console.print(f"folds: reusing {path}")
        return np.array([fold_of[i] for i in table["id"].to_list()], dtype=np.int64)
    groups = split_groups(cfg, table, image_dir if image_dir is not None else Path(cfg.data.dir))
    folds = assign_folds(table["label"].to_list(), groups, cfg.cv.n_folds, cfg.cv.seed, task).astype(np.int64)
    split = table.select("id", "label", *(["group"] if "group" in table.columns else [])).with_columns(
        fold=pl.Series(folds))
    write_atomic(path, lambda tmp: split.write_csv(tmp))
    console.print(f"folds: wrote {path}")
    return folds


def describe_names(task: Task) -> str:
    """'10 classes', '17 tags', '5 grades' or "target 'score'": what the folds stage and check print."""
    n = len(task.names)
    if task.kind == "regression":
        return f"regression target '{task.names[0]}'"
    word = {"single": "class", "multilabel": "tag", "ordinal": "grade"}[task.kind]
    return f"{n} {word}{('es' if word == 'class' else 's') * (n != 1)}"


def fold_counts(labels: list[str], folds: list | None, classes: list[str], kind: str = "single") -> Table:
    """Images per class (single-label, ordinal grades) or per tag (multi-label) and fold, or the target's
    distribution per fold (regression), with an `all` row and column (`folds` None: one column `n`), as
    printed by the folds stage and by check; an image without a fold (None) is not counted."""
    keys = sorted({k for k in folds if k is not None}) if folds is not None else ["n"]
    folds = folds if folds is not None else ["n"] * len(labels)
    if kind == "regression":
        return _value_spread(labels, folds, keys)
    if kind == "multilabel":
        return _tag_counts(labels, folds, keys, classes)
    counts = Counter(zip(labels, folds))
    table = Table("label \\ fold", *map(str, keys), "all", box=None)
    for name in [*classes, "all"]:
        row = [sum(counts[(c, k)] for c in (classes if name == "all" else [name])) for k in keys]
        table.add_row(name, *map(str, row), str(sum(row)))
    return table


def _tag_counts(labels: list[str], folds: list, keys: list, tags: list[str]) -> Table:
    """Images holding each tag per fold; the `images` row counts every image (an image has several tags)."""
    counts = Counter((tag, k) for label, k in zip(labels, folds) for tag in (label.split(TAG_SEP) if label else ()))
    images = Counter(folds)
    table = Table("tag \\ fold", *map(str, keys), "all", box=None)
    for tag in tags:
        row = [counts[(tag, k)] for k in keys]
        table.add_row(tag, *map(str, row), str(sum(row)))
    row = [images[k] for k in keys]
    table.add_row("images", *map(str, row), str(sum(row)))
    return table


def _value_spread(labels: list[str], folds: list, keys: list) -> Table:
    """The regression target's count, mean, sd and quartiles per fold."""
    values = np.array([float(v) for v in labels])
    fold_of = np.array(folds, dtype=object)
    table = Table("target \\ fold", *map(str, keys), "all", box=None)
    parts = [values[fold_of == k] for k in keys] + [values[fold_of != None]]  # noqa: E711 - elementwise
    stats = {"n": len, "mean": np.mean, "sd": np.std, "min": np.min, "25%": lambda v: np.quantile(v, 0.25),
             "median": np.median, "75%": lambda v: np.quantile(v, 0.75), "max": np.max}
    for name, stat in stats.items():
        table.add_row(name, *(f"{stat(v):.4g}" if len(v) else "-" for v in parts))
    return table


@dataclass(frozen=True)
class Exclusion:
    """data.exclude applied to a split: which rows do not train, and the target each row trains with."""

    dropped: np.ndarray  # bool per split row: never in a training set (still validated in its own fold)
    y_train: np.ndarray  # each row's target as Task.encode gives it (a class index, a 0/1 row of tags, a value,
    # a grade): the split's, or the file's new_label
    relabelled: int
    source: str | None = None

    @property
    def summary(self) -> dict:
        """What scores.json records."""
        return {"file": self.source, "dropped": int(self.dropped.sum()), "relabelled": self.relabelled}

    def changed(self, y: np.ndarray) -> np.ndarray:
        """Per row, whether it trains with another target than `y` (the split's): a row of tags counts once."""
        differs = self.y_train != y
        return differs.reshape(len(differs), -1).any(axis=1)


_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no", ""}
_SHOWN_NAMES = 12  # a message lists at most this many classes or tags


def _names_shown(names) -> str:
    return ", ".join(names[:_SHOWN_NAMES]) + (", ..." if len(names) > _SHOWN_NAMES else "")


def _new_tags(text: str, task: Task, where: str) -> np.ndarray:
    """A multi-label new_label as a 0/1 row: one tag, or tags joined by '|' (as label_issues.csv writes them)
    or by another delimiter a label table may use (space, ';', ','), in any order. The first reading whose
    parts are all tags is taken, so a tag holding a space ('partly cloudy') stays whole."""
    known = set(task.names)
    readings = [split_tags(text, d) for d in dict.fromkeys((None, TAG_SEP, *LABEL_DELIMS))]
    for tags in readings:
        if set(tags) <= known:
            return np.array([float(n in tags) for n in task.names])
    closest = max(readings, key=lambda tags: sum(t in known for t in tags))  # the reading the user most likely meant
    bad = next(t for t in closest if t not in known)
    raise UserError(f"{where}: new_label '{text}' holds '{bad}', not a tag of this run{did_you_mean(bad, known)} "
                    f"(tags: {_names_shown(task.names)}); join tags with '{TAG_SEP}'")


def new_target(text: str, task: Task, where: str):
    """data.exclude's new_label `text` as the task encodes a label (`Task.encode`): a class index, a 0/1 row of
    tags, a value, or a grade; anything else is one line naming `where` (the file and row)."""
    if task.kind == "multilabel":
        return _new_tags(text, task, where)
    if task.kind == "regression":
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise UserError(f"{where}: new_label '{text}' is not a number (the regression target "
                            f"'{task.names[0]}')")
        return value
    if task.kind == "ordinal":
        grade = _whole_number(text)
        if grade is None or not 0 <= grade < len(task.names):
            raise UserError(f"{where}: new_label '{text}' is not a grade of this run (a whole number "
                            f"0..{len(task.names) - 1})")
        return grade
    if text not in task.names:
        raise UserError(f"{where}: new_label '{text}' is not a class ({', '.join(task.names)})")
    return task.names.index(text)


def read_exclude(path: str | None, ids: list[str], y: np.ndarray, task: Task) -> Exclusion:
    """data.exclude's CSV against the split (`ids`, and `y`, its labels encoded by `task`): an `id` column
    naming training images; optional `new_label` (that row trains with this label instead of being dropped:
    a class; a tag set, tags joined by '|' as label_issues.csv writes them, or by the label table's space, ';'
    or ','; a number for regression; a whole grade 0..K-1 for ordinal) and `flagged` (only its true rows count:
    runs/<exp>/label_issues.csv works as it is). An empty new_label drops the row. Every problem is one line
    naming the file and the row."""
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
        if new:
            y_train[row_of[image_id]], relabelled = new_target(new, task, where), relabelled + 1
        else:
            dropped[row_of[image_id]] = True
    return Exclusion(dropped, y_train, relabelled, str(path))
