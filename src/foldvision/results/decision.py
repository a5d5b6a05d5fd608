"""From predictions to what a submission holds (labels, tags, grades, values): a decision rule fitted on the OOF
set, and used only where its honest (nested) score beats the plain decision.

The plain decision of each task kind, and the rule fitted on the out-of-fold predictions for the task's label
metric (`label_metric`), then applied unchanged to the test predictions:
- single, binary: argmax; the threshold on P(positive) that scores best (0.5 is argmax);
- single, multi-class: argmax; a prior correction, argmax of p_c · π_c^α with π the training class frequencies
  and α on a grid from -1 to 1 (α = 0 is argmax; α = 1 restores the training priors a balanced sampler removed);
- multilabel: every tag at P >= 0.5; a threshold per tag for the F-metric (samples-F1/F2, micro/macro-F1), by
  coordinate ascent from 0.5; `predict.min_tags` emits the likeliest tags where fewer pass, in both;
- ordinal: the expected grade rounded; K-1 cut-points for QWK (the "optimized rounder"), by coordinate search
  from the uniform cut-points 0.5, 1.5, ... (which are the rounding);
- regression: the value; the value clipped to the training range.

A rule fitted and scored on the same rows flatters itself. `fit_nested` also scores it fitted on the other folds
(each fold's rows decided by the rule fitted without them), and the rule is used only where that nested score
beats the plain decision's; the line it prints says which decision is used and why. On a held-out binary
corpus a threshold of 0.0028 scored 0.893 fitted on all OOF rows but 0.864 nested, against 0.885 for argmax:
on the test set it gave 0.69 where argmax gave 0.876.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

from foldvision.results.metrics import LOWER_IS_BETTER, accuracy, is_better, macro_f1

# per task kind: the metrics a decision can be fitted for; the first is used when train.metric scores no decision
LABEL_METRICS = {
    "single": ("accuracy", "macro_f1"),
    "multilabel": ("samples_f1", "samples_f2", "micro_f1", "macro_f1"),
    "ordinal": ("qwk", "accuracy"),
    "regression": ("rmse", "mae", "r2"),
}
PLAIN = {"single": "argmax", "multilabel": "tags at 0.5", "ordinal": "rounding", "regression": "no clipping"}
DECIDES = {"single": "labels", "multilabel": "tags", "ordinal": "grades", "regression": "values"}
RULE_TASK = {"threshold": "single", "prior": "single", "tags": "multilabel", "cuts": "ordinal", "clip": "regression"}
F_METRICS = {"samples_f1": ("samples", 1.0), "samples_f2": ("samples", 2.0), "micro_f1": ("micro", 1.0),
             "macro_f1": ("macro", 1.0)}
MAX_PASSES = 5  # coordinate search: sweeps over every threshold or cut-point, stopping at the first with no gain


def label_metric(metric: str, kind: str = "single") -> str:
    """The metric decisions are chosen for: the task metric if it scores decisions, else the kind's first."""
    return metric if metric in LABEL_METRICS[kind] else LABEL_METRICS[kind][0]


# ---- the decisions and their scores ---------------------------------------------------------------------------
def tags_of(probs: np.ndarray, thresholds, min_tags: int = 0) -> np.ndarray:
    """N x K 0/1: each tag whose probability reaches its threshold; rows with fewer than `min_tags` get their
    `min_tags` likeliest tags."""
    tags = (probs >= np.asarray(thresholds)).astype(np.int64)
    if min_tags > 0:
        short = tags.sum(axis=1) < min_tags
        top = np.argsort(-probs[short], axis=1, kind="stable")[:, :min_tags]
        tags[np.flatnonzero(short)[:, None], top] = 1
    return tags


def grades_of(values: np.ndarray, cuts) -> np.ndarray:
    """Ordinal grades: how many cut-points each expected grade reaches (uniform cuts: the rounded grade)."""
    return np.searchsorted(np.asarray(cuts), np.asarray(values).reshape(len(values), -1)[:, 0], side="right")


def _fast_f(y: np.ndarray, tags: np.ndarray, average: str, beta: float) -> float:
    """F-beta of tags as `metrics.fbeta_tags` (scikit-learn) computes it, in numpy: the threshold search scores
    thousands of candidate decisions, and sklearn's checks cost ~100x the arithmetic. A test holds the two equal."""
    b2 = beta * beta
    axis = {"samples": 1, "macro": 0, "micro": None}[average]
    tp = (y * tags).sum(axis=axis)
    denom = b2 * y.sum(axis=axis) + tags.sum(axis=axis)
    zero = 1.0 if average == "samples" else 0.0
    f = np.where(denom > 0, (1 + b2) * tp / np.maximum(denom, 1e-300), zero)
    return float(np.mean(f))


def _fast_qwk(y: np.ndarray, grades: np.ndarray, k: int) -> float:
    """Quadratic weighted kappa as scikit-learn's cohen_kappa_score computes it, in numpy (as _fast_f: the
    cut-point search scores thousands of candidates; a test holds the two equal)."""
    grades = np.clip(grades, 0, k - 1)
    observed = np.bincount(y * k + grades, minlength=k * k).reshape(k, k).astype(np.float64)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i, j = np.indices((k, k))
    weights = (i - j) ** 2
    denom = (weights * expected).sum()
    return float("nan") if denom == 0 else float(1 - (weights * observed).sum() / denom)


def _score(metric: str, task: str, y: np.ndarray, decided: np.ndarray, k: int = 0) -> float:
    """The label metric of decisions (class indices, N x K tags, grades, values)."""
    if task == "multilabel":
        return _fast_f(y, decided, *F_METRICS[metric])
    if task == "regression":
        if metric == "r2":
            return float(r2_score(y, decided))
        return float((root_mean_squared_error if metric == "rmse" else mean_absolute_error)(y, decided))
    if metric == "qwk":
        return _fast_qwk(y, decided, k)
    return accuracy(y, decided) if metric == "accuracy" else macro_f1(y, decided)


@dataclass
class DecisionRule:
    metric: str
    kind: str  # threshold, prior (single); tags (multilabel); cuts (ordinal); clip (regression)
    value: float  # the threshold, or α (single)
    prior: list[float]  # training class frequencies (prior rule)
    oof_before: float  # OOF metric of the plain decision
    oof_after: float  # OOF metric of this rule (fitted and scored on the same rows: optimistic)
    oof_nested: float | None = None  # OOF metric of the rule fitted on the other folds (honest); see fit_nested
    values: list[float] = field(default_factory=list)  # per-tag thresholds; K-1 cut-points; the clip range
    min_tags: int = 0  # multilabel: at least this many tags per image (plain and fitted)
    used: bool | None = None  # whether the rule is applied; None: fitted but never judged nested (applied)

    @property
    def task(self) -> str:
        return RULE_TASK[self.kind]

    @property
    def applied(self) -> bool:
        return self.used is not False

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """The decisions for rows of predictions: the fitted rule where it is used, else the plain decision."""
        return self.fitted(probs) if self.applied else self.plain(probs)

    def fitted(self, probs: np.ndarray) -> np.ndarray:
        """The fitted rule's decisions, used or not."""
        if self.kind == "threshold":
            return (probs[:, 1] >= self.value).astype(int)
        if self.kind == "prior":
            return (probs * np.asarray(self.prior) ** self.value).argmax(axis=1)
        if self.kind == "tags":
            return tags_of(probs, self.values, self.min_tags)
        if self.kind == "cuts":
            return grades_of(probs, self.values)
        return np.clip(probs[:, 0], *self.values)

    def plain(self, probs: np.ndarray) -> np.ndarray:
        """The plain decision: argmax, tags at 0.5, the rounded grade, the value."""
        if self.kind == "tags":
            return tags_of(probs, 0.5, self.min_tags)
        if self.kind == "cuts":
            return grades_of(probs, np.arange(len(self.values)) + 0.5)
        if self.kind == "clip":
            return probs[:, 0].copy()
        return probs.argmax(axis=1)

    def _what(self) -> str:
        if self.kind == "threshold":
            return f"threshold {self.value:.4f}"
        if self.kind == "prior":
            return f"prior correction α={self.value:+.2f}"
        if self.kind == "tags":
            shown = ", ".join(f"{v:.2f}" for v in self.values[:8]) + (", ..." if len(self.values) > 8 else "")
            return f"per-tag thresholds ({shown})" + (f", at least {self.min_tags} tags" if self.min_tags else "")
        if self.kind == "cuts":
            return "cut-points " + ", ".join(f"{v:.3f}" for v in self.values)
        return f"clipping to the training range {self.values[0]:.4g}..{self.values[1]:.4g}"

    def describe(self) -> str:
        """One line: the rule, and which decision is used and why (e.g. 'threshold 0.0028: OOF accuracy nested
        0.8640 < argmax 0.8850: argmax used (fitted on all OOF rows 0.8930)')."""
        plain = PLAIN[self.task]
        lower = " (lower is better)" if self.metric in LOWER_IS_BETTER else ""
        if self.oof_nested is None or self.used is None:
            return (f"{self._what()}: OOF {self.metric}{lower} {self.oof_before:.4f} ({plain}) -> "
                    f"{self.oof_after:.4f} fitted on all OOF rows (not scored nested)")
        nested = self.oof_nested
        sign = "=" if nested == self.oof_before else ">" if nested > self.oof_before else "<"
        verdict = "rule used" if self.used else f"{plain} used"
        return (f"{self._what()}: OOF {self.metric}{lower} nested {nested:.4f} {sign} {plain} "
                f"{self.oof_before:.4f}: {verdict} (fitted on all OOF rows {self.oof_after:.4f})")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- fitting ----------------------------------------------------------------------------------------------------
def _fit_single(y: np.ndarray, probs: np.ndarray, metric: str) -> DecisionRule:
    prior = (np.bincount(y, minlength=probs.shape[1]) / len(y)).tolist()
    before = _score(metric, "single", y, probs.argmax(axis=1))
    if probs.shape[1] == 2:
        kind, default = "threshold", 0.5
        candidates = np.unique(np.quantile(probs[:, 1], np.linspace(0.005, 0.995, 199)))
    else:
        kind, default = "prior", 0.0
        candidates = np.linspace(-1.0, 1.0, 17)
    rule = DecisionRule(metric, kind, default, prior, before, before)
    for value in candidates:
        trial = DecisionRule(metric, kind, float(value), prior, before, before)
        score = _score(metric, "single", y, trial.fitted(probs))
        if score > rule.oof_after + 1e-12:
            rule = DecisionRule(metric, kind, float(value), prior, before, score)
    return rule


def _coordinate_search(values: list[float], candidates, score_of) -> tuple[list[float], float]:
    """Coordinate ascent: each value in turn takes the candidate (`candidates(i, values)`) that most raises
    `score_of(values)`, sweep after sweep until a sweep gains nothing (at most MAX_PASSES). Deterministic, and
    each step is exact on its grid, where Nelder-Mead from the same start wanders on a piecewise-constant score."""
    best = score_of(values)
    for _ in range(MAX_PASSES):
        gained = False
        for i in range(len(values)):
            for candidate in candidates(i, values):
                trial = [*values[:i], float(candidate), *values[i + 1:]]
                score = score_of(trial)
                if score > best + 1e-12:
                    values, best, gained = trial, score, True
        if not gained:
            break
    return values, best


def _fit_tags(y: np.ndarray, probs: np.ndarray, metric: str, min_tags: int) -> DecisionRule:
    """Per-tag thresholds for the F-metric: from 0.5, each on a grid (0.01..0.99 and the tag's quantiles)."""
    grid = np.linspace(0.01, 0.99, 99)
    per_tag = [np.unique(np.concatenate([grid, np.quantile(probs[:, j], np.linspace(0.02, 0.98, 49))]))
               for j in range(probs.shape[1])]
    score_of = lambda t: _score(metric, "multilabel", y, tags_of(probs, t, min_tags))  # noqa: E731
    start = [0.5] * probs.shape[1]
    before = score_of(start)
    values, after = _coordinate_search(start, lambda i, _: per_tag[i], score_of)
    return DecisionRule(metric, "tags", 0.5, [], before, after, values=values, min_tags=min_tags)


def _fit_cuts(y: np.ndarray, probs: np.ndarray, metric: str, k: int) -> DecisionRule:
    """K-1 increasing cut-points for the metric: from the uniform ones (the rounding), each cut on a grid of the
    expected grades' quantiles between its neighbours."""
    values = probs[:, 0]
    points = np.unique(np.quantile(values, np.linspace(0.0, 1.0, 201)))
    mids = np.unique(np.concatenate([(points[1:] + points[:-1]) / 2, np.arange(k - 1) + 0.5]))

    def candidates(i: int, cuts: list[float]) -> np.ndarray:
        lo = cuts[i - 1] if i > 0 else -np.inf
        hi = cuts[i + 1] if i < len(cuts) - 1 else np.inf
        return mids[(mids > lo) & (mids < hi)]

    score_of = lambda c: _score(metric, "ordinal", y, grades_of(values, c), k)  # noqa: E731
    start = list(np.arange(k - 1) + 0.5)
    before = score_of(start)
    cuts, after = _coordinate_search(start, candidates, score_of)
    return DecisionRule(metric, "cuts", 0.0, [], before, after, values=[float(c) for c in cuts])


def _fit_clip(y: np.ndarray, probs: np.ndarray, metric: str) -> DecisionRule:
    """The training rows' range: nothing else to fit (clipping can only bring a value nearer its target)."""
    values = [float(y.min()), float(y.max())]
    before = _score(metric, "regression", y, probs[:, 0])
    after = _score(metric, "regression", y, np.clip(probs[:, 0], *values))
    return DecisionRule(metric, "clip", 0.0, [], before, after, values=values)


def fit_rule(y: np.ndarray, probs: np.ndarray, metric: str, kind: str = "single", min_tags: int = 0,
             num: int | None = None) -> DecisionRule:
    """The rule fitted on (y, probs) for the label metric of `metric`; the plain decision unless something is
    strictly better on these rows. `num`: the number of grades (ordinal; default probs' range or y's)."""
    metric = label_metric(metric, kind)
    if kind == "multilabel":
        return _fit_tags(y, probs, metric, min_tags)
    if kind == "ordinal":
        return _fit_cuts(y, probs, metric, num or int(max(y.max(), np.rint(probs.max()))) + 1)
    if kind == "regression":
        return _fit_clip(y, probs, metric)
    return _fit_single(y, probs, metric)


def nested_rule_score(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, metric: str, kind: str = "single",
                      min_tags: int = 0, num: int | None = None) -> float:
    """The label metric of the decision rule fitted honestly: each fold's decisions come from the rule fitted on
    the other folds' rows, and all the decisions are scored together (`fit_rule`'s `oof_after` is fitted and
    scored on the same rows, so it flatters the rule). NaN with fewer than two folds."""
    metric = label_metric(metric, kind)
    folds = np.asarray(folds)
    if len(np.unique(folds)) < 2:
        return float("nan")
    if kind == "ordinal":
        num = num or int(max(y.max(), np.rint(probs.max()))) + 1
    decided = None
    for k in np.unique(folds):
        held = folds == k
        part = fit_rule(y[~held], probs[~held], metric, kind, min_tags, num).fitted(probs[held])
        if decided is None:
            decided = np.empty((len(y), *part.shape[1:]), dtype=part.dtype)
        decided[held] = part
    return _score(metric, kind, y, decided, num or 0)


def fit_nested(y: np.ndarray, probs: np.ndarray, folds: np.ndarray, metric: str, kind: str = "single",
               min_tags: int = 0, num: int | None = None) -> DecisionRule:
    """`fit_rule` on every row (the rule the test set gets), with its honest score beside the optimistic one;
    the rule is used only where the honest score beats the plain decision's."""
    rule = fit_rule(y, probs, metric, kind, min_tags, num)
    rule.oof_nested = nested_rule_score(y, probs, folds, metric, kind, min_tags, num)
    rule.used = bool(is_better(rule.metric, rule.oof_nested, rule.oof_before)) and not np.isnan(rule.oof_nested)
    return rule
