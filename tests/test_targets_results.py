"""Results for every task kind (multilabel, regression, ordinal beside single-label), on synthetic predictions:
metrics, decisions fitted on OOF and judged nested, submission formats, blends, the score tables."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import (
    average_precision_score,
    cohen_kappa_score,
    f1_score,
    fbeta_score,
    roc_auc_score,
)

from foldvision.errors import UserError
from foldvision.results import decision as dec
from foldvision.results.metrics import resolve_metric, score, score_oof
from foldvision.run import Predictions

TAGS = ["agriculture", "clear", "water"]


def toy_multilabel(n=300, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.5, 0.3, 0.15]).astype(float)
    probs = np.clip(0.5 * signal * (y - 0.5) + 0.5 + rng.normal(0, 0.2, y.shape), 0.001, 0.999)
    return y, probs


def label_strings(y, names=TAGS):
    return ["|".join(n for n, v in zip(names, row) if v) for row in y]


# ---- metrics ----------------------------------------------------------------------------------------------------
def test_multilabel_scores_are_scikit_learns():
    y, probs = toy_multilabel()
    got = score(y, probs, "multilabel")
    tags = (probs >= 0.5).astype(int)
    assert got["samples_f2"] == pytest.approx(fbeta_score(y, tags, beta=2, average="samples", zero_division=1))
    assert got["samples_f1"] == pytest.approx(f1_score(y, tags, average="samples", zero_division=1))
    assert got["micro_f1"] == pytest.approx(f1_score(y, tags, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(y, tags, average="macro"))
    assert got["map"] == pytest.approx(np.mean([average_precision_score(y[:, j], probs[:, j]) for j in range(3)]))
    assert got["macro_auc"] == pytest.approx(roc_auc_score(y, probs, average="macro"))
    assert got["bce"] == pytest.approx(np.mean(-(y * np.log(probs) + (1 - y) * np.log(1 - probs))))


def test_regression_and_ordinal_scores_against_hand_computations():
    rng = np.random.default_rng(1)
    y = rng.uniform(1, 5, 200)
    pred = y + rng.normal(0, 0.3, 200)
    got = score(y, pred[:, None], "regression")
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred - y)))
    assert got["pearson"] == pytest.approx(pearsonr(y, pred).statistic)
    assert got["r2"] == pytest.approx(1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2))
    grades = rng.integers(0, 4, 200)
    expected = grades + rng.normal(0, 0.6, 200)
    got = score(grades, expected[:, None], "ordinal", num_grades=4)
    rounded = np.clip(np.rint(expected), 0, 3).astype(int)
    assert got["qwk"] == pytest.approx(cohen_kappa_score(grades, rounded, weights="quadratic"))
    assert got["accuracy"] == pytest.approx(np.mean(rounded == grades))
    assert got["mae"] == pytest.approx(np.mean(np.abs(expected - grades)))


def test_resolve_metric_per_kind_and_a_metric_of_another_kind_is_one_line():
    assert [resolve_metric("auto", k) for k in ("single", "multilabel", "regression", "ordinal")] == \
        ["auc", "map", "rmse", "qwk"]
    assert resolve_metric("samples_f2", "multilabel") == "samples_f2"
    with pytest.raises(UserError, match=r"train.metric=qwk: not a metric of a multilabel task; use one of map"):
        resolve_metric("qwk", "multilabel")
    with pytest.raises(UserError, match="auc"):
        resolve_metric("auc", "regression")


def test_score_oof_gives_each_kind_its_view():
    y, probs = toy_multilabel()
    folds = np.arange(len(y)) % 3
    oof = Predictions([str(i) for i in range(len(y))], TAGS, probs, folds, label_strings(y), "multilabel")
    s = score_oof(oof, "samples_f2")
    assert s["kind"] == "multilabel" and "confusion_matrix" not in s
    assert np.diag(s["cooccurrence"]).tolist() == y.sum(0).astype(int).tolist()
    assert s["cooccurrence"][0][1] == int((y[:, 0] * y[:, 1]).sum())
    tags = (probs >= 0.5).astype(int)
    assert s["per_class"]["clear"]["f1"] == pytest.approx(f1_score(y[:, 1], tags[:, 1]))
    assert s["per_class"]["clear"]["support"] == int(y[:, 1].sum())

    rng = np.random.default_rng(2)
    values = rng.uniform(1, 5, 60)
    reg = Predictions([str(i) for i in range(60)], ["score"], (values + 0.5)[:, None], np.arange(60) % 3,
                      [str(float(v)) for v in values], "regression")
    s = score_oof(reg, "rmse")
    assert "per_class" not in s and "confusion_matrix" not in s
    assert s["residuals"]["mean"] == pytest.approx(0.5) and s["oof"]["rmse"] == pytest.approx(0.5)

    grades = rng.integers(0, 3, 60)
    ordinal = Predictions([str(i) for i in range(60)], ["0", "1", "2"], (grades + 0.7)[:, None], np.arange(60) % 3,
                          [str(g) for g in grades], "ordinal")
    s = score_oof(ordinal, "qwk")
    # rounded: 0.7 -> 1, 1.7 -> 2, 2.7 -> 3 clipped to 2
    expected = np.zeros((3, 3), dtype=int)
    for g in grades:
        expected[g, min(g + 1, 2)] += 1
    assert s["confusion_matrix"] == expected.tolist()


# ---- decisions --------------------------------------------------------------------------------------------------
def test_fast_scores_of_the_search_equal_scikit_learns():
    y, probs = toy_multilabel(seed=3)
    y[:5] = 0  # images without a tag: samples-F counts 1 where none is predicted
    tags = (probs >= 0.6).astype(int)
    y, tags = np.hstack([y, np.zeros((len(y), 1))]), np.hstack([tags, np.zeros((len(y), 1), dtype=int)])  # a tag
    # never true nor predicted: macro-F counts it 0
    for average, beta in (("samples", 1.0), ("samples", 2.0), ("micro", 1.0), ("macro", 1.0)):
        assert dec._fast_f(y, tags, average, beta) == pytest.approx(
            fbeta_score(y, tags, beta=beta, average=average, zero_division=1.0 if average == "samples" else 0.0))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    assert dec._fast_qwk(a, b, 5) == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))


def test_per_tag_thresholds_where_the_best_values_are_known():
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random((n, 2)) < 0.4).astype(float)
    probs = np.empty_like(y)
    # tag 0: positives at 0.25..0.35, negatives below 0.2: any threshold in (0.2, 0.25] separates them
    probs[:, 0] = np.where(y[:, 0] == 1, rng.uniform(0.25, 0.35, n), rng.uniform(0.0, 0.2, n))
    # tag 1: positives at 0.8..0.9, negatives at 0.55..0.7: a threshold in (0.7, 0.8]
    probs[:, 1] = np.where(y[:, 1] == 1, rng.uniform(0.8, 0.9, n), rng.uniform(0.55, 0.7, n))
    rule = dec.fit_rule(y, probs, "macro_f1", "multilabel")
    assert rule.kind == "tags" and rule.oof_after == pytest.approx(1.0) and rule.oof_before < 0.7
    t0, t1 = rule.values
    assert probs[y[:, 0] == 0, 0].max() < t0 <= probs[y[:, 0] == 1, 0].min()
    assert probs[y[:, 1] == 0, 1].max() < t1 <= probs[y[:, 1] == 1, 1].min()
    folds = np.arange(n) % 5
    nested = dec.fit_nested(y, probs, folds, "macro_f1", "multilabel")
    assert nested.used and nested.oof_nested > nested.oof_before
    assert (nested.apply(probs) == y).all()


def test_min_tags_emits_the_likeliest_tag():
    probs = np.array([[0.1, 0.3, 0.2], [0.9, 0.2, 0.7]])
    assert dec.tags_of(probs, 0.5).tolist() == [[0, 0, 0], [1, 0, 1]]
    assert dec.tags_of(probs, 0.5, min_tags=1).tolist() == [[0, 1, 0], [1, 0, 1]]
    assert dec.tags_of(probs, 0.5, min_tags=2).tolist() == [[0, 1, 1], [1, 0, 1]]


def test_ordinal_cut_points_where_the_best_values_are_known():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 4, 600)
    # compressed predictions (as an MSE model makes): grade g sits at 0.5g + 0.05..0.15, so rounding merges grades
    expected = 0.5 * grades + rng.uniform(0.05, 0.15, 600)
    rule = dec.fit_rule(grades, expected[:, None], "qwk", "ordinal", num=4)
    assert rule.kind == "cuts" and len(rule.values) == 3
    assert rule.oof_after == pytest.approx(1.0) and rule.oof_before < 0.9
    for g, cut in enumerate(rule.values, start=1):  # cut g lies between grade g-1's top and grade g's bottom
        assert expected[grades == g - 1].max() < cut <= expected[grades == g].min()
    assert (rule.apply(expected[:, None]) == grades).all()


def test_regression_clips_to_the_training_range_when_that_wins_nested():
    rng = np.random.default_rng(0)
    y = rng.uniform(1, 5, 500)
    pred = y + rng.normal(0, 0.5, 500)  # overshoots past 1 and 5
    rule = dec.fit_nested(y, pred[:, None], np.arange(500) % 5, "rmse", "regression")
    assert rule.kind == "clip" and rule.values == [pytest.approx(y.min()), pytest.approx(y.max())]
    assert rule.used and rule.oof_nested < rule.oof_before
    assert rule.apply(pred[:, None]).max() == pytest.approx(y.max())
    assert "clipping to the training range" in rule.describe() and "lower is better" in rule.describe()


@pytest.mark.parametrize("kind", ["single", "multilabel", "ordinal"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_on_noise_nested_is_no_better_than_plain_so_the_plain_decision_is_kept(kind, seed):
    """Noise where the plain decision is already the best there is, so a fitted rule can only fit the noise:
    single, balanced classes and a P(positive) that knows nothing of y; multilabel, every tag above 0.5 (all tags: samples-F1's
    best guess when nothing is known); ordinal, the true grade plus symmetric noise (rounding is right)."""
    rng = np.random.default_rng(seed)
    n = 300
    folds = np.arange(n) % 5
    if kind == "single":
        y, probs, metric = rng.permutation(np.arange(n) % 2), rng.dirichlet([1, 1], n), "accuracy"
    elif kind == "multilabel":
        y, probs, metric = (rng.random((n, 4)) < 0.3).astype(float), rng.uniform(0.5, 1, (n, 4)), "samples_f1"
    else:
        y = rng.integers(0, 4, n)
        probs, metric = (y + rng.normal(0, 0.7, n))[:, None], "qwk"
    rule = dec.fit_nested(y, probs, folds, metric, kind, num=4 if kind == "ordinal" else None)
    assert rule.oof_nested <= rule.oof_before and rule.oof_nested <= rule.oof_after
    assert rule.used is False
    assert (rule.apply(probs) == rule.plain(probs)).all()
    plain = dec.PLAIN[kind]
    assert f"{plain} used" in rule.describe() and f"{plain} {rule.oof_before:.4f}" in rule.describe()


def test_single_label_line_says_which_decision_is_used_and_why():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)
    p1 = np.clip(0.55 + 0.2 * (y - 0.5) + rng.normal(0, 0.08, len(y)), 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    rule = dec.fit_nested(y, probs, np.arange(2000) % 5, "accuracy")
    assert rule.used and rule.oof_nested > rule.oof_before
    assert rule.describe().startswith(f"threshold {rule.value:.4f}: OOF accuracy nested {rule.oof_nested:.4f} > "
                                      f"argmax {rule.oof_before:.4f}: rule used")
    assert (rule.apply(probs) == (p1 >= rule.value)).all()
    # a rule read back from an older decision.json (no `used`) is applied as before
    old = {k: v for k, v in rule.to_dict().items() if k not in ("used", "values", "min_tags")}
    assert (dec.DecisionRule(**old).apply(probs) == rule.fitted(probs)).all()


# ---- submissions ------------------------------------------------------------------------------------------------
def sample_of(tmp_path: Path, columns: dict, kind: str, names: list[str], value: str = "auto"):
    from foldvision.results.submission import Sample, infer_format

    path = tmp_path / "sample_submission.csv"
    frame = pl.DataFrame(columns)
    return Sample(frame, path, infer_format(frame, path, names, "auto", value, True, kind))


def written(tmp_path: Path, preds: Predictions, sample, rule=None) -> pl.DataFrame:
    from foldvision.results.submission import write_submission

    out = tmp_path / "sub.csv"
    write_submission(out, preds, sample, rule)
    return pl.read_csv(out, infer_schema=False)


def test_planet_tags_space_joined_by_the_rule_or_at_0_5(tmp_path):
    sample = sample_of(tmp_path, {"image_name": ["b", "a"], "tags": ["primary clear", "primary"]}, "multilabel", TAGS)
    assert sample.format.kind == "tags" and sample.format.tag_sep == " "
    preds = Predictions(["a", "b"], TAGS, np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4]]), kind="multilabel")
    got = written(tmp_path, preds, sample)
    assert got.rows() == [("b", ""), ("a", "agriculture clear")]  # the sample's id order; tags in names order
    rule = dec.DecisionRule("samples_f1", "tags", 0.5, [], 0.0, 0.0, values=[0.5, 0.7, 0.35], min_tags=1,
                            used=True)
    assert written(tmp_path, preds, sample, rule).rows() == [("b", "water"), ("a", "agriculture")]
    rule.used = False  # lost nested: tags at 0.5, still at least one
    assert written(tmp_path, preds, sample, rule).rows() == [("b", "water"), ("a", "agriculture clear")]


def test_one_probability_column_per_tag(tmp_path):
    sample = sample_of(tmp_path, {"id": ["a"], "water": ["0.5"], "agriculture": ["0.5"], "clear": ["0.5"]},
                       "multilabel", TAGS)
    assert sample.format.kind == "classes"
    preds = Predictions(["a"], TAGS, np.array([[0.9, 0.6, 0.1]]), kind="multilabel")
    assert written(tmp_path, preds, sample).rows() == [("a", "0.1", "0.9", "0.6")]


def test_regression_writes_one_number_clipped_by_the_rule_where_it_won(tmp_path):
    sample = sample_of(tmp_path, {"Id": ["a", "b"], "Pawpularity": ["50", "50"]}, "regression", ["Pawpularity"])
    assert sample.format.kind == "value"
    preds = Predictions(["a", "b"], ["Pawpularity"], np.array([[12.5], [104.0]]), kind="regression")
    assert written(tmp_path, preds, sample).rows() == [("a", "12.5"), ("b", "104.0")]
    rule = dec.DecisionRule("rmse", "clip", 0.0, [], 1.0, 0.9, 0.95, values=[1.0, 100.0], used=True)
    assert written(tmp_path, preds, sample, rule).rows() == [("a", "12.5"), ("b", "100.0")]


def test_ordinal_writes_one_integer_grade(tmp_path):
    sample = sample_of(tmp_path, {"id_code": ["a", "b", "c"], "diagnosis": ["0", "0", "0"]}, "ordinal",
                       ["0", "1", "2", "3", "4"])
    assert sample.format.kind == "grade"
    preds = Predictions(["a", "b", "c"], ["0", "1", "2", "3", "4"], np.array([[0.4], [2.6], [5.3]]), kind="ordinal")
    assert written(tmp_path, preds, sample).rows() == [("a", "0"), ("b", "3"), ("c", "4")]  # rounded, clipped
    rule = dec.DecisionRule("qwk", "cuts", 0.0, [], 0.5, 0.6, 0.6, values=[0.3, 1.0, 2.7, 3.5], used=True)
    assert written(tmp_path, preds, sample, rule).rows() == [("a", "1"), ("b", "2"), ("c", "4")]


@pytest.mark.parametrize(("columns", "kind", "names", "value", "message"), [
    ({"id": ["a"], "x": ["1"], "y": ["2"]}, "regression", ["score"], "auto",
     r"2 value columns; a regression submission has one \(the predicted value\): is data.task=regression right"),
    ({"id": ["a"], "cat": ["1"], "dog": ["2"]}, "multilabel", TAGS, "auto", "for 3 tags"),
    ({"id": ["a"], "grade": ["1"]}, "ordinal", ["0", "1"], "probability", "predict.value=probability: a ordinal"),
])
def test_a_sample_that_does_not_fit_the_task_is_one_line(tmp_path, columns, kind, names, value, message):
    with pytest.raises(UserError, match=message):
        sample_of(tmp_path, columns, kind, names, value)


def test_submissions_scored_per_kind_with_public_and_private_parts(tmp_path):
    from foldvision.results.submission import score_submission

    solution = tmp_path / "solution.csv"
    pl.DataFrame({"id": ["a", "b", "c", "d"], "tags": ["water clear", "clear", "agriculture", "clear"],
                  "Usage": ["Public", "Public", "Private", "Private"]}).write_csv(solution)
    sub = tmp_path / "sub.csv"
    pl.DataFrame({"id": ["d", "c", "b", "a"], "tags": ["clear", "agriculture", "water", "clear"]}).write_csv(sub)
    got = score_submission(sub, solution, "multilabel")
    assert got["Private"]["samples_f1"] == pytest.approx(1.0) and got["Private"]["n"] == 2
    # a: {water, clear} vs {clear}: F1 2/3; b: {clear} vs {water}: 0
    assert got["Public"]["samples_f1"] == pytest.approx((2 / 3 + 0) / 2)

    pl.DataFrame({"id": ["a", "b", "c", "d"], "score": ["1.0", "2.0", "3.0", "4.0"]}).write_csv(solution)
    pl.DataFrame({"id": ["a", "b", "c", "d"], "score": [1.5, 2.0, 3.0, 3.5]}).write_csv(sub)
    got = score_submission(sub, solution, "regression")["all"]
    assert got["rmse"] == pytest.approx(np.sqrt(0.125)) and got["mae"] == pytest.approx(0.25)

    pl.DataFrame({"id": ["a", "b", "c", "d"], "diagnosis": [0, 1, 2, 3]}).write_csv(sub)
    got = score_submission(sub, solution, "ordinal")["all"]  # solution grades 1..4 as numbers
    assert got["accuracy"] == 0.0 and got["mae"] == pytest.approx(1.0)


# ---- blends -----------------------------------------------------------------------------------------------------
N_BLEND, FOLDS = 120, 4


class Members:
    """Run folders of scored experiments of one task on a made-up split (as the stages write them), on a
    corpus whose one-column sample submission takes tags, a value or a grade."""

    def __init__(self, tmp_path: Path, kind: str, names: list[str], seed: int = 0):
        from conftest import make_corpus

        self.tmp, self.kind, self.names = tmp_path, kind, names
        self.corpus = make_corpus(tmp_path / "corpus", {"a": 2, "b": 2}, n_test=6, sample="label")
        self.rng = np.random.default_rng(seed)
        self.ids = [f"img{i:04d}" for i in range(N_BLEND)]
        self.folds = np.arange(N_BLEND) % FOLDS
        self.test_ids = [f"t{i:03d}" for i in range(6)]
        if kind == "multilabel":
            self.y = (self.rng.random((N_BLEND, len(names))) < 0.4).astype(float)
            self.labels = label_strings(self.y, names)
        else:
            self.y = self.rng.uniform(1, 5, N_BLEND)
            self.labels = [str(float(v)) for v in self.y]

    def preds(self, noise: float) -> np.ndarray:
        if self.kind == "multilabel":
            return np.clip(0.5 + 0.3 * (self.y - 0.5) + self.rng.normal(0, noise, self.y.shape), 0.01, 0.99)
        return (self.y + self.rng.normal(0, noise, N_BLEND))[:, None]

    def member(self, name: str, noise: float, kind: str | None = None, metric: str = "auto") -> Path:
        from conftest import write_config

        from foldvision.config import load_config
        from foldvision.run import Run
        from foldvision.targets import Task

        kind = kind or self.kind
        cfg = load_config(str(write_config(self.tmp / "configs", name, self.corpus, cv={"n_folds": FOLDS},
                                           train={"metric": metric})))
        run = Run(self.tmp / "runs" / name)
        run.save_config(cfg)
        names = self.names if kind == self.kind else ["0", "1"]
        labels = self.labels if kind == self.kind else [str(i % 2) for i in range(N_BLEND)]
        run.write_split(pl.DataFrame({"id": self.ids, "path": [f"train/{i}.png" for i in self.ids], "label": labels,
                                      "fold": self.folds}), Task(kind, tuple(names)))
        probs = self.preds(noise) if kind == self.kind else np.full((N_BLEND, 2), 0.5)
        pred = Predictions(self.ids, names, probs, self.folds, labels, kind)
        for k in range(FOLDS):
            run.write_fold_oof(k, pred.take(self.folds == k))
        run.write_oof(pred)
        test = probs[:6] if kind == self.kind else np.full((6, 2), 0.5)
        run.write_test(Predictions(self.test_ids, names, test, kind=kind))
        run.write_scores(score_oof(pred, resolve_metric(metric, kind)))
        return run.root

    def blend(self, members: list[Path], method: str) -> dict:
        from foldvision.commands.ensemble import blend

        return blend(self.tmp / "runs" / "blend", members, method, out=self.tmp / "sub.csv")


def test_a_regression_blend_stacks_by_ridge_writes_values_and_refuses_rank(tmp_path):
    from foldvision.run import Run

    toy = Members(tmp_path, "regression", ["score"])
    good, bad = toy.member("good", 0.2), toy.member("bad", 1.5)
    scores = toy.blend([good, bad], "stack")
    assert scores["kind"] == "regression" and scores["ensemble"]["metric"] == "rmse"
    record = Run(tmp_path / "runs" / "blend").read_ensemble()
    assert record["stacker"]["model"] == "ridge" and record["weights"]["good"] > record["weights"]["bad"]
    # the ridge blend beats the worse member and is in the target's units
    assert scores["oof"]["rmse"] < Run(bad).read_scores()["oof"]["rmse"]
    sub = pl.read_csv(tmp_path / "sub.csv")
    assert sub.columns == ["image_id", "label"] and sub["label"].dtype == pl.Float64
    with pytest.raises(UserError, match=r"^METHOD=rank blends ranks, which are not probabilities, and a regression "
                                        r"blend must stay in the target's units; use METHOD=mean"):
        toy.blend([good, bad], "rank")


def test_a_multilabel_blend_climbs_the_tag_metric_and_writes_tags(tmp_path):
    from foldvision.run import Run

    toy = Members(tmp_path, "multilabel", TAGS)
    members = [toy.member(f"m{i}", 0.15 + 0.1 * i, metric="samples_f2") for i in range(3)]
    scores = toy.blend(members, "hill_climb")
    info = scores["ensemble"]
    assert info["metric"] == "samples_f2" and set(info["nested"]) == set(score(toy.y, toy.preds(0.1), "multilabel"))
    assert "cooccurrence" in scores and scores["decision"]["kind"] == "tags"
    blend_dir = Run(tmp_path / "runs" / "blend")
    assert blend_dir.decision_json.is_file()
    tags = pl.read_csv(tmp_path / "sub.csv")["label"].fill_null("").to_list()
    assert all(set(t.split()) <= set(TAGS) for t in tags)
    with pytest.raises(UserError, match="the submission holds tags, which would be decided on ranks"):
        toy.blend(members, "rank")
    stacked = toy.blend(members, "stack")
    record = blend_dir.read_ensemble()
    assert record["stacker"]["model"] == "per_tag_logistic" and np.array(record["stacker"]["coef"]).shape == (3, 3)
    assert stacked["oof"]["map"] > 0.8


def test_members_must_share_the_task(tmp_path):
    toy = Members(tmp_path, "regression", ["score"])
    reg, single = toy.member("reg", 0.3), toy.member("single", 0.3, kind="single")
    with pytest.raises(UserError, match=r"^member .*single is a single task and .*reg a regression one: members "
                                        r"must share the task \(data.task\)$"):
        toy.blend([reg, single], "mean")


def test_stackers_read_back_from_their_record_predict_the_same():
    from foldvision.results.blending import stack, stacker_from_record

    rng = np.random.default_rng(0)
    y, _ = toy_multilabel(200)
    inputs = [np.clip(y * 0.6 + rng.random(y.shape) * 0.4, 0.01, 0.99) for _ in range(2)]
    tagged = stack(inputs, y, "multilabel")
    values = [rng.normal(size=(50, 1)) for _ in range(3)]
    target = values[0][:, 0] * 2 + 1
    ridge = stack(values, target, "regression")
    assert ridge.apply(values)[:, 0] == pytest.approx(target, abs=0.2)
    for fitted, xs, model in ((tagged, inputs, "per_tag_logistic"), (ridge, values, "ridge")):
        s = fitted.stacker
        record = {"model": model, "coef": (s.coef if model != "ridge" else s.coef_).tolist(),
                  "intercept": s.intercept.tolist() if model != "ridge" else float(s.intercept_)}
        again = type(fitted)(fitted.method, fitted.weights, stacker=stacker_from_record(record, TAGS),
                             kind=fitted.kind)
        np.testing.assert_allclose(again.apply(xs), fitted.apply(xs))


def test_single_label_rank_is_refused_for_a_label_submission_and_log_loss():
    from foldvision.results.blending import check_rank

    with pytest.raises(UserError, match="the submission holds labels, which would be decided on ranks"):
        check_rank("single", "auc", "label")
    with pytest.raises(UserError, match="train.metric=log_loss scores probabilities, not their order"):
        check_rank("single", "log_loss", None)
    check_rank("single", "auc", None)  # probabilities scored by AUC: ranks are what AUC reads
    check_rank("multilabel", "map", None)


# ---- the results pages ------------------------------------------------------------------------------------------
def scored(tmp_path: Path, kind: str, capsys=None, **train) -> tuple[Path, dict, str]:
    """A run folder of `kind` with every fold's OOF table (no training), scored by the score stage: (run folder,
    scores, what the stage printed)."""
    from foldvision.stages.score import run as score_run

    names = {"multilabel": TAGS, "regression": ["score"], "ordinal": ["0", "1", "2", "3"]}[kind]
    toy = Members(tmp_path, "multilabel" if kind == "multilabel" else "regression", names)
    if kind == "ordinal":
        toy.kind, toy.y = "ordinal", toy.rng.integers(0, 4, N_BLEND)
        toy.labels = [str(g) for g in toy.y]
        toy.preds = lambda noise: (0.6 * toy.y + 0.3 + toy.rng.normal(0, noise, N_BLEND))[:, None]
    root = toy.member("exp", 0.2, metric=train.get("metric", "auto"))
    if capsys is not None:
        capsys.readouterr()
    scores = score_run(root)
    printed = capsys.readouterr() if capsys is not None else None
    return root, scores, printed.out + printed.err if printed else ""


def test_the_score_stage_prints_each_kinds_view_and_the_decision_line(tmp_path, capsys):
    root, scores, out = scored(tmp_path / "ml", "multilabel", capsys, metric="samples_f2")
    assert "per tag" in out and "tag co-occurrence" in out and "threshold" in out
    assert "tags by per-tag thresholds" in out and "nested" in out and "used" in out
    assert scores["decision"]["kind"] == "tags" and len(scores["decision"]["values"]) == len(TAGS)
    from foldvision.results.compare import per_class

    table = per_class(scores)  # each tag's threshold: the fitted one where the rule won nested, else 0.5
    used = scores["decision"]["used"]
    expected = [f"{t:.2f}" for t in scores["decision"]["values"]] if used else ["0.50"] * len(TAGS)
    assert table.columns[-1].startswith("threshold") and table.column(table.columns[-1]) == expected

    root, scores, out = scored(tmp_path / "reg", "regression", capsys)
    assert "residuals" in out and "per class" not in out and "confusion" not in out
    assert "values by clipping to the training range" in out and scores["metric"] == "rmse"

    root, scores, out = scored(tmp_path / "ord", "ordinal", capsys)
    assert "per grade" in out and "confusion matrix of the rounded grade" in out
    # the compressed predictions (0.6 g + 0.3) round grade 3 down: fitted cut-points win, nested too
    assert scores["decision"]["kind"] == "cuts" and scores["decision"]["used"] is True
    assert "grades by cut-points" in out and "rule used" in out


@pytest.mark.parametrize(("kind", "plots", "sections"), [
    ("multilabel", {"learning_curves", "per_class", "cooccurrence"}, ["per tag", "tag co-occurrence"]),
    ("regression", {"learning_curves", "scatter"}, ["residuals (prediction - truth)", "Predicted against true"]),
    ("ordinal", {"learning_curves", "per_class", "confusion"}, ["per grade", "confusion matrix of the rounded"]),
])
def test_plots_and_the_report_page_per_kind(tmp_path, kind, plots, sections):
    from foldvision.commands.report import build
    from foldvision.results.figures import write_plots

    root, scores, _ = scored(tmp_path, kind)
    assert set(write_plots(root)) == plots
    page = build(root)
    for section in sections:
        assert section in page
    assert "Most confidently wrong" not in page


def test_evaluate_scores_a_tag_submission_by_public_and_private_usage(tmp_path, capsys):
    from conftest import stage

    solution, sub = tmp_path / "solution.csv", tmp_path / "sub.csv"
    pl.DataFrame({"image_name": ["a", "b"], "tags": ["sea sunset", "sea"], "Usage": ["Public", "Private"]}
                 ).write_csv(solution)
    pl.DataFrame({"image_name": ["a", "b"], "tags": ["sea", "sea"]}).write_csv(sub)
    code, out = stage(capsys, "evaluate", str(sub), str(solution), "--task", "multilabel", stdout=True)
    assert code == 0, out
    assert "Public: n 1  samples_f1 0.6667" in out and "Private: n 1  samples_f1 1.0000" in out


def test_evaluate_reads_the_task_from_the_solution_as_check_reads_a_label_table(tmp_path, capsys):
    from conftest import stage

    solution, sub = tmp_path / "solution.csv", tmp_path / "sub.csv"
    pl.DataFrame({"image_name": ["a", "b", "c"], "tags": ["sea sunset", "sea", "sunset"]}).write_csv(solution)
    pl.DataFrame({"image_name": ["a", "b", "c"], "tags": ["sea", "sea", "sunset"]}).write_csv(sub)
    code, out = stage(capsys, "evaluate", str(sub), str(solution), stdout=True)
    assert code == 0, out
    assert "solution.csv: column 'tags' read as multilabel (--task to change)" in out
    assert "all: n 3  samples_f1 0.8889" in out  # 2/3, 1, 1: not 'accuracy' of tag strings as classes
    code, out = stage(capsys, "evaluate", str(sub), str(solution), "--task", "single", stdout=True)
    assert code == 0 and "read as" not in out and "accuracy 0.6667" in out


def test_f_scores_of_a_single_tag():
    from foldvision.results.metrics import fbeta_tags

    y, tags = np.array([[1], [0], [1], [0]]), np.array([[1], [0], [0], [1]])
    assert fbeta_tags(y, tags, "samples") == 0.5  # right on 2 of 4 images
    assert fbeta_tags(y, tags, "macro") == fbeta_tags(y, tags, "micro") == pytest.approx(0.5)


@pytest.mark.parametrize("kind", ["multilabel", "regression", "ordinal"])
def test_wandb_logs_each_kinds_view_offline(tmp_path, kind):
    from test_tracking import logged_table, read_offline_run

    from foldvision.results.tracking import create_tracker
    from foldvision.run import Run

    root, scores, _ = scored(tmp_path, kind)
    tracker = create_tracker("wandb", root, f"{kind}-oof", "oof", {})
    try:
        tracker.log_oof(scores, Run(root).read_oof())
    finally:
        tracker.finish()
    run = read_offline_run(next((root / "wandb").glob("offline-run-*")))
    for name, value in scores["oof"].items():
        assert run["summary"][f"oof_{name}"] == pytest.approx(value, nan_ok=True), name
    if kind == "multilabel":
        table = logged_table(run, "cooccurrence").set_index("tag")
        assert table.loc[TAGS, TAGS].to_numpy().tolist() == scores["cooccurrence"]
    elif kind == "regression":
        table = logged_table(run, "predicted_vs_true_table")
        assert table["predicted"].to_numpy() == pytest.approx(Run(root).read_oof().probs[:, 0])
    else:
        cells = logged_table(run, "confusion_matrix_table")
        matrix = cells.pivot(index="Actual", columns="Predicted", values="nPredictions")
        names = scores["classes"]
        assert matrix.reindex(index=names, columns=names, fill_value=0).to_numpy().tolist() == \
            scores["confusion_matrix"]


@pytest.mark.parametrize("kind", ["multilabel", "ordinal", "regression"])
def test_predict_averages_the_folds_and_writes_the_samples_format_by_the_judged_rule(tmp_path, kind):
    import json

    from foldvision.run import Run
    from foldvision.stages.predict import main as predict_main

    root, scores, _ = scored(tmp_path, kind)
    run = Run(root)
    test = run.read_test(run.read_task())
    for k in range(FOLDS):  # each fold model's test predictions: the mean is test.csv's
        run.write_test(Predictions(test.ids, test.classes, test.probs + (k - 1.5) * 0.01, kind=kind), k)
    out = tmp_path / "sub.csv"
    predict_main([str(root), "--out", str(out)])
    rule = dec.DecisionRule(**json.loads(run.decision_json.read_text()))
    assert rule.to_dict() == scores["decision"]  # the score stage's rule, refitted alike
    mean = run.read_test(run.read_task())
    np.testing.assert_allclose(mean.probs, test.probs)
    decided = rule.apply(mean.probs)
    got = pl.read_csv(out, infer_schema=False)["label"].fill_null("").to_list()
    if kind == "multilabel":
        assert got == [" ".join(t for t, v in zip(TAGS, row) if v) for row in decided]
    elif kind == "ordinal":
        assert got == [str(g) for g in decided]
    else:
        assert [float(v) for v in got] == pytest.approx(decided)
