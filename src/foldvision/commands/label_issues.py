"""Rank the training images by how little their out-of-fold prediction backs their given label.

    foldvision label-issues runs/<exp> [--top 20]            (make label-issues EXP=<exp>)

Reads the scored run's OOF table (oof.csv): each image's probabilities come from the fold model that never
trained on it, so a confident disagreement is evidence against the label, not memorisation. Writes
`runs/<exp>/label_issues.csv`, most suspect first: id, given_label, predicted_label, self_confidence (the OOF
probability of the given label), quality (cleanlab's label quality score, `--method`), rank (1: most suspect)
and flagged (cleanlab's confident learning, `cleanlab.filter.find_label_issues`: the label is likely wrong).

Confident learning is cleanlab's (Northcutt et al., 2021; Apache-2.0): it estimates per-class thresholds and
the joint of given and true labels, which a plain probability cut does not. Then

    make train EXP=<next> ARGS="data.exclude=runs/<exp>/label_issues.csv"

drops the flagged rows from training (a `new_label` column relabels them instead): foldvision.splits.read_exclude.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
from rich.table import Table

from foldvision.console import console
from foldvision.errors import UserError
from foldvision.run import Predictions, Run

METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")  # cleanlab.rank's


def rank_issues(oof: Predictions, method: str = "self_confidence") -> pl.DataFrame:
    """The OOF rows ranked by cleanlab's label quality (lowest first), with confident learning's flag."""
    from cleanlab.filter import find_label_issues  # noqa: PLC0415 - cleanlab is slow to import
    from cleanlab.rank import get_label_quality_scores  # noqa: PLC0415

    y, probs = oof.y, oof.probs / oof.probs.sum(axis=1, keepdims=True)  # cleanlab wants rows summing to 1
    missing = sorted(set(range(len(oof.classes))) - set(y.tolist()))
    if missing:
        raise UserError(f"class '{oof.classes[missing[0]]}' has no training image: confident learning needs "
                        "every class of classes.json among the labels")
    quality = get_label_quality_scores(y, probs, method=method)
    # n_jobs=1: cleanlab forks a process per core by default; the ranking is a few array operations
    flagged = find_label_issues(y, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    order = np.lexsort((np.arange(len(y)), quality))  # lowest quality first; ties in the split's order
    rank = np.empty(len(y), dtype=np.int64)
    rank[order] = np.arange(1, len(y) + 1)
    table = pl.DataFrame({
        "id": oof.ids, "given_label": oof.labels,
        "predicted_label": [oof.classes[i] for i in probs.argmax(axis=1)],
        "self_confidence": probs[np.arange(len(y)), y], "quality": quality.astype(np.float64),
        "rank": rank, "flagged": flagged.astype(bool),
    })
    return table.sort("rank")


def print_issues(table: pl.DataFrame, top: int) -> None:
    view = Table("rank", "id", "given", "predicted", "p(given)", "quality", "flagged", box=None)
    for row in table.head(top).iter_rows(named=True):
        view.add_row(str(row["rank"]), row["id"], row["given_label"], row["predicted_label"],
                     f"{row['self_confidence']:.3f}", f"{row['quality']:.3f}", "yes" if row["flagged"] else "")
    console.print(view)


def run(run_dir: Path, method: str = "self_confidence", top: int = 20) -> pl.DataFrame:
    folder = Run(run_dir)
    oof = folder.read_oof()
    if oof.kind != "single":  # cleanlab's ranking here is confident learning over one class per image
        raise UserError(f"{run_dir}: a {oof.kind} run; label-issues ranks single-label classes only (rank a "
                        "multi-label or value target's rows by its OOF residuals in oof.csv)")
    table = rank_issues(oof, method)
    folder.write_label_issues(table)
    print_issues(table, top)
    console.print(f"label-issues: {int(table['flagged'].sum())} of {table.height} training images flagged by "
                  f"confident learning; ranked by {method}: {folder.label_issues_csv}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision label-issues", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp>, trained and scored (its oof.csv)")
    parser.add_argument("--method", choices=METHODS, default="self_confidence",
                        help="cleanlab's label quality score used for the rank")
    parser.add_argument("--top", type=int, default=20, help="rows printed (the CSV holds all)")
    args = parser.parse_args(argv)
    run(args.run_dir, args.method, args.top)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
