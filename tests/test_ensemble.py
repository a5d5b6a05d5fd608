"""foldvision.commands.ensemble: blends of scored run folders made directly through `Run` (no training here).

Toy members whose best blend is known: a perfect member and a noise member (hill climbing keeps only the
perfect one), two equally noisy views of one signal (their average beats each), members of pure noise (the
plain OOF score flatters the blend; the nested one does not).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from foldvision.targets import Task
from foldvision.config import load_config
from foldvision.results.decision import fit_nested, fit_rule, nested_rule_score
from foldvision.commands import report
from foldvision.results.blend import summary_tables
from foldvision.commands.ensemble import blend
from foldvision.results.blending import METHODS, hill_climb, split_digest
from foldvision.errors import UserError
from foldvision.results.metrics import score, score_oof
from foldvision.run import Predictions, Run

from conftest import make_corpus, stage, write_config

N, K, N_TEST = 240, 4, 6


class Toy:
    """A corpus (for its sample submission and test ids) and a made-up split of N training ids in K folds."""

    def __init__(self, tmp_path: Path, classes: list[str], sample: str, seed: int = 0):
        self.tmp, self.classes = tmp_path, classes
        self.corpus = make_corpus(tmp_path / "corpus", {c: 2 for c in classes}, n_test=N_TEST, sample=sample)
        self.rng = np.random.default_rng(seed)
        self.ids = [f"img{i:04d}" for i in range(N)]
        self.y = self.rng.integers(0, len(classes), N)
        self.y[: len(classes)] = np.arange(len(classes))  # every class present
        self.labels = [classes[i] for i in self.y]
        self.folds = np.arange(N) % K
        self.test_ids = [f"t{i:03d}" for i in range(N_TEST)]

    def probs(self, skill: float, n: int | None = None, y: np.ndarray | None = None) -> np.ndarray:
        """Softmax of noise plus `skill` on the true class (0: pure noise)."""
        y = self.y if y is None else y
        logits = self.rng.normal(size=(len(y), len(self.classes))) + skill * np.eye(len(self.classes))[y]
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def perfect(self, p_true: float = 0.9) -> np.ndarray:
        rest = (1 - p_true) / (len(self.classes) - 1)
        return np.where(np.eye(len(self.classes))[self.y] == 1, p_true, rest)

    def test_probs(self) -> np.ndarray:
        return self.probs(1.0, y=np.arange(N_TEST) % len(self.classes))

    def member(self, name: str, oof: np.ndarray, test: np.ndarray | None = None, *, ids=None, labels=None,
               folds=None, classes=None, test_ids=None, metric: str = "auto") -> Path:
        """runs/<name>: config, split, fold and joined OOF tables, test.csv and scores, as the stages write them."""
        ids, labels = ids or self.ids, labels or self.labels
        folds, classes = self.folds if folds is None else folds, classes or self.classes
        cfg = load_config(str(write_config(self.tmp / "configs", name, self.corpus, cv={"n_folds": K},
                                           train={"metric": metric})))
        run = Run(self.tmp / "runs" / name)
        run.save_config(cfg)
        run.write_split(pl.DataFrame({"id": ids, "path": [f"train/{i}.png" for i in ids], "label": labels,
                                      "fold": folds}), Task("single", tuple(classes)))
        pred = Predictions(ids, classes, oof, folds, labels)
        for k in range(K):
            run.write_fold_oof(k, pred.take(folds == k))
        run.write_oof(pred)
        run.write_test(Predictions(test_ids or self.test_ids, classes, self.test_probs() if test is None else test))
        run.write_scores(score_oof(pred, "auc" if metric == "auto" else metric))
        return run.root

    @property
    def blend_dir(self) -> Path:
        return self.tmp / "runs" / "blend"

    @property
    def out(self) -> Path:
        return self.tmp / "submissions" / "blend.csv"

    def blend(self, members: list[Path], method: str = "hill_climb", **kw) -> dict:
        return blend(self.blend_dir, members, method, out=self.out, **kw)


@pytest.fixture
def toy(tmp_path) -> Toy:
    return Toy(tmp_path, ["0", "1"], "probability")


def blended(run_dir: Path) -> tuple[Predictions, Predictions]:
    run = Run(run_dir)
    return run.read_oof(), run.read_test(run.read_task())


# ---- methods on toys with a known answer ---------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["auc", "log_loss"])
def test_hill_climbing_keeps_only_the_perfect_member(toy, metric):
    good_test = toy.test_probs()
    noise = toy.member("noise", toy.probs(0.0), metric=metric)
    good = toy.member("good", toy.perfect(), good_test, metric=metric)
    scores = toy.blend([noise, good])
    record = Run(toy.blend_dir).read_ensemble()
    assert record["weights"] == {"noise": 0.0, "good": 1.0}
    assert record["picks"] == ["good"]  # started from the best member; adding any member made it no better
    assert all(w == {"noise": 0.0, "good": 1.0} for w in record["fold_weights"].values())
    oof, test = blended(toy.blend_dir)
    np.testing.assert_allclose(oof.probs, toy.perfect())
    np.testing.assert_allclose(test.probs, good_test)
    info = scores["ensemble"]
    assert info["best_member"]["name"] == "good" and info["metric"] == metric
    assert info["oof"] == info["oof_nested"] == pytest.approx(score(toy.y, toy.perfect())[metric])


def test_two_independent_views_of_one_signal_are_averaged(toy):
    a = toy.member("a", toy.probs(1.5))
    b = toy.member("b", toy.probs(1.5))
    scores = toy.blend([a, b], rounds=20)
    weights = Run(toy.blend_dir).read_ensemble()["weights"]
    assert 0.25 <= weights["a"] <= 0.75 and weights["a"] + weights["b"] == pytest.approx(1.0)
    info = scores["ensemble"]
    assert info["oof"] > info["best_member"]["oof"]["auc"]
    assert info["oof_nested"] > info["best_member"]["oof"]["auc"]  # a real gain survives nesting

    toy.blend([a, b], "mean")
    assert Run(toy.blend_dir).read_ensemble()["weights"] == {"a": 0.5, "b": 0.5}
    oof, _ = blended(toy.blend_dir)
    a_oof, b_oof = Run(a).read_oof(), Run(b).read_oof()
    np.testing.assert_allclose(oof.probs, (a_oof.probs + b_oof.probs) / 2)


def test_hill_climbing_is_bounded_by_rounds(toy):
    inputs = [toy.probs(1.0) for _ in range(4)]
    fitted = hill_climb(inputs, toy.y, "auc", rounds=2)
    assert len(fitted.picks) <= 3 and fitted.weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("method", METHODS)
def test_a_blend_of_one_member_is_that_member(toy, method):
    test = toy.test_probs()
    only = toy.member("only", toy.probs(1.0), test)
    scores = toy.blend([only], method)
    member_scores = Run(only).read_scores()
    oof, blend_test = blended(toy.blend_dir)
    member = Run(only).read_oof()
    assert Run(toy.blend_dir).read_ensemble()["weights"] == {"only": 1.0}
    if method in ("mean", "hill_climb"):  # the same probabilities, so every score is the same
        np.testing.assert_allclose(oof.probs, member.probs)
        np.testing.assert_allclose(blend_test.probs, test)
        assert scores["oof"] == pytest.approx(member_scores["oof"])
        for got, expected in zip(scores["folds"], member_scores["folds"], strict=True):
            assert got == pytest.approx(expected)
    else:  # ranks and a logistic calibration change the numbers but not their order: the AUC stays
        assert scores["oof"]["auc"] == pytest.approx(member_scores["oof"]["auc"])
        order = np.argsort(test[:, 1], kind="stable")
        assert np.all(np.diff(blend_test.probs[order, 1]) >= -1e-12)
    assert scores["ensemble"]["oof"] == pytest.approx(scores["oof"]["auc"])


@pytest.mark.parametrize("method", ["hill_climb", "stack"])
def test_weights_fitted_on_noise_flatter_the_plain_score_and_not_the_nested_one(toy, method):
    members = [toy.member(f"noise{i}", toy.probs(0.0)) for i in range(8)]
    scores = toy.blend(members, method)
    info = scores["ensemble"]
    assert info["oof_nested"] < info["oof"]
    if method == "hill_climb":  # it starts from the best member and adds what improves on it: on 8 noise members
        assert info["oof"] > info["best_member"]["oof"]["auc"]  # some addition always flatters the fit
    assert info["nested"]["auc"] == info["oof_nested"]


@pytest.mark.parametrize("method", ["mean", "rank"])
def test_a_method_with_nothing_to_fit_scores_the_same_nested(toy, method):
    members = [toy.member(f"m{i}", toy.probs(0.8)) for i in range(3)]
    info = toy.blend(members, method)["ensemble"]
    assert info["oof_nested"] == pytest.approx(info["oof"])


def test_multiclass_methods_give_probabilities(tmp_path):
    toy = Toy(tmp_path, ["cat", "dog", "owl"], "classes")
    members = [toy.member(f"m{i}", toy.probs(1.0 + i)) for i in range(3)]
    for method in METHODS:
        scores = toy.blend(members, method)
        oof, test = blended(toy.blend_dir)
        for probs in (oof.probs, test.probs):
            assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1.0)
        y = np.array([toy.classes.index(label) for label in oof.labels])
        assert scores["oof"]["auc"] == pytest.approx(roc_auc_score(y, oof.probs, multi_class="ovr"))
        assert scores["oof"]["auc"] > 0.6  # members of skill 1-3 on 3 classes: well above chance
    record = Run(toy.blend_dir).read_ensemble()
    assert record["stacker"]["features"] == "log-probabilities"
    assert np.array(record["stacker"]["coef"]).shape == (3, 9)  # multinomial: a row per class


# ---- the run folder it writes -------------------------------------------------------------------------------
def test_the_blend_is_a_run_folder_like_any_experiment(toy):
    a, b = toy.member("a", toy.probs(1.0)), toy.member("b", toy.probs(0.5))
    scores = toy.blend([a, b])
    run = Run(toy.blend_dir)
    cfg = run.load_config()
    assert cfg.name == "blend" and cfg.data.dir == str(toy.corpus) and run.is_scored()
    split = run.read_split()
    assert split.ids == toy.ids and split.classes == toy.classes
    assert split_digest(split) == split_digest(Run(a).read_split())
    oof = run.read_oof()
    assert set(scores) - {"ensemble"} == set(score_oof(oof, "auc")) | {"decision"}  # the score stage's schema
    assert run.read_scores() == json.loads(json.dumps(scores))
    assert not [p for p in run.root.glob("fold*") if p.is_dir()]

    tables = summary_tables(run)
    assert list(tables["members"]["member"]) == ["a", "b"]
    assert tables["members"]["weight"].sum() == pytest.approx(1.0)
    assert len(tables["scores"]) == 3 and len(tables["decision"]) == 3
    corr = tables["correlation"].to_numpy()
    assert corr.shape == (2, 2) and np.allclose(np.diag(corr), 1.0) and np.allclose(corr, corr.T)
    assert list(tables["fold_weights"]["without fold"]) == list(range(K))

    toy.blend([a, b], "stack")  # blending again into the same folder replaces the blend
    assert Run(toy.blend_dir).read_ensemble()["method"] == "stack"


def test_the_report_page_of_a_blend_shows_members_weights_scores_and_correlations(toy):
    a, b = toy.member("a", toy.probs(1.0)), toy.member("b", toy.probs(0.5))
    scores = toy.blend([a, b])
    page = report.build(toy.blend_dir)
    blend_part = page[page.index('<h2 id="blend">'):page.index('<h2 id="per-class">')]
    info = scores["ensemble"]
    for title in ("hill_climb of 2 members", "best member", "nested", "weights fitted without each fold",
                  "correlation of the members"):
        assert title in blend_part
    for member in info["members"]:  # each member's name, weight and OOF AUC as the table prints them
        row = blend_part[blend_part.index(f"<td>{member['name']}</td>"):]
        row = row[:row.index("</tr>")]
        assert f"<td>{member['weight']:.4f}</td>" in row and f"<td>{member['oof']['auc']:.4f}</td>" in row
    assert f"{info['oof_nested']:.4f}" in blend_part


def test_the_leaderboard_tells_a_blend_by_its_members_not_by_its_first_members_config(toy):
    from foldvision.commands.leaderboard import build as leaderboard

    a = toy.member("a", toy.probs(1.0))
    b = toy.member("b", toy.probs(0.5))
    Run(b).save_config(load_config(str(toy.tmp / "configs" / "b.yaml"), ["train.seed=7"]))
    toy.blend([a, b], "mean")
    [(_, _, table)] = leaderboard(toy.tmp / "runs", toy.tmp / "submissions")[0]
    differs = dict(zip(table["experiment"], table["differs"]))
    assert differs["blend"] == "mean blend of a 0.50, b 0.50"
    assert differs["a"] == "train.seed=42" and differs["b"] == "train.seed=7"


def test_the_report_page_of_an_experiment_has_no_blend_part(toy):
    a = toy.member("a", toy.probs(1.0))
    assert '<h2 id="blend">' not in report.build(a)


def test_decision_rule_refitted_on_the_blend_and_scored_nested(toy):
    a, b = toy.member("a", toy.probs(1.0)), toy.member("b", toy.probs(1.0))
    info = toy.blend([a, b])["ensemble"]["decision"]
    oof, _ = blended(toy.blend_dir)
    rule = fit_rule(oof.y, oof.probs, "auc")
    assert info["metric"] == "accuracy" and info["fitted"] == pytest.approx(rule.oof_after)
    assert info["nested"] == pytest.approx(nested_rule_score(oof.y, oof.probs, oof.fold, "auc"))


# ---- the submission, in the sample's format --------------------------------------------------------------------
@pytest.mark.parametrize("classes, sample", [(["0", "1"], "probability"), (["cat", "dog", "owl"], "classes"),
                                             (["cat", "dog", "owl"], "label"), (["neg", "pos"], "label")])
def test_the_submission_has_the_samples_format(tmp_path, classes, sample):
    toy = Toy(tmp_path, classes, sample)
    members = [toy.member(f"m{i}", toy.probs(1.0 + i)) for i in range(2)]
    toy.blend(members)
    expected = pd.read_csv(toy.corpus / "sample_submission.csv", dtype=str)
    got = pd.read_csv(toy.out, dtype=str, keep_default_na=False)
    assert list(got.columns) == list(expected.columns)
    assert got["image_id"].tolist() == expected["image_id"].tolist()
    _, test = blended(toy.blend_dir)
    decision = Run(toy.blend_dir).decision_json
    if sample == "probability":
        np.testing.assert_allclose(got["target"].astype(float), test.probs[:, 1])
        assert not decision.exists()
    elif sample == "classes":
        for i, c in enumerate(classes):
            np.testing.assert_allclose(got[c].astype(float), test.probs[:, i])
    else:  # labels by the rule refitted on the blended OOF (where it beats argmax nested), saved beside the blend
        oof, _ = blended(toy.blend_dir)
        rule = fit_nested(oof.y, oof.probs, oof.fold, "auc")
        saved = json.loads(decision.read_text())
        assert saved["value"] == pytest.approx(rule.value) and saved["used"] == rule.used
        assert got["label"].tolist() == [classes[i] for i in rule.apply(test.probs)]


# ---- members that cannot be blended ---------------------------------------------------------------------------
def _without(path: Path) -> None:
    path.unlink()


MISMATCHES = {
    "another split": lambda toy: toy.member("b", toy.probs(1.0), folds=(np.arange(N) + 1) % K),
    "other training ids": lambda toy: toy.member("b", toy.probs(1.0), ids=[*toy.ids[:-1], "elsewhere"]),
    "has classes": lambda toy: toy.member("b", toy.probs(1.0), classes=["neg", "pos"],
                                          labels=[["neg", "pos"][i] for i in toy.y]),
    "labels 'img0000'": lambda toy: toy.member("b", toy.probs(1.0), labels=["1", *toy.labels[1:]]),
    "test.csv has other ids": lambda toy: toy.member("b", toy.probs(1.0), test_ids=[f"u{i}" for i in range(N_TEST)]),
    "no test predictions": lambda toy: _without(Run(toy.member("b", toy.probs(1.0))).test_csv),
    "unfinished (no scores.json)": lambda toy: _without(Run(toy.member("b", toy.probs(1.0))).scores_json),
    "unfinished (no oof.csv)": lambda toy: _without(Run(toy.member("b", toy.probs(1.0))).oof_csv),
    "not a run folder": lambda toy: (toy.tmp / "runs" / "b").mkdir(parents=True),
}


@pytest.mark.parametrize("problem", MISMATCHES)
def test_a_member_that_does_not_fit_is_one_line_naming_it(toy, problem):
    a = toy.member("a", toy.probs(1.0))
    MISMATCHES[problem](toy)
    b = toy.tmp / "runs" / "b"
    with pytest.raises(UserError) as e:
        toy.blend([a, b])
    message = str(e.value)
    assert problem in message and f"member {b}" in message and "\n" not in message
    assert not toy.blend_dir.exists() and not toy.out.exists()  # checked before anything is written


def test_the_blend_never_writes_into_a_member_or_a_trained_run(toy):
    a = toy.member("a", toy.probs(1.0))
    with pytest.raises(UserError, match="is one of the members"):
        blend(a, [a])
    trained = toy.member("trained", toy.probs(1.0))
    with pytest.raises(UserError, match=r"holds a trained experiment \(fold0/\)"):
        blend(trained, [a], out=toy.out)
    with pytest.raises(UserError, match="named twice"):
        toy.blend([a, a])


# ---- nested_rule_score (decision.py) ---------------------------------------------------------------------------
def test_nested_rule_score_is_not_flattered_by_noise():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p1 = rng.random(400)  # no information: any threshold that helps on these rows is luck
    probs = np.stack([1 - p1, p1], axis=1)
    folds = np.arange(400) % 5
    rule = fit_rule(y, probs, "accuracy")
    nested = nested_rule_score(y, probs, folds, "accuracy")
    assert nested < rule.oof_after
    assert np.isnan(nested_rule_score(y, probs, np.zeros(400, dtype=int), "accuracy"))  # one fold: no honest fit


def test_nested_rule_score_keeps_a_real_shift():
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.2).astype(int)
    p1 = np.clip(0.55 + 0.2 * (y - 0.5) + rng.normal(0, 0.08, len(y)), 0, 1)  # scores centred above 0.5
    probs = np.stack([1 - p1, p1], axis=1)
    rule = fit_rule(y, probs, "accuracy")
    nested = nested_rule_score(y, probs, np.arange(1000) % 5, "accuracy")
    assert rule.oof_before < nested <= rule.oof_after + 1e-9


# ---- the command -------------------------------------------------------------------------------------------------
def test_the_command(toy, capsys):
    a, b = toy.member("a", toy.probs(1.0)), toy.member("b", toy.probs(1.2))
    code, out = stage(capsys, "ensemble", str(toy.blend_dir), "--members", str(a), str(b), "--method", "rank",
                      "--out", str(toy.out), stdout=True)
    assert code == 0, out
    assert "nested" in out and "correlation" in out and toy.out.is_file()
    assert Run(toy.blend_dir).read_ensemble()["method"] == "rank"
    code, err = stage(capsys, "ensemble", str(toy.blend_dir), "--members", str(a), str(toy.tmp / "runs" / "nope"),
                      "--out", str(toy.out))
    assert code == 2 and err.startswith("error: member") and err.count("\n") == 1


def test_test_predictions_that_miss_the_samples_ids_write_nothing(toy):
    other = [f"u{i}" for i in range(N_TEST)]
    members = [toy.member(name, toy.probs(1.0), test_ids=other) for name in ("a", "b")]
    with pytest.raises(UserError, match="no prediction for 6 sample submission ids"):
        toy.blend(members)
    assert not toy.blend_dir.exists() and not toy.out.exists()
