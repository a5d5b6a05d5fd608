"""Scores of predictions for every task kind (foldvision.targets), all through scikit-learn so they equal what a
user computes from the OOF table.

    kind        y (Task.encode)      probs (Predictions.probs)       metrics (train.metric; auto = the first)
    single      class index          N x C softmax                   auc accuracy macro_f1 log_loss
    multilabel  N x K 0/1            N x K sigmoids                  map samples_f1 samples_f2 micro_f1 macro_f1
                                                                      macro_auc bce (F-scores at 0.5)
    regression  value                N x 1 value (user's units)      rmse mae pearson r2
    ordinal     grade 0..K-1         N x 1 expected grade            qwk accuracy mae (qwk, accuracy: of the
                                                                      rounded grade clipped to 0..K-1; mae: of
                                                                      the expected grade)
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import pearsonr
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    fbeta_score,
    log_loss,
    mean_absolute_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
    root_mean_squared_error,
)

from foldvision.errors import UserError

if TYPE_CHECKING:  # the annotation only: metrics stays a leaf module
    from foldvision.run import Predictions

# Every task kind's metrics, the first being `auto`'s choice.
METRICS = {
    "single": ("auc", "accuracy", "macro_f1", "log_loss"),
    "multilabel": ("map", "samples_f1", "samples_f2", "micro_f1", "macro_f1", "macro_auc", "bce"),
    "regression": ("rmse", "mae", "pearson", "r2"),
    "ordinal": ("qwk", "accuracy", "mae"),
}
# Metrics where lower is better; every other metric is maximised.
LOWER_IS_BETTER = {"log_loss", "bce", "rmse", "mae"}


def task_of(num_classes: int) -> str:
    return "binary" if num_classes == 2 else "multiclass"


def resolve_metric(metric: str, kind: str = "single") -> str:
    """The metric that picks checkpoints and stops early: the task kind's first (`METRICS`) unless the config
    names another, which must be one of the kind's (a one-line error otherwise)."""
    names = METRICS[kind]
    if metric == "auto":
        return names[0]
    if metric not in names:
        raise UserError(f"train.metric={metric}: not a metric of a {kind} task; use one of {', '.join(names)} "
                        "(or auto)")
    return metric


def auc(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC of the positive class for binary; macro one-vs-rest for multi-class. NaN if a class is absent."""
    num_classes = probs.shape[1]
    if len(np.unique(y)) < num_classes:
        return float("nan")
    if num_classes == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=np.arange(num_classes)))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(accuracy_score(y, pred))


def macro_f1(y: np.ndarray, pred: np.ndarray, labels: np.ndarray | None = None) -> float:
    """Macro-F1 of class decisions over `labels` (default: the classes in y or pred); a class never
    predicted counts as 0 (sklearn's warning about it is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))


def score(y: np.ndarray, probs: np.ndarray, kind: str = "single", num_grades: int | None = None) -> dict[str, float]:
    """Every metric of the task kind (`METRICS`) of one set of predictions (y and probs as Task.encode and
    Predictions hold them); a metric a subset cannot have (AUC without both classes) is NaN. `num_grades`
    (ordinal): the expected grade is rounded and clipped to 0..num_grades-1 (unknown: clipped at 0 only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes never predicted (F1 counts them as 0), r2 on 1 row
        if kind == "multilabel":
            return _multilabel_scores(y, probs)
        if kind == "regression":
            return _regression_scores(y, probs[:, 0])
        if kind == "ordinal":
            return _ordinal_scores(y, probs[:, 0], probs_grades(probs, num_grades))
        pred = probs.argmax(axis=1)
        labels = np.arange(probs.shape[1])
        return {
            "auc": auc(y, probs),
            "accuracy": accuracy(y, pred),
            "macro_f1": macro_f1(y, pred, labels),
            "log_loss": float(log_loss(y, np.clip(probs, 1e-15, 1), labels=labels)),
        }


def probs_grades(values: np.ndarray, num_grades: int | None = None) -> np.ndarray:
    """Ordinal: the expected grade rounded to the nearest grade and clipped to 0..K-1 (the plain decision)."""
    top = np.inf if num_grades is None else num_grades - 1
    return np.clip(np.rint(np.asarray(values).reshape(len(values), -1)[:, 0]), 0, top).astype(np.int64)


def fbeta_tags(y: np.ndarray, tags: np.ndarray, average: str, beta: float = 1.0) -> float:
    """F-beta of multi-label decisions (N x K 0/1); an image or tag with no true and no predicted tag counts 1
    for samples-F (Kaggle's Planet scoring) and 0 for macro-F (sklearn's zero_division)."""
    zero = 1.0 if average == "samples" else 0.0
    if y.shape[1] == 1:  # sklearn reads one column as a binary vector, where samples-F is undefined
        if average == "samples":  # an image's F with one tag: 1 where the decision is right, else 0
            return accuracy(y[:, 0], tags[:, 0])
        return float(fbeta_score(y[:, 0].astype(int), tags[:, 0].astype(int), beta=beta, zero_division=zero))
    return float(fbeta_score(y.astype(int), tags.astype(int), beta=beta, average=average, zero_division=zero))


def _over_tags(fn, y: np.ndarray, probs: np.ndarray, both: bool) -> float:
    """The mean over tags of fn(y_tag, p_tag), over the tags with a positive (and a negative when `both`)."""
    positives = y.sum(axis=0)
    keep = (positives > 0) & ((positives < len(y)) if both else True)
    if not keep.any():
        return float("nan")
    return float(np.mean([fn(y[:, j], probs[:, j]) for j in np.flatnonzero(keep)]))


def _multilabel_scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    tags = probs >= 0.5
    return {
        "map": _over_tags(average_precision_score, y, probs, both=False),
        "samples_f1": fbeta_tags(y, tags, "samples"),
        "samples_f2": fbeta_tags(y, tags, "samples", beta=2.0),
        "micro_f1": fbeta_tags(y, tags, "micro"),
        "macro_f1": fbeta_tags(y, tags, "macro"),
        "macro_auc": _over_tags(roc_auc_score, y, probs, both=True),
        "bce": float(log_loss(y.ravel(), np.clip(probs.ravel(), 1e-15, 1 - 1e-15), labels=[0, 1])),
    }


def _regression_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    constant = len(y) < 2 or np.ptp(y) == 0 or np.ptp(pred) == 0
    return {
        "rmse": float(root_mean_squared_error(y, pred)),
        "mae": float(mean_absolute_error(y, pred)),
        "pearson": float("nan") if constant else float(pearsonr(y, pred).statistic),
        "r2": float(r2_score(y, pred)) if len(y) > 1 else float("nan"),
    }


def qwk(y: np.ndarray, grades: np.ndarray) -> float:
    """Quadratic weighted kappa of grades (NaN when both sides hold one grade: kappa is undefined)."""
    if len(np.union1d(y, grades)) < 2:
        return float("nan")
    return float(cohen_kappa_score(y, grades, weights="quadratic"))


def _ordinal_scores(y: np.ndarray, expected: np.ndarray, grades: np.ndarray) -> dict[str, float]:
    return {"qwk": qwk(y, grades), "accuracy": accuracy(y, grades), "mae": float(mean_absolute_error(y, expected))}


def decisions(y_or_probs: np.ndarray, kind: str, num: int) -> np.ndarray:
    """The plain decision of each row: argmax (single), tags at 0.5 (multilabel), the rounded clipped grade
    (ordinal); what per-class scores and confusion matrices count."""
    if kind == "multilabel":
        return (y_or_probs >= 0.5).astype(np.int64)
    if kind == "ordinal":
        return probs_grades(y_or_probs, num)
    return y_or_probs.argmax(axis=1)


def per_class(y: np.ndarray, pred: np.ndarray, num: int) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class, grade or tag (N x K tags for multilabel) of decisions."""
    labels = None if pred.ndim == 2 else np.arange(num)
    precision, recall, f1, support = precision_recall_fscore_support(y.astype(np.int64), pred, labels=labels,
                                                                      zero_division=0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def confusion(y: np.ndarray, pred: np.ndarray, num: int) -> np.ndarray:
    """Rows: true class (or grade), columns: the decided one."""
    return confusion_matrix(y, pred, labels=np.arange(num))


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(new)
    return new < best if metric in LOWER_IS_BETTER else new > best


def residuals(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Regression: the prediction minus the truth, summarised (bias, spread, tails), and the target's range."""
    r = pred - y
    q = np.quantile(r, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"mean": float(r.mean()), "std": float(r.std()), "q05": float(q[0]), "q25": float(q[1]),
            "median": float(q[2]), "q75": float(q[3]), "q95": float(q[4]), "max_abs": float(np.abs(r).max()),
            "y_min": float(y.min()), "y_max": float(y.max()), "pred_min": float(pred.min()),
            "pred_max": float(pred.max())}


def _per_class_table(oof: Predictions, y: np.ndarray, pred: np.ndarray) -> dict[str, dict]:
    """Per class (grade, tag): the whole OOF set's precision, recall and F1, and their mean ± std over folds."""
    num = len(oof.classes)
    overall = per_class(y, pred, num)
    fold_stats = [per_class(y[oof.fold == k], pred[oof.fold == k], num) for k in sorted(set(oof.fold.tolist()))]
    table = {}
    for i, name in enumerate(oof.classes):
        entry = {"support": int(overall["support"][i])}
        for stat in ("precision", "recall", "f1"):
            values = np.array([fs[stat][i] for fs in fold_stats])
            entry[stat] = float(overall[stat][i])
            entry[f"{stat}_mean"] = float(values.mean())
            entry[f"{stat}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        table[name] = entry
    return table


def score_oof(oof: Predictions, metric: str) -> dict:
    """What the score stage writes for an OOF set: the scores of the whole set (not a mean of folds), of each
    fold, and the task kind's view: per class (single, ordinal: and the confusion matrix of the argmax or
    rounded grade), per tag and the tags' co-occurrence (multilabel), the residuals (regression)."""
    y, probs, kind, num = oof.y, oof.probs, oof.kind, len(oof.classes)
    folds = [{"fold": int(k), "n": int((oof.fold == k).sum()),
              **score(y[oof.fold == k], probs[oof.fold == k], kind, num)} for k in sorted(set(oof.fold.tolist()))]
    out = {"task": task_of(num) if kind == "single" else kind, "kind": kind, "metric": metric,
           "classes": oof.classes, "n": len(oof.ids), "oof": score(y, probs, kind, num), "folds": folds}
    if kind == "regression":
        return out | {"residuals": residuals(y, probs[:, 0])}
    pred = decisions(probs, kind, num)
    out["per_class"] = _per_class_table(oof, y, pred)
    if kind == "multilabel":  # how often two tags are true together (the diagonal: each tag's count)
        out["cooccurrence"] = (y.T @ y).astype(np.int64).tolist()
    else:
        out["confusion_matrix"] = confusion(y, pred, num).tolist()
    return out
