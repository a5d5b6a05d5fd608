import numpy as np
import pytest

from foldvision.results.decision import fit_rule, label_metric


def test_binary_threshold_recovers_a_shifted_prior():
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.2).astype(int)  # 20% positives
    p1 = np.clip(0.55 + 0.2 * (y - 0.5) + rng.normal(0, 0.08, len(y)), 0, 1)  # scores centred above 0.5
    probs = np.stack([1 - p1, p1], axis=1)
    rule = fit_rule(y, probs, "accuracy")
    assert rule.kind == "threshold" and rule.value > 0.5
    assert rule.oof_after > rule.oof_before
    assert ((rule.apply(probs) == y).mean()) == pytest.approx(rule.oof_after)


def test_prior_correction_for_balanced_sampling():
    rng = np.random.default_rng(1)
    prior = np.array([0.7, 0.2, 0.1])
    y = rng.choice(3, size=3000, p=prior)
    # a model trained on balanced batches: likelihood-like scores, blind to the class prior
    logits = rng.normal(0, 1.0, (3000, 3)) + 1.0 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rule = fit_rule(y, probs, "accuracy")
    assert rule.kind == "prior" and rule.value > 0.3  # restores (most of) the training prior
    assert rule.oof_after > rule.oof_before + 0.02


def test_argmax_kept_when_nothing_is_better():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3)[y] * 0.9 + 0.1 / 3
    rule = fit_rule(y, probs, "macro_f1")
    assert rule.value == 0.0 and rule.oof_after == rule.oof_before == 1.0


def test_label_metric_falls_back_to_accuracy_for_probability_metrics():
    assert label_metric("auc") == "accuracy" and label_metric("macro_f1") == "macro_f1"


def test_every_experiment_reports_its_rule_nested_beside_the_fitted_score():
    from foldvision.results.decision import fit_nested

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    probs = rng.dirichlet([1, 1], 400)  # no signal: a fitted threshold can only flatter itself
    rule = fit_nested(y, probs, np.arange(400) % 5, "accuracy")
    assert rule.oof_nested is not None and rule.oof_nested < rule.oof_after
    assert "nested" in rule.describe() and rule.to_dict()["oof_nested"] == rule.oof_nested
