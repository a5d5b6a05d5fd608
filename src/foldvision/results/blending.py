"""Blending: weights fitted on several scored experiments' OOF predictions, scored plainly and nested
(torch-free; `foldvision ensemble`, commands/ensemble.py, writes the blend's run folder with them, and
`results/blend.py` shows its tables).

The members are scored experiments with test predictions on one corpus split: the same training ids in the same
folds (checked by a content hash of the (id, fold) pairs, not by file name), the same labels and classes, the
same test ids (`load_members`).

Methods: `mean` of probabilities (multi-label: of sigmoids; regression, ordinal: of values); `rank`, the mean of
each class column's ranks (for AUC and mAP; multi-class rows are rescaled to sum to 1); `hill_climb` (Caruana et
al. 2004: start from the best member, then add with replacement the member that most improves the OOF metric, for
at most `rounds` additions; weights = selection counts / total); `stack`, a logistic regression on the members'
OOF log-probabilities (log-odds for binary; multinomial for multi-class), a logistic regression per tag on the
members' log-odds of it (multi-label), a ridge regression on the members' values (regression, ordinal). The
metric is the experiment's `train.metric` (the task kind's `auto` unless set; log_loss, bce, rmse and mae are
minimised). The members must share the task (kind and names).

Rank averaging gives scores, not probabilities: a rank of 0.7 says "above 70% of these rows", whatever the
class's prior. Its labels (tags, grades) and its log loss would read ranks as probabilities (a held-out 6-class
corpus: test accuracy 0.705 for a rank blend argmaxed, 0.784 for the mean blend), and a rule fitted on OOF ranks
carries over to the test rows only if the test set has the OOF set's class mix, since ranks are taken within
each set. So `rank` is refused (`check_rank`, one line) unless the submission holds probabilities scored by
ranking (auc, map, macro_auc); every other blend is decided by the nested-judged rule, as an experiment is.

Weights fitted on the rows they are scored on flatter the blend. The nested score fits them on the other folds'
OOF rows and applies them to each held-out fold; the gap between the plain and the nested score is the optimism.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from foldvision.errors import UserError
from foldvision.results.decision import PLAIN, DecisionRule
from foldvision.results.metrics import accuracy, auc, is_better, macro_f1, score
from foldvision.run import Predictions, Run, Split

METHODS = ("hill_climb", "mean", "rank", "stack")
RANK_METRICS = ("auc", "map", "macro_auc")
PLURAL = {"label": "labels", "tags": "tags", "grade": "grades", "value": "values"}  # submission formats decided  # metrics of the rows' order alone: what a rank blend may be scored by
ROUNDS = 50  # hill climbing: at most this many additions after the first member (it stops earlier at no gain)
EPS = 1e-7  # probabilities are clipped to [EPS, 1] before their log (stack)


# ---- members ----------------------------------------------------------------------------------------------
@dataclass
class Member:
    """A scored experiment's OOF and test probabilities, aligned to the blend's row and class order."""

    name: str
    root: Path
    oof: np.ndarray  # (training ids, classes), in the first member's folds.csv order
    test: np.ndarray  # (test ids, classes), in the first member's test.csv order


@dataclass
class Members:
    split: Split  # the shared split (the first member's folds.csv and classes.json)
    test_ids: list[str]
    members: list[Member]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


def split_digest(split: Split) -> str:
    """A content hash of the (id, fold) pairs, in id order: the same split whatever the file's name or row order."""
    h = hashlib.sha1()
    for i, k in sorted(zip(split.ids, split.fold.tolist())):
        h.update(f"{i}\0{k}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def _aligned(pred: Predictions, ids: list[str], classes: list[str]) -> np.ndarray:
    """pred's probabilities in the order of `ids` (all of them there) and of `classes` (a value task's one
    column as it is)."""
    row = {i: n for n, i in enumerate(pred.ids)}
    col = {c: n for n, c in enumerate(pred.classes)}
    cols = [0] if pred.task.is_value else [col[c] for c in classes]
    return pred.probs[np.ix_([row[i] for i in ids], cols)]


def _member(root: Path) -> Run:
    """A member's run folder, checked to be finished: scores, OOF and test predictions."""
    run = Run(root)
    if not run.exists():
        raise UserError(f"member {root}: not a run folder (no {run.config_yaml.name}); members are scored "
                        "experiments (make train predict)")
    for path in (run.folds_csv, run.classes_json, run.oof_csv, run.scores_json):
        if not path.is_file():
            raise UserError(f"member {root} is unfinished (no {path.name}): train and score it first "
                            f"(make train {run.make_args})")
    if not run.test_csv.is_file():
        raise UserError(f"member {root} has no test predictions (no {run.test_csv.name}): predict them first "
                        f"(make predict {run.make_args})")
    return run


def load_members(roots: list[Path]) -> Members:
    """The members, checked to share one split, labels, classes and test ids; each problem one line naming it."""
    if not roots:
        raise UserError("an ensemble needs at least one member (--members runs/a runs/b ...)")
    names = [Path(r).name for r in roots]
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated:
        raise UserError(f"member {repeated!r} is named twice; list each run folder once (hill climbing "
                        "weights a member by picking it more than once)")
    runs = [_member(Path(r)) for r in roots]
    first = runs[0]
    split = first.read_split()
    digest, classes = split_digest(split), split.classes
    label_of = dict(zip(split.ids, split.labels))
    first_test = first.read_test(split.task)
    members = []
    for run in runs:
        own = run.read_split() if run is not first else split
        if own.kind != split.kind:
            raise UserError(f"member {run.root} is a {own.kind} task and {first.root} a {split.kind} one: members "
                            "must share the task (data.task)")
        if split.task.is_value and own.classes != classes:
            raise UserError(f"member {run.root} predicts {own.classes} and {first.root} {classes}: members must "
                            "share the task's target")
        if set(own.classes) != set(classes):
            raise UserError(f"member {run.root} has classes {own.classes} and {first.root} has {classes}: "
                            "members must be experiments on one corpus")
        if set(own.ids) != set(split.ids):
            other = sorted(set(own.ids) ^ set(split.ids))
            raise UserError(f"member {run.root} has other training ids than {first.root} ({len(other)} not in "
                            f"both, e.g. {other[0]!r}): members must be experiments on one corpus")
        if split_digest(own) != digest:
            raise UserError(f"member {run.root} has another split than {first.root} (its folds.csv puts ids in "
                            "other folds): blend experiments of one corpus split (same data, cv.n_folds, cv.seed)")
        wrong = next((i for i, label in zip(own.ids, own.labels) if label_of[i] != label), None)
        if wrong is not None:
            raise UserError(f"member {run.root} labels {wrong!r} {dict(zip(own.ids, own.labels))[wrong]!r} and "
                            f"{first.root} labels it {label_of[wrong]!r}: members must be experiments on one corpus")
        oof = run.read_oof()
        if sorted(oof.ids) != sorted(split.ids):
            raise UserError(f"member {run.root}: oof.csv does not cover its folds.csv; re-score it "
                            f"(make train {run.make_args})")
        test = run.read_test(own.task)
        if test.ids != first_test.ids and sorted(test.ids) != sorted(first_test.ids):
            raise UserError(f"member {run.root}: test.csv has other ids than {first.root}'s; predict both on the "
                            "same test set (make predict)")
        members.append(Member(run.name, run.root, _aligned(oof, split.ids, classes),
                              _aligned(test, first_test.ids, classes)))
    return Members(split, first_test.ids, members)


# ---- the metric the weights are fitted for -----------------------------------------------------------------
def objective(metric: str, kind: str = "single", num: int | None = None):
    """`(y, probs) -> float` for the metric (the same scikit-learn calls as the scores); see is_better."""
    if kind != "single":
        return lambda y, p: score(y, p, kind, num)[metric]
    if metric == "auc":
        return auc
    if metric == "accuracy":
        return lambda y, p: accuracy(y, p.argmax(axis=1))
    if metric == "macro_f1":
        return lambda y, p: macro_f1(y, p.argmax(axis=1), np.arange(p.shape[1]))
    return lambda y, p: score(y, p)[metric]


# ---- methods ----------------------------------------------------------------------------------------------
@dataclass
class Blend:
    """What a method fitted: one weight per member (summing to 1), or a stacker; `apply` blends."""

    method: str
    weights: np.ndarray
    picks: list[int] = field(default_factory=list)  # hill_climb: the members picked, in order
    stacker: object | None = None  # stack: the fitted LogisticRegression, TagStack or Ridge
    kind: str = "single"  # the task kind

    def apply(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The blended probabilities of rows of the members' inputs (see `method_inputs`)."""
        if self.stacker is not None:
            return _stack_proba(self.stacker, inputs)
        blended = sum(w * p for w, p in zip(self.weights, inputs))
        if self.method == "rank" and self.kind == "single":  # mean ranks are not probabilities: rows sum to 1
            if blended.shape[1] == 2:
                return np.column_stack([1 - blended[:, 1], blended[:, 1]])
            return blended / blended.sum(axis=1, keepdims=True)
        return blended


def method_inputs(method: str, probs: list[np.ndarray]) -> list[np.ndarray]:
    """What a method blends: the probabilities, or (rank) each class column's ranks scaled to (0, 1].

    Ranks are taken over all the rows given (the whole OOF table, or the whole test table), once, so the nested
    and the plain blend of an unfitted method are the same numbers.
    """
    if method != "rank":
        return probs
    return [rankdata(p, axis=0) / len(p) for p in probs]


def hill_climb(inputs: list[np.ndarray], y: np.ndarray, metric: str, rounds: int = ROUNDS, kind: str = "single",
               num: int | None = None) -> Blend:
    """Caruana et al. (2004): from the best single member, add (with replacement) the member that most improves
    the metric of the running average, at most `rounds` times; stop when no addition improves it strictly."""
    measure = objective(metric, kind, num)
    singles = [measure(y, p) for p in inputs]
    best = 0
    for i, s in enumerate(singles):
        if is_better(metric, s, singles[best]):
            best = i
    picks, total, current = [best], inputs[best].copy(), singles[best]
    for _ in range(rounds):
        trials = [measure(y, (total + p) / (len(picks) + 1)) for p in inputs]
        pick = None
        for i, s in enumerate(trials):
            if is_better(metric, s, current if pick is None else trials[pick]):
                pick = i
        if pick is None:
            break
        picks.append(pick)
        total += inputs[pick]
        current = trials[pick]
    counts = np.bincount(picks, minlength=len(inputs)).astype(np.float64)
    return Blend("hill_climb", counts / counts.sum(), picks, kind=kind)


def _stack_features(inputs: list[np.ndarray]) -> np.ndarray:
    """Each member's log-probabilities (binary: the log-odds, the one column that carries them)."""
    logs = [np.log(np.clip(p, EPS, 1.0)) for p in inputs]
    if inputs[0].shape[1] == 2:
        return np.column_stack([lp[:, 1] - lp[:, 0] for lp in logs])
    return np.hstack(logs)


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


@dataclass
class TagStack:
    """Multi-label stacking: per tag, a logistic regression on the members' log-odds of that tag (coef: tags x
    members); a tag with one class in the fitted rows predicts its rate there."""

    coef: np.ndarray
    intercept: np.ndarray

    @classmethod
    def fit(cls, inputs: list[np.ndarray], y: np.ndarray) -> TagStack:
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415 - only this method needs it

        coef, intercept = np.zeros((y.shape[1], len(inputs))), np.zeros(y.shape[1])
        for j in range(y.shape[1]):
            if len(np.unique(y[:, j])) < 2:  # nothing to separate: the tag's rate, as a log-odds intercept
                intercept[j] = _log_odds(np.array([y[:, j].mean()]))[0]
                continue
            model = LogisticRegression(C=1.0, max_iter=1000).fit(np.column_stack([_log_odds(p[:, j]) for p in inputs]),
                                                                 y[:, j])
            coef[j], intercept[j] = model.coef_[0], model.intercept_[0]
        return cls(coef, intercept)

    def predict(self, inputs: list[np.ndarray]) -> np.ndarray:
        logits = np.stack([_log_odds(p) for p in inputs], axis=2)  # rows x tags x members
        z = (logits * self.coef[None]).sum(axis=2) + self.intercept
        return 1 / (1 + np.exp(-z))


def _stack_proba(model, inputs: list[np.ndarray]) -> np.ndarray:
    """The stacker's predictions: probabilities in class-index columns (a class absent where it was fitted gets
    0), per-tag probabilities (TagStack) or values (ridge)."""
    if isinstance(model, TagStack):
        return model.predict(inputs)
    if not hasattr(model, "predict_proba"):  # ridge: the members' values in, a value out
        return model.predict(np.hstack(inputs))[:, None]
    out = np.zeros((len(inputs[0]), inputs[0].shape[1]))
    out[:, model.classes_] = model.predict_proba(_stack_features(inputs))
    return out


def stack(inputs: list[np.ndarray], y: np.ndarray, kind: str = "single") -> Blend:
    """scikit-learn's logistic regression (multinomial for multi-class) on the members' OOF log-probabilities;
    per tag on their log-odds (multilabel); a ridge regression on their values (regression, ordinal). Its member
    weights are each member's share of the absolute coefficients (for show)."""
    from sklearn.linear_model import LogisticRegression, Ridge  # noqa: PLC0415 - only this method needs them

    if kind == "multilabel":
        model = TagStack.fit(inputs, y)
        per_member = np.abs(model.coef).sum(axis=0)
    elif kind in ("regression", "ordinal"):
        model = Ridge(alpha=1.0).fit(np.hstack(inputs), y.astype(np.float64))
        per_member = np.abs(model.coef_)
    else:
        model = LogisticRegression(C=1.0, max_iter=1000).fit(_stack_features(inputs), y)
        per_member = np.abs(model.coef_).reshape(len(model.coef_), len(inputs), -1).sum(axis=(0, 2))
    total = per_member.sum()
    weights = per_member / total if total > 0 else np.full(len(inputs), 1 / len(inputs))
    return Blend("stack", weights, stacker=model, kind=kind)


def fit_blend(method: str, inputs: list[np.ndarray], y: np.ndarray, metric: str, rounds: int = ROUNDS,
              kind: str = "single", num: int | None = None) -> Blend:
    if method == "hill_climb":
        return hill_climb(inputs, y, metric, rounds, kind, num)
    if method == "stack":
        return stack(inputs, y, kind)
    return Blend(method, np.full(len(inputs), 1 / len(inputs)), kind=kind)  # mean, rank: nothing to fit


def nested_blend(method: str, inputs: list[np.ndarray], y: np.ndarray, folds: np.ndarray, metric: str,
                 rounds: int = ROUNDS, kind: str = "single", num: int | None = None) -> tuple[np.ndarray, dict]:
    """The honest OOF blend: each fold's rows blended by a blend fitted on the other folds' rows only."""
    out = np.empty_like(inputs[0], dtype=np.float64)
    fitted = {}
    for k in sorted(set(folds.tolist())):
        held = folds == k
        blend = fit_blend(method, [p[~held] for p in inputs], y[~held], metric, rounds, kind, num)
        out[held] = blend.apply([p[held] for p in inputs])
        fitted[int(k)] = blend
    return out, fitted


def check_rank(kind: str, metric: str, decided: str | None) -> None:
    """Refuse METHOD=rank where its scores would be read as probabilities or values (see the module's note):
    `decided`, the submission's decided kind (labels, tags, grades, values) or None for probabilities."""
    why = (f"a {kind} blend must stay in the target's units" if kind in ("regression", "ordinal")
           else f"the submission holds {PLURAL[decided]}, which would be decided on ranks" if decided
           else f"train.metric={metric} scores probabilities, not their order" if metric not in RANK_METRICS
           else None)
    if why:
        raise UserError(f"METHOD=rank blends ranks, which are not probabilities, and {why}; use METHOD=mean or "
                        f"hill_climb (rank suits probability submissions scored by {', '.join(RANK_METRICS)})")


def correlation(members: list[np.ndarray]) -> np.ndarray:
    """Pearson correlation of the members' OOF predictions: of P(positive) for binary, else the mean over the
    class columns."""
    columns = [1] if members[0].shape[1] == 2 else range(members[0].shape[1])
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # a constant column has no correlation: NaN
        mats = [np.atleast_2d(np.corrcoef(np.stack([p[:, c] for p in members]))) for c in columns]
    return np.mean(mats, axis=0)




# ---- a blend of the members, and its record ------------------------------------------------------------------
@dataclass
class Blended:
    """A method fitted on the members' OOF rows, and the probabilities it gives."""

    method: str
    rounds: int
    metric: str
    fitted: Blend  # fitted on all OOF rows: what the test set gets
    per_fold: dict[int, Blend]  # fitted without each fold
    oof: np.ndarray  # the OOF rows blended by `fitted` (scored on the rows it was fitted on: optimistic)
    nested: np.ndarray  # each fold's rows blended by the blend fitted without it (honest)
    test: np.ndarray  # the test rows blended by `fitted`


def blend_members(group: Members, method: str, metric: str, rounds: int = ROUNDS) -> Blended:
    """Fit `method` on the members' OOF predictions for `metric`; blend OOF (plainly and nested) and test."""
    y, folds, kind, num = group.split.y, group.split.fold, group.split.kind, len(group.split.classes)
    oof_inputs = method_inputs(method, [m.oof for m in group.members])
    fitted = fit_blend(method, oof_inputs, y, metric, rounds, kind, num)
    nested, per_fold = nested_blend(method, oof_inputs, y, folds, metric, rounds, kind, num)
    test = fitted.apply(method_inputs(method, [m.test for m in group.members]))
    return Blended(method, rounds, metric, fitted, per_fold, fitted.apply(oof_inputs), nested, test)


def ensemble_scores(group: Members, blended: Blended, blend_oof: dict, rule: DecisionRule) -> dict:
    """scores.json's `ensemble` part: members, weights, each member's OOF scores, the best single member, the
    plain (`blend_oof`: the blend's OOF scores) and the nested blended score, the decision rule's scores
    (`rule`: fitted on the blended OOF and judged nested, `decision.fit_nested`) and the correlation of the
    members' OOF predictions."""
    split, metric, names = group.split, blended.metric, group.names
    y, kind, num = split.y, split.kind, len(split.classes)
    member_scores = {m.name: score(y, m.oof, kind, num) for m in group.members}
    best = names[0]
    for name in names:
        if is_better(metric, member_scores[name][metric], member_scores[best][metric]):
            best = name
    nested_scores = score(y, blended.nested, kind, num)
    return {
        "method": blended.method,
        "rounds": blended.rounds if blended.method == "hill_climb" else None,
        "metric": metric,
        "members": [{"name": m.name, "run": str(m.root), "weight": float(w), "oof": member_scores[m.name]}
                    for m, w in zip(group.members, blended.fitted.weights)],
        "best_member": {"name": best, "oof": member_scores[best]},
        "oof": blend_oof[metric],  # weights fitted on all OOF rows and scored on them: optimistic
        "oof_nested": nested_scores[metric],  # weights fitted on the other folds: what to expect of new data
        "nested": nested_scores,
        "decision": {"metric": rule.metric, "rule": rule.describe(), "plain": PLAIN[kind], "argmax": rule.oof_before,
                     "fitted": rule.oof_after, "nested": rule.oof_nested, "used": rule.used},
        "correlation": {"members": names, "matrix": correlation([m.oof for m in group.members]).tolist()},
    }


def ensemble_record(group: Members, blended: Blended) -> dict:
    """ensemble.json: the method, the weights (fitted on all OOF, and without each fold), the members, the split."""
    names, fitted, split = group.names, blended.fitted, group.split
    record = {
        "method": blended.method, "rounds": blended.rounds if blended.method == "hill_climb" else None,
        "metric": blended.metric, "members": names, "runs": [str(m.root) for m in group.members],
        "split": split_digest(split), "weights": dict(zip(names, map(float, fitted.weights))),
        "fold_weights": {str(k): dict(zip(names, map(float, b.weights))) for k, b in blended.per_fold.items()},
    }
    if blended.method == "hill_climb":
        record["picks"] = [names[i] for i in fitted.picks]
    model = fitted.stacker
    if isinstance(model, TagStack):
        record["stacker"] = {"model": "per_tag_logistic", "features": "log-odds per tag", "coef": model.coef.tolist(),
                             "intercept": model.intercept.tolist(), "classes": list(split.classes)}
    elif model is not None and not hasattr(model, "predict_proba"):
        record["stacker"] = {"model": "ridge", "features": "values", "coef": model.coef_.tolist(),
                             "intercept": float(model.intercept_), "classes": list(split.classes)}
    elif model is not None:
        record["stacker"] = {"features": "log-odds" if len(split.classes) == 2 else "log-probabilities",
                             "coef": model.coef_.tolist(), "intercept": model.intercept_.tolist(),
                             "classes": [split.classes[c] for c in model.classes_]}
    return record


def stacker_from_record(record: dict, classes: list[str]):
    """The stacker `ensemble_record` wrote (its coefficients, intercept and classes), as a fitted model again:
    what a package's stack blend applies (a LogisticRegression, a TagStack or a Ridge)."""
    from sklearn.linear_model import LogisticRegression, Ridge  # noqa: PLC0415 - as stack

    if record.get("model") == "per_tag_logistic":
        return TagStack(np.array(record["coef"]), np.array(record["intercept"]))
    if record.get("model") == "ridge":
        model = Ridge()
        model.coef_, model.intercept_ = np.array(record["coef"]), float(record["intercept"])
        model.n_features_in_ = len(record["coef"])
        return model
    model = LogisticRegression()
    model.coef_, model.intercept_ = np.array(record["coef"]), np.array(record["intercept"])
    model.classes_ = np.array([classes.index(c) for c in record["classes"]])
    return model
