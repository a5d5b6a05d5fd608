"""Scores of class probabilities, all through scikit-learn so they equal what a user computes from the OOF table."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

if TYPE_CHECKING:  # the annotation only: metrics stays a leaf module
    from foldvision.run import Predictions

# Metrics where lower is better; every other metric is maximised.
LOWER_IS_BETTER = {"log_loss"}


def task_of(num_classes: int) -> str:
    return "binary" if num_classes == 2 else "multiclass"


def resolve_metric(metric: str, kind: str = "single") -> str:
    """The metric that picks checkpoints and stops early: ROC AUC unless the config names another.
    `kind` is the task kind (foldvision.targets); only single-label is scored so far."""
    return "auc" if metric == "auto" else metric


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


def score(y: np.ndarray, probs: np.ndarray, kind: str = "single") -> dict[str, float]:
    """auc, accuracy, macro_f1 (of the argmax) and log_loss of one set of predictions.
    `kind` is the task kind (foldvision.targets: y and probs as Task.encode and Predictions hold them)."""
    if kind != "single":
        raise NotImplementedError(f"scores of {kind} predictions")
    pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes never predicted; F1 counts them as 0
        return {
            "auc": auc(y, probs),
            "accuracy": accuracy(y, pred),
            "macro_f1": macro_f1(y, pred, labels),
            "log_loss": float(log_loss(y, np.clip(probs, 1e-15, 1), labels=labels)),
        }


def per_class(y: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and support per class (argmax decisions)."""
    labels = np.arange(probs.shape[1])
    precision, recall, _, support = precision_recall_fscore_support(
        y, probs.argmax(axis=1), labels=labels, zero_division=0
    )
    return {"precision": precision, "recall": recall, "support": support}


def confusion(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    return confusion_matrix(y, probs.argmax(axis=1), labels=np.arange(probs.shape[1]))


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(new)
    return new < best if metric in LOWER_IS_BETTER else new > best


def score_oof(oof: Predictions, metric: str) -> dict:
    """What the score stage writes for an OOF set: the scores of the whole set (not a mean of folds), of each
    fold, per class (OOF, and mean ± std over folds), and the confusion matrix."""
    y, probs = oof.y, oof.probs
    folds, fold_classes = [], []
    for k in sorted(set(oof.fold.tolist())):
        mask = oof.fold == k
        folds.append({"fold": int(k), "n": int(mask.sum()), **score(y[mask], probs[mask])})
        fold_classes.append(per_class(y[mask], probs[mask]))
    overall = per_class(y, probs)
    per_class_scores = {}
    for i, name in enumerate(oof.classes):
        entry = {"support": int(overall["support"][i])}
        for stat in ("precision", "recall"):
            values = np.array([fc[stat][i] for fc in fold_classes])
            entry[stat] = float(overall[stat][i])
            entry[f"{stat}_mean"] = float(values.mean())
            entry[f"{stat}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        per_class_scores[name] = entry
    return {
        "task": task_of(len(oof.classes)),
        "metric": metric,
        "classes": oof.classes,
        "n": len(oof.ids),
        "oof": score(y, probs),
        "folds": folds,
        "per_class": per_class_scores,
        "confusion_matrix": confusion(y, probs).tolist(),
    }
