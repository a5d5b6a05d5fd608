"""Score a submission against known test labels, as a leaderboard would.

    python -m foldvision.commands.evaluate submissions/<exp>.csv <solution.csv> [--task multilabel]

The solution has the id, the true label and optionally a `Usage` column (Public/Private): each part is then
scored on its own, as a competition's public and private leaderboards are. Rows are joined by id.
Probability submissions are scored by ROC AUC (macro one-vs-rest for several columns) and log loss;
label submissions by accuracy and macro-F1 (`foldvision.results.submission.score_submission`). The task kind
is read from the solution's label column as `make check` reads a label table (`foldvision.corpus.detect_task`,
said in one line), or named with --task: multi-label tags (space-separated) are scored by samples-F1/F2 and
micro/macro-F1 (one probability column per tag: mAP, macro AUC, BCE); regression by RMSE, MAE, Pearson r and
R²; ordinal grades (integers read as classes unless `--task ordinal`) by QWK, accuracy and MAE.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from foldvision.config import DataConfig
from foldvision.console import console
from foldvision.corpus import detect_task
from foldvision.results.submission import score_submission
from foldvision.tables import MISSING_MARKS, read_table
from foldvision.targets import TASKS


def solution_task(solution: Path, task: str) -> str:
    """`task`, or with "auto" the kind the solution's label column reads as (one line says which)."""
    if task != "auto":
        return task
    table = read_table(solution)
    if table.width < 2:
        return "single"  # score_submission names the missing column
    cells = [c.strip() for c in table[table.columns[1]].to_list() if c.strip().lower() not in MISSING_MARKS]
    kind, _ = detect_task(cells, DataConfig())
    console.print(f"[dim]{solution.name}: column '{table.columns[1]}' read as {kind} (--task to change)[/]")
    return kind


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("submission", type=Path)
    parser.add_argument("solution", type=Path, help="id, label[, Usage]")
    parser.add_argument("--task", choices=("auto", *TASKS), default="auto",
                        help="the task kind (default auto: read from the solution's label column)")
    parser.add_argument("--json", type=Path, help="also write the scores here")
    args = parser.parse_args(argv)
    results = score_submission(args.submission, args.solution, solution_task(args.solution, args.task))
    for name, scores in results.items():
        print(f"{name:>8}: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in scores.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
