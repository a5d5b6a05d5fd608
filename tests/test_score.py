import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

from foldvision.run import Predictions
from foldvision.results.metrics import score_oof


def predictions(oof: pd.DataFrame, classes: list[str]) -> Predictions:
    return Predictions(oof["id"].tolist(), classes, oof[[f"prob_{c}" for c in classes]].to_numpy(),
                       oof["fold"].to_numpy(), oof["label"].tolist())


def fake_oof(num_classes: int, n: int = 120, folds: int = 3, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(num_classes)]
    y = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) + 2.0 * np.eye(num_classes)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    frame = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "fold": np.arange(n) % folds,
                          "label": [classes[k] for k in y]})
    return pd.concat([frame, pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])], axis=1), classes


def test_binary_oof_scores_equal_sklearn():
    oof, classes = fake_oof(2)
    scores = score_oof(predictions(oof, classes), "auc")
    y = (oof["label"] == "c1").astype(int)
    assert scores["task"] == "binary"
    assert scores["oof"]["auc"] == pytest.approx(roc_auc_score(y, oof["prob_c1"]))
    assert scores["oof"]["accuracy"] == pytest.approx(accuracy_score(y, oof["prob_c1"] > 0.5))
    part = oof[oof["fold"] == 1]
    assert scores["folds"][1]["auc"] == pytest.approx(roc_auc_score(part["label"] == "c1", part["prob_c1"]))


def test_multiclass_oof_scores_equal_sklearn():
    oof, classes = fake_oof(4)
    scores = score_oof(predictions(oof, classes), "auc")
    y = oof["label"].map({c: i for i, c in enumerate(classes)})
    probs = oof[[f"prob_{c}" for c in classes]].to_numpy()
    assert scores["task"] == "multiclass"
    assert scores["oof"]["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert scores["oof"]["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    assert scores["oof"]["log_loss"] == pytest.approx(log_loss(y, probs))
    assert np.array(scores["confusion_matrix"]).sum() == len(oof)


def test_per_class_mean_and_std_over_folds():
    oof, classes = fake_oof(3)
    scores = score_oof(predictions(oof, classes), "auc")
    recalls = []
    for _, part in oof.groupby("fold"):
        pred = part[[f"prob_{c}" for c in classes]].to_numpy().argmax(1)
        truth = part["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        recalls.append(((pred == 0) & (truth == 0)).sum() / (truth == 0).sum())
    entry = scores["per_class"]["c0"]
    assert entry["recall_mean"] == pytest.approx(np.mean(recalls))
    assert entry["recall_std"] == pytest.approx(np.std(recalls, ddof=1))
    assert set(entry) >= {"precision", "precision_mean", "precision_std", "recall", "support"}


TORCH_FREE = ["stages.folds", "stages.score", "stages.predict", "commands.evaluate", "commands.leaderboard",
              "commands.ablate", "commands.report", "commands.plots", "commands.label_issues", "results.blend",
              "results.blending", "results.submission", "results.figures", "results.compare", "commands.ensemble",
              "commands.check", "results", "run", "corpus", "splits", "duplicates"]


def test_the_results_side_imports_no_torch():
    """Splitting, scoring and comparing read and write tables: they must not pay torch's, timm's and
    albumentations' imports (5 s per call). One process imports them in turn (one process each would cost ~2 s
    apiece) and names the first that brings a heavy module in."""
    import subprocess
    import sys

    heavy = ("torch", "timm", "albumentations")
    code = (f"import importlib, sys\nfor name in {TORCH_FREE}:\n    importlib.import_module('foldvision.' + name)\n"
            f"    loaded = sorted(m for m in {heavy} if m in sys.modules)\n"
            "    if loaded:\n        print(name, loaded)\n        break")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", result.stdout


def test_the_score_stage_reports_the_decision_rule_fitted_and_nested(tmp_path, binary_corpus):
    from fakes import scored_run
    from foldvision.run import Run

    from foldvision.results.decision import fit_rule

    run = Run(scored_run(tmp_path, "exp", binary_corpus, skill=0.5))
    rule, oof = run.read_scores()["decision"], run.read_oof()
    assert rule["metric"] == "accuracy" and rule["kind"] == "threshold"
    y, p1 = oof.y, oof.probs[:, 1]
    assert rule["oof_before"] == pytest.approx(accuracy_score(y, oof.probs.argmax(1)))
    # the best threshold, found by trying every cut between the sorted OOF probabilities (the rule's 199
    # quantiles fall in each gap of these 20 rows); the rule must be it, and on these rows it beats argmax
    cuts = np.unique(p1)[1:]
    best = max(accuracy_score(y, p1 >= t) for t in cuts)
    assert rule["oof_after"] == pytest.approx(best) and best > rule["oof_before"]
    assert accuracy_score(y, p1 >= rule["value"]) == pytest.approx(rule["oof_after"])
    # nested: each fold labelled by the rule fitted on the other folds' rows, all scored together
    nested = np.empty(len(y), dtype=int)
    for k in np.unique(oof.fold):
        held = oof.fold == k
        nested[held] = fit_rule(y[~held], oof.probs[~held], "accuracy").apply(oof.probs[held])
    assert rule["oof_nested"] == pytest.approx(accuracy_score(y, nested))
