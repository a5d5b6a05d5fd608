"""From probabilities to labels, when a submission asks for labels: a decision rule chosen on the OOF set.

argmax is not always right: the imbalanced sampler trains on balanced classes, which shifts the predicted
class priors (AUC does not care, accuracy and F1 do). The rule is fitted on the out-of-fold predictions for the
task's label metric and then applied unchanged to the test predictions:
- binary: the threshold on P(positive) that scores best (0.5 is argmax);
- multi-class: a prior correction, argmax of p_c · π_c^α with π the training class frequencies and α on a
  grid from -1 to 1 (α = 0 is argmax; α = 1 restores the training priors a balanced sampler removed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from foldvision.results.metrics import accuracy, macro_f1

LABEL_METRICS = ("accuracy", "macro_f1")


def label_metric(metric: str) -> str:
    """The metric labels are chosen for: the task metric if it scores labels, else accuracy."""
    return metric if metric in LABEL_METRICS else "accuracy"


def _score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    return accuracy(y, pred) if metric == "accuracy" else macro_f1(y, pred)


@dataclass
class DecisionRule:
    metric: str
    kind: str  # "threshold" (binary) or "prior" (multi-class)
    value: float  # the threshold, or α
    prior: list[float]  # training class frequencies (prior rule)
    oof_before: float  # OOF metric of argmax
    oof_after: float  # OOF metric of this rule (fitted and scored on the same rows: optimistic)
    oof_nested: float | None = None  # OOF metric of the rule fitted on the other folds (honest); see fit_nested

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Class indices for rows of probabilities."""
        if self.kind == "threshold":
            return (probs[:, 1] >= self.value).astype(int)
        return (probs * np.asarray(self.prior) ** self.value).argmax(axis=1)

    def describe(self) -> str:
        what = f"threshold {self.value:.4f}" if self.kind == "threshold" else f"prior correction α={self.value:+.2f}"
        nested = "" if self.oof_nested is None else f" (nested: fitted on the other folds, {self.oof_nested:.4f})"
        return f"{what}: OOF {self.metric} {self.oof_before:.4f} (argmax) -> {self.oof_after:.4f}{nested}"

    def to_dict(self) -> dict:
        return asdict(self)


def fit_rule(y: np.ndarray, probs: np.ndarray, metric: str) -> DecisionRule:
    """The rule that scores best on (y, probs); argmax unless something is strictly better."""
    metric = label_metric(metric)
    prior = (np.bincount(y, minlength=probs.shape[1]) / len(y)).tolist()
    before = _score(metric, y, probs.argmax(axis=1))
    if probs.shape[1] == 2:
        kind, default = "threshold", 0.5
        candidates = np.unique(np.quantile(probs[:, 1], np.linspace(0.005, 0.995, 199)))
    else:
        kind, default = "prior", 0.0
        candidates = np.linspace(-1.0, 1.0, 17)
    rule = DecisionRule(metric, kind, default, prior, before, before)
    for value in candidates:
        trial = DecisionRule(metric, kind, float(value), prior, before, before)
        score = _score(metric, y, trial.apply(probs))
        if score > rule.oof_after + 1e-12:
            rule = DecisionRule(metric, kind, float(value), prior, before, score)
    return rule


def nested_rule_score(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, metric: str) -> float:
    """The label metric of the decision rule fitted honestly: each fold's labels come from the rule fitted on
    the other folds' rows, and all the labels are scored together (`fit_rule`'s `oof_after` is fitted and
    scored on the same rows, so it flatters the rule). NaN with fewer than two folds."""
    metric = label_metric(metric)
    folds = np.asarray(folds)
    if len(np.unique(folds)) < 2:
        return float("nan")
    pred = np.empty(len(y), dtype=np.int64)
    for k in np.unique(folds):
        held = folds == k
        pred[held] = fit_rule(y[~held], probs[~held], metric).apply(probs[held])
    return _score(metric, y, pred)


def fit_nested(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, metric: str) -> DecisionRule:
    """`fit_rule` on every row (the rule the test set gets), with its honest score beside the optimistic one."""
    rule = fit_rule(y, probs, metric)
    rule.oof_nested = nested_rule_score(y, probs, folds, metric)
    return rule

