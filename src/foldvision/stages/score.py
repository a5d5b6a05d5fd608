"""Stage 3: out-of-fold scores over all folds.

    python -m foldvision.stages.score runs/<exp>

Joins every fold's OOF table into the run's OOF table (every training image once, in the split's order) and
writes the run's scores (`Run.oof_csv`, `Run.scores_json`): the OOF metrics of the task kind (computed on the
whole OOF set, not as a mean of folds), each fold's metrics, and the kind's view: per class (or grade, or tag:
precision/recall/F1, OOF and mean ± std over folds), the confusion matrix (single, ordinal), the tags'
co-occurrence (multilabel) or the residuals (regression). The decision rule (threshold, prior correction,
per-tag thresholds, cut-points, clipping) is fitted on the OOF rows and scored nested; the printed line says
whether it or the plain decision is used. With data.exclude, scores.json's `excluded` says how many rows never
trained and how many trained relabelled (each is still validated, and scored against its given label).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from foldvision.config import to_dict
from foldvision.console import console, print_wide
from foldvision.results.decision import DECIDES, DecisionRule, fit_nested
from foldvision.results.metrics import resolve_metric, score_oof
from foldvision.results.compare import fold_scores, kind_tables, scores_title
from foldvision.run import Run
from foldvision.splits import read_exclude
from foldvision.results.tracking import create_tracker


def print_scores(scores: dict) -> None:
    print_wide(fold_scores(scores).rich(scores_title(scores)))
    for title, table in kind_tables(scores):
        print_wide(table.rich(title))
    rule = DecisionRule(**scores["decision"])
    console.print(f"{DECIDES[rule.task]} by {rule.describe()}")
    if "excluded" in scores:
        e = scores["excluded"]
        console.print(f"data.exclude ({e['file']}): {e['dropped']} rows never trained, {e['relabelled']} trained "
                      "relabelled; all are scored against their given labels")


def run(run_dir: Path) -> dict:
    folder = Run(run_dir)
    cfg = folder.load_config()
    split = folder.read_split()
    oof = folder.read_fold_oofs(split)  # in the split's order: the train table's order
    metric = resolve_metric(cfg.train.metric, split.kind)
    scores = score_oof(oof, metric)
    exclusion = read_exclude(cfg.data.exclude, split.ids, split.y, split.task)
    if exclusion.source:  # every row is scored against its given label; the file only changed what trained
        scores["excluded"] = exclusion.summary
    # labels (tags, grades, values) from predictions: the OOF-fitted rule's score, fitted on the same rows and
    # nested (honest), and whether it beats the plain decision
    scores["decision"] = fit_nested(oof.y, oof.probs, oof.fold, metric, oof.kind, cfg.predict.min_tags,
                                    len(oof.classes)).to_dict()
    folder.write_oof(oof)
    folder.write_scores(scores)
    print_scores(scores)
    tracker = create_tracker(cfg.tracking, folder.root, f"{cfg.name}-oof", "oof", to_dict(cfg))
    try:
        tracker.log_oof(scores, oof)
    finally:
        tracker.finish()
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision score", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> with every fold's OOF table")
    run(parser.parse_args(argv).run_dir)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
