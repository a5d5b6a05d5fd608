"""Score a submission against known test labels, as a leaderboard would.

    python -m foldvision.commands.evaluate submissions/<exp>.csv <solution.csv>

The solution has the id, the true label and optionally a `Usage` column (Public/Private): each part is then
scored on its own, as a competition's public and private leaderboards are. Rows are joined by id.
Probability submissions are scored by ROC AUC (macro one-vs-rest for several columns) and log loss;
label submissions by accuracy and macro-F1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from foldvision.corpus import read_table, sort_classes
from foldvision.errors import UserError
from foldvision.results.metrics import accuracy, auc, macro_f1, score


def _scores(truth: pd.Series, sub: pd.DataFrame) -> dict[str, float]:
    """The leaderboard's scores of one part: computed by `foldvision.results.metrics`, as the OOF scores are."""
    values = sub.apply(pd.to_numeric, errors="coerce")
    if values.notna().all().all() and not (len(sub.columns) == 1 and set(sub.iloc[:, 0]) <= set(truth)):
        if len(sub.columns) == 1:  # P(positive): the larger of the two true labels
            positive = sort_classes(truth.tolist())[-1]
            p = values.iloc[:, 0].to_numpy(dtype=np.float64)
            return {"auc": auc((truth == positive).to_numpy().astype(np.int64), np.stack([1 - p, p], axis=1))}
        classes = [str(c) for c in sub.columns]
        y = truth.map({c: i for i, c in enumerate(classes)})
        if y.isna().any():
            raise UserError(f"solution labels {sorted(set(truth) - set(classes))} are not submission columns")
        scores = score(y.to_numpy(dtype=np.int64), values.to_numpy(dtype=np.float64))
        return {name: scores[name] for name in ("auc", "accuracy", "log_loss")}
    predicted = sub.iloc[:, 0].astype(str)
    return {"accuracy": accuracy(truth, predicted), "macro_f1": macro_f1(truth, predicted)}


def evaluate(submission_path: Path, solution_path: Path) -> dict[str, dict[str, float]]:
    sub = read_table(submission_path)
    solution = read_table(solution_path)
    id_col, label_col = solution.columns[0], solution.columns[1]
    sub = sub.set_index(sub.columns[0])
    missing = set(solution[id_col]) - set(sub.index)
    if missing:
        raise UserError(f"{submission_path}: {len(missing)} solution ids have no row (e.g. '{sorted(missing)[0]}')")
    parts = {"all": solution}
    if "Usage" in solution.columns:
        parts.update({usage: part for usage, part in solution.groupby("Usage")})
    return {name: {"n": len(part), **_scores(part[label_col].reset_index(drop=True),
                                              sub.loc[part[id_col]].reset_index(drop=True))}
            for name, part in parts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("submission", type=Path)
    parser.add_argument("solution", type=Path, help="id, label[, Usage]")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args(argv)
    results = evaluate(args.submission, args.solution)
    for name, scores in results.items():
        print(f"{name:>8}: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in scores.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
