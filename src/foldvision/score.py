"""Stage 3: out-of-fold scores over all folds.

    python -m foldvision.score runs/<exp>

Joins `fold<k>/oof.csv` of every fold into `runs/<exp>/oof.csv` (every training image once) and writes
`runs/<exp>/scores.json`: the OOF metrics (computed on the whole OOF set, not as a mean of folds), each
fold's metrics, per-class precision/recall (OOF, and mean ± std over folds) and the confusion matrix.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from foldvision.config import to_dict
from foldvision.run import load_run_config
from foldvision.console import print_wide
from foldvision.errors import UserError, write_atomic, write_text_atomic
from foldvision.metrics import confusion, per_class, resolve_metric, score, task_of
from foldvision.tables import prob_columns, read_split
from foldvision.tracking import create_tracker


def read_fold_oofs(run_dir: Path, folds: list[int]) -> pd.DataFrame:
    """Every fold's OOF rows, one table."""
    missing = [k for k in folds if not (run_dir / f"fold{k}" / "oof.csv").is_file()]
    if missing:
        raise UserError(f"{run_dir}: folds {missing} have no oof.csv yet; train them (make train EXP={run_dir.name})")
    parts = [pd.read_csv(run_dir / f"fold{k}" / "oof.csv", dtype={"id": str, "label": str}, keep_default_na=False)
             for k in folds]
    return pd.concat(parts, ignore_index=True)


def score_oof(oof: pd.DataFrame, classes: list[str], metric: str) -> dict:
    """The scores.json content for an OOF table (id, fold, label, prob_<class>...)."""
    index = {c: i for i, c in enumerate(classes)}
    y = oof["label"].astype(str).map(index).to_numpy()
    probs = oof[prob_columns(classes)].to_numpy(dtype=np.float64)
    folds, fold_classes = [], []
    for k, part in oof.groupby("fold", sort=True):
        mask = (oof["fold"] == k).to_numpy()
        folds.append({"fold": int(k), "n": int(mask.sum()), **score(y[mask], probs[mask])})
        fold_classes.append(per_class(y[mask], probs[mask]))
    overall = per_class(y, probs)
    per_class_table = {}
    for i, name in enumerate(classes):
        entry = {"support": int(overall["support"][i])}
        for stat in ("precision", "recall"):
            values = np.array([fc[stat][i] for fc in fold_classes])
            entry[stat] = float(overall[stat][i])
            entry[f"{stat}_mean"] = float(values.mean())
            entry[f"{stat}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        per_class_table[name] = entry
    return {
        "task": task_of(len(classes)),
        "metric": metric,
        "classes": classes,
        "n": int(len(oof)),
        "oof": score(y, probs),
        "folds": folds,
        "per_class": per_class_table,
        "confusion_matrix": confusion(y, probs).tolist(),
    }


def print_scores(scores: dict) -> None:
    names = ("auc", "accuracy", "macro_f1", "log_loss")
    table = Table(title=f"{scores['task']} · {scores['n']} OOF images · picked by {scores['metric']}")
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    for fold in scores["folds"]:
        table.add_row(f"fold {fold['fold']}", *(f"{fold[n]:.4f}" for n in names))
    spread = {n: np.array([f[n] for f in scores["folds"]]) for n in names}
    table.add_row("mean ± std", *(f"{spread[n].mean():.4f} ± {spread[n].std(ddof=1):.4f}" for n in names))
    table.add_row("[bold]OOF", *(f"[bold]{scores['oof'][n]:.4f}" for n in names))
    print_wide(table)
    classes = Table(title="per class (OOF; mean ± std over folds)")
    for col in ("class", "n", "precision", "recall"):
        classes.add_column(col, justify="left" if col == "class" else "right")
    for name, c in scores["per_class"].items():
        classes.add_row(name, str(c["support"]),
                        f"{c['precision']:.3f} ({c['precision_mean']:.3f} ± {c['precision_std']:.3f})",
                        f"{c['recall']:.3f} ({c['recall_mean']:.3f} ± {c['recall_std']:.3f})")
    print_wide(classes)


def run(run_dir: Path) -> dict:
    cfg = load_run_config(run_dir)
    table, classes = read_split(run_dir)
    oof = read_fold_oofs(run_dir, sorted(set(table["fold"])))
    if sorted(oof["id"]) != sorted(table["id"]):
        raise UserError(f"{run_dir}: the fold OOF files do not cover folds.csv exactly; re-train (make train)")
    oof = oof.set_index("id").loc[table["id"]].reset_index()  # folds.csv order: the train table's order
    scores = score_oof(oof, classes, resolve_metric(cfg.train.metric))
    write_atomic(run_dir / "oof.csv", lambda tmp: oof.to_csv(tmp, index=False))
    write_text_atomic(run_dir / "scores.json", json.dumps(scores, indent=2, ensure_ascii=False) + "\n")
    print_scores(scores)
    tracker = create_tracker(cfg.tracking, run_dir, f"{cfg.name}-oof", "oof", to_dict(cfg))
    try:
        tracker.log_oof(scores, oof)
    finally:
        tracker.finish()
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision score", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> with every fold<k>/oof.csv")
    run(parser.parse_args(argv).run_dir)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
