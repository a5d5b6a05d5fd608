"""Rank the training images by how little their out-of-fold prediction backs their given label.

    foldvision label-issues runs/<exp> [--top 20] [--method M] [--cut 3.5]    (make label-issues EXP=<exp>)

Reads the scored run's OOF table (oof.csv): each image's prediction comes from the fold model that never
trained on it, so a confident disagreement is evidence against the label, not memorisation. Writes
`runs/<exp>/label_issues.csv`, most suspect first: id, given_label (as folds.csv writes it), predicted_label,
the kind's measure of agreement, quality (a label quality score, lowest first, `--method`), rank (1: most
suspect) and flagged (the label is likely wrong). Per task kind:

    kind        predicted_label                     agreement                         flagged by
    single      the argmax class                    self_confidence: P(given class)   confident learning
    multilabel  the run's tags (see below)          self_confidence, suspect_tag      confident learning, per tag
    regression  the OOF value                       residual: given - OOF value       residual beyond --cut
    ordinal     the run's grade (see below)         residual: given - expected grade  robust SDs (see below)

Confident learning is cleanlab's (Northcutt et al., 2021; Apache-2.0): it estimates per-class thresholds and
the joint of given and true labels, which a plain probability cut does not; for tags, cleanlab's multi-label
version runs it one tag against the rest and flags a row when any of its tags is likely wrong. A multi-label
row's self_confidence is its lowest per-tag one: the OOF probability of the given state (on or off) of the tag
the OOF backs least, that tag being suspect_tag. Its predicted_label is the tags the run decides, as its
submission would: the per-tag thresholds fitted on OOF where scores.json says they beat 0.5 nested (tags at
0.5 otherwise, or with predict.decision=argmax), joined by '|'; an ordinal run's is the grade by its fitted
cut-points under the same rule (else the rounded expected grade).

A value (regression, ordinal) has no confident learning from OOF alone: cleanlab's regression flagging
(CleanLearning) refits the model. So quality is cleanlab's regression label quality (`--method residual`, the
default: exp(-|z|), z the residual's distance from the median residual in robust standard deviations, 1.4826 x
the MAD of the residuals; `outre`: cleanlab's OUTRE, a nearest-neighbour score whose memory and time grow with
the square of the rows: 25 s for 10,000 rows on one core), and a row is flagged when |z| > --cut: the
modified z-score rule for outliers (Iglewicz and Hoaglin, 1993, whose cut is 3.5), robust to the very
outliers it looks for. An ordinal residual is in grades. Then

    make train EXP=<next> ARGS="data.exclude=runs/<exp>/label_issues.csv"

drops the flagged rows from training (a `new_label` column relabels them instead: a class, tags joined by '|',
a value or a grade): foldvision.splits.read_exclude.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
from rich.table import Table

from foldvision.console import console
from foldvision.errors import UserError
from foldvision.results.decision import RULE_TASK, DecisionRule
from foldvision.run import Predictions, Run
from foldvision.targets import TAG_SEP

METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")  # cleanlab.rank's
VALUE_METHODS = ("residual", "outre")  # cleanlab.regression.rank's
RESIDUAL_CUT = 3.5  # Iglewicz and Hoaglin's cut on the modified z-score


def _ranks(quality: np.ndarray) -> np.ndarray:
    """1 for the lowest quality; ties in the split's order."""
    order = np.lexsort((np.arange(len(quality)), quality))
    rank = np.empty(len(quality), dtype=np.int64)
    rank[order] = np.arange(1, len(quality) + 1)
    return rank


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
    table = pl.DataFrame({
        "id": oof.ids, "given_label": oof.labels,
        "predicted_label": [oof.classes[i] for i in probs.argmax(axis=1)],
        "self_confidence": probs[np.arange(len(y)), y], "quality": quality.astype(np.float64),
        "rank": _ranks(quality), "flagged": flagged.astype(bool),
    })
    return table.sort("rank")


def rank_tags(oof: Predictions, decided: np.ndarray, method: str = "self_confidence") -> pl.DataFrame:
    """Multi-label OOF rows ranked by cleanlab's multi-label label quality (lowest first), flagged by its
    confident learning; `decided` is the run's N x K 0/1 tags (`decisions`)."""
    from cleanlab.multilabel_classification.filter import find_label_issues  # noqa: PLC0415 - as rank_issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores  # noqa: PLC0415

    y = oof.y.astype(np.int64)
    quality = get_label_quality_scores([np.flatnonzero(row).tolist() for row in y], oof.probs, method=method)
    # a tag on every image (or on none) has no other given state to estimate its noise from (cleanlab refuses
    # it: 'Labels must contain at least 2 classes'): the other tags are flagged without it
    varying = np.flatnonzero(y.min(axis=0) != y.max(axis=0))
    flagged = np.zeros(len(y), dtype=bool)
    if len(varying):
        flagged = find_label_issues([np.flatnonzero(row).tolist() for row in y[:, varying]], oof.probs[:, varying],
                                    filter_by="prune_by_noise_rate", n_jobs=1)
    backing = np.where(y == 1, oof.probs, 1 - oof.probs)  # each tag's self-confidence, one against the rest
    worst = backing.argmin(axis=1)
    table = pl.DataFrame({
        "id": oof.ids, "given_label": oof.labels,
        "predicted_label": [TAG_SEP.join(oof.classes[j] for j in np.flatnonzero(row)) for row in decided],
        "self_confidence": backing[np.arange(len(y)), worst], "suspect_tag": [oof.classes[j] for j in worst],
        "quality": quality.astype(np.float64), "rank": _ranks(quality), "flagged": np.asarray(flagged, bool),
    })
    return table.sort("rank")


def robust_scale(residual: np.ndarray) -> tuple[float, float]:
    """The median residual and the residuals' robust standard deviation: 1.4826 x their median absolute
    deviation (the SD of normal residuals, unmoved by the outliers looked for); where over half the residuals
    are equal (MAD 0), 1.2533 x their mean absolute deviation (Iglewicz and Hoaglin's fallback); 1 when all are."""
    center = float(np.median(residual))
    away = np.abs(residual - center)
    spread = 1.4826 * float(np.median(away)) or 1.2533 * float(np.mean(away))
    return center, spread or 1.0


def rank_values(oof: Predictions, decided: np.ndarray, method: str = "residual",
                cut: float = RESIDUAL_CUT) -> pl.DataFrame:
    """Regression or ordinal OOF rows ranked by cleanlab's regression label quality (lowest first), flagged
    where the residual is more than `cut` robust SDs from the median residual (the module's docstring)."""
    from cleanlab.regression.rank import get_label_quality_scores  # noqa: PLC0415 - as rank_issues

    given, pred = oof.y.astype(np.float64), oof.probs[:, 0]
    residual = given - pred
    center, spread = robust_scale(residual)
    if method == "outre":
        quality = get_label_quality_scores(given, pred, method="outre")
    else:  # cleanlab's residual score is exp(-|prediction - label|), in the target's units (a Pawpularity
        # residual of 20 scores e^-20): given in robust SDs, centred on the median residual, it is exp(-|z|)
        quality = get_label_quality_scores(given / spread, (pred + center) / spread, method="residual")
    shown = ([f"{v:.6g}" for v in pred] if oof.kind == "regression" else [str(int(g)) for g in decided])
    table = pl.DataFrame({
        "id": oof.ids, "given_label": oof.labels, "predicted_label": shown, "residual": residual,
        "quality": np.asarray(quality, dtype=np.float64), "rank": _ranks(quality),
        "flagged": np.abs(residual - center) / spread > cut,
    })
    return table.sort("rank")


def decisions(folder: Run, oof: Predictions) -> np.ndarray | None:
    """The run's tags (N x K 0/1) or grades of the OOF rows, as its submission decides them: the rule fitted on
    OOF that scores.json records, where it beat the plain decision nested (predict.decision: oof), else the
    plain decision (tags at 0.5, the rounded expected grade). None for single-label and regression."""
    if oof.kind not in ("multilabel", "ordinal"):
        return None
    record = folder.read_scores().get("decision") if folder.scores_json.is_file() else None
    if record and RULE_TASK.get(record.get("kind")) == oof.kind:
        rule = DecisionRule(**record)
    else:  # an oof.csv written without the score stage: the plain decision
        k = len(oof.classes)
        cuts = [0.5] * k if oof.kind == "multilabel" else list(np.arange(k - 1) + 0.5)
        rule = DecisionRule("", "tags" if oof.kind == "multilabel" else "cuts", 0.5, [], 0.0, 0.0, values=cuts)
    if folder.config_yaml.is_file() and folder.load_config().predict.decision == "argmax":
        rule = dataclasses.replace(rule, used=False)
    return rule.apply(oof.probs)


def rank_run(oof: Predictions, decided: np.ndarray | None, method: str, cut: float) -> pl.DataFrame:
    """label_issues.csv's table for the OOF rows of any task kind."""
    allowed = VALUE_METHODS if oof.task.is_value else METHODS
    if method not in allowed:
        raise UserError(f"--method {method} does not rank a {oof.kind} run's labels; use one of "
                        f"{', '.join(allowed)}")
    if oof.kind == "multilabel":
        return rank_tags(oof, decided, method)
    if oof.task.is_value:
        return rank_values(oof, decided, method, cut)
    return rank_issues(oof, method)


def how_flagged(table: pl.DataFrame, kind: str, cut: float) -> str:
    if kind in ("single", "multilabel"):
        return "by confident learning" + (" (per tag)" if kind == "multilabel" else "")
    _, spread = robust_scale(table["residual"].to_numpy())
    unit = " grades" if kind == "ordinal" else ""
    return (f"with a residual more than {cut:g} robust SDs (1.4826 x MAD = {spread:.4g}{unit}) from the median "
            "residual")


def print_issues(table: pl.DataFrame, top: int) -> None:
    measure = ([("self_confidence", "p(given)", "{:.3f}")] if "suspect_tag" not in table.columns else
               [("self_confidence", "min p(given)", "{:.3f}"), ("suspect_tag", "suspect tag", "{}")])
    if "residual" in table.columns:
        measure = [("residual", "residual", "{:+.4g}")]
    view = Table("rank", "id", "given", "predicted", *(head for _, head, _ in measure), "quality", "flagged",
                 box=None)
    for row in table.head(top).iter_rows(named=True):
        view.add_row(str(row["rank"]), row["id"], row["given_label"], row["predicted_label"],
                     *(form.format(row[column]) for column, _, form in measure),
                     f"{row['quality']:.3f}", "yes" if row["flagged"] else "")
    console.print(view)


def run(run_dir: Path, method: str | None = None, top: int = 20, cut: float = RESIDUAL_CUT) -> pl.DataFrame:
    """label_issues.csv of a scored run; `method` None: self_confidence (classes, tags), residual (values)."""
    if not cut > 0:
        raise UserError(f"--cut {cut}: give a number of robust standard deviations above 0 (default {RESIDUAL_CUT})")
    folder = Run(run_dir)
    oof = folder.read_oof()
    method = method or ("residual" if oof.task.is_value else "self_confidence")
    table = rank_run(oof, decisions(folder, oof), method, cut)
    folder.write_label_issues(table)
    print_issues(table, top)
    console.print(f"label-issues: {int(table['flagged'].sum())} of {table.height} training images flagged "
                  f"{how_flagged(table, oof.kind, cut)}; ranked by {method}: {folder.label_issues_csv}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision label-issues", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp>, trained and scored (its oof.csv)")
    parser.add_argument("--method", choices=METHODS + VALUE_METHODS, default=None,
                        help="cleanlab's label quality score used for the rank: self_confidence (default), "
                             "normalized_margin or confidence_weighted_entropy for classes and tags; residual "
                             "(default) or outre for regression and ordinal")
    parser.add_argument("--top", type=int, default=20, help="rows printed (the CSV holds all)")
    parser.add_argument("--cut", type=float, default=RESIDUAL_CUT,
                        help="regression, ordinal: flag a residual more than this many robust SDs (1.4826 x MAD) "
                             "from the median residual")
    args = parser.parse_args(argv)
    run(args.run_dir, args.method, args.top, args.cut)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
