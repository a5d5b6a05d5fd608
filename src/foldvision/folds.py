"""Stage 1: split the training images into K stratified folds, once per corpus.

    python -m foldvision.folds runs/<exp>

Reads `runs/<exp>/config.yaml`. The split is written once beside the data (`data.folds_file`, by default
`<data.dir>/folds_k<K>_seed<S>[_<group>].csv`) and reused by every experiment with the same K, seed and
group column, so their scores compare on the same split. When the data folder is read-only the file goes to
`inputs/folds/<corpus>/`. The experiment gets `runs/<exp>/folds.csv` (id, path, label, [group], fold) and
`runs/<exp>/classes.json` (the class order every later stage uses).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from foldvision.config import Config
from foldvision.run import load_run_config
from foldvision.console import console
from foldvision.corpus import read_table, read_train
from foldvision.errors import UserError, write_atomic, write_text_atomic


def assign_folds(labels: list[str], groups: list[str] | None, n_folds: int, seed: int) -> np.ndarray:
    """Fold number (0..K-1) of every row: class proportions kept per fold, groups never split."""
    counts = pd.Series(labels).value_counts()
    small = counts[counts < n_folds]
    if len(small):
        name, n = small.index[-1], int(small.iloc[-1])
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


def default_folds_path(cfg: Config) -> Path:
    """Beside the data, or under inputs/folds/ when the data folder cannot be written."""
    if cfg.data.folds_file:
        return Path(cfg.data.folds_file)
    name = f"folds_k{cfg.cv.n_folds}_seed{cfg.cv.seed}" + (f"_{cfg.data.group_col}" if cfg.data.group_col else "")
    data_dir = Path(cfg.data.dir)
    # the permission bits too: root passes os.access even where the owner marked the folder read-only
    if os.access(data_dir, os.W_OK) and data_dir.stat().st_mode & stat.S_IWUSR:
        return data_dir / f"{name}.csv"
    fallback = Path("inputs") / "folds" / data_dir.resolve().name / f"{name}.csv"
    console.print(f"[dim]{data_dir} is read-only: the corpus folds live in {fallback}[/]")
    return fallback


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


def check_folds_file(folds: pd.DataFrame, path: Path, n_folds: int) -> pd.Series:
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
    dupes = folds["id"][folds["id"].duplicated()]
    if len(dupes):
        first = dupes.iloc[0]
        rows = [int(i) + 2 for i in folds.index[folds["id"] == first]]
        raise UserError(f"{path}: id '{first}' appears on rows {rows} ({dupes.nunique()} ids repeated); "
                        "a split names each id once")
    return pd.Series(numbers, index=folds.index, dtype=int)


def check_folds_match(folds: pd.DataFrame, table: pd.DataFrame, path: Path, source: Path) -> None:
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


def corpus_folds(cfg: Config, table: pd.DataFrame, source: Path) -> pd.Series:
    """The corpus's saved split (made now if it does not exist yet), as a fold number per row of `table`."""
    path = default_folds_path(cfg)
    if path.is_file():
        saved = read_table(path)
        numbers = check_folds_file(saved, path, cfg.cv.n_folds)
        check_folds_match(saved, table, path, source)
        fold_of = dict(zip(saved["id"], numbers))
        console.print(f"folds: reusing {path}")
        return table["id"].map(fold_of)
    groups = table["group"].tolist() if "group" in table else None
    folds = assign_folds(table["label"].tolist(), groups, cfg.cv.n_folds, cfg.cv.seed)
    split = table[["id", "label"] + (["group"] if groups else [])].assign(fold=folds)
    write_atomic(path, lambda tmp: split.to_csv(tmp, index=False))
    console.print(f"folds: wrote {path}")
    return pd.Series(folds, index=table.index)


def run(run_dir: Path) -> None:
    cfg = load_run_config(run_dir)
    corpus = read_train(cfg.data)
    table = corpus.table.assign(fold=corpus_folds(cfg, corpus.table, corpus.source).to_numpy())
    write_text_atomic(run_dir / "classes.json", json.dumps(corpus.classes, ensure_ascii=False) + "\n")
    write_atomic(run_dir / "folds.csv", lambda tmp: table.to_csv(tmp, index=False))
    summary = pd.crosstab(table["label"], table["fold"]).reindex(corpus.classes)
    console.print(f"folds: {len(table)} images, {len(corpus.classes)} classes, {cfg.cv.n_folds} folds")
    console.print(summary.to_string())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision folds", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> holding the resolved config.yaml")
    run(parser.parse_args(argv).run_dir)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
