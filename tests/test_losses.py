import math

import pytest
import torch
import torch.nn.functional as F

from foldvision.config import LossConfig
from foldvision.learn.losses import ComplementCrossEntropy, FocalLoss, create_loss


def by_hand(logits: list[float], target: int, gamma: float = 1.0) -> float:
    """CCE of one sample, written out with the math module."""
    exps = [math.exp(z) for z in logits]
    p = [e / sum(exps) for e in exps]
    ce = -math.log(p[target])
    rest = [p[j] / (1 - p[target]) for j in range(len(p)) if j != target]
    entropy = -sum(q * math.log(q) for q in rest)
    return ce - gamma / (len(p) - 1) * entropy


@pytest.mark.parametrize("logits,target", [([1.0, 2.0, 3.0], 0), ([0.5, -1.0, 2.0, 0.0], 2), ([3.0, 0.0, 0.0], 0)])
def test_cce_matches_the_formula_by_hand(logits, target):
    got = ComplementCrossEntropy()(torch.tensor([logits]), torch.tensor([target]))
    assert got.item() == pytest.approx(by_hand(logits, target), abs=1e-6)


def test_cce_known_value():
    # logits [1, 2, 3], target 0: p = (0.0900, 0.2447, 0.6652); CE = 2.4076;
    # complement (0.2689, 0.7311): entropy 0.5822; CCE = 2.4076 - 0.5822 / 2 = 2.1165
    got = ComplementCrossEntropy()(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0]))
    assert got.item() == pytest.approx(2.1165, abs=1e-4)


def test_cce_batch_mean_and_gamma():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]])
    target = torch.tensor([0, 2])
    expected = (by_hand([1, 2, 3], 0, 0.5) + by_hand([0, 0, 4], 2, 0.5)) / 2
    assert ComplementCrossEntropy(gamma=0.5)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_cce_equals_ce_for_two_classes():
    logits, target = torch.randn(16, 2), torch.randint(0, 2, (16,))
    assert ComplementCrossEntropy()(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item())


def test_cce_prefers_flat_wrong_classes():
    target = torch.tensor([0])
    flat = ComplementCrossEntropy()(torch.tensor([[2.0, 0.0, 0.0]]), target)
    peaked = ComplementCrossEntropy()(torch.tensor([[2.0, 1.0, -1.0]]), target)
    ce_flat = F.cross_entropy(torch.tensor([[2.0, 0.0, 0.0]]), target)
    ce_peaked = F.cross_entropy(torch.tensor([[2.0, 1.0, -1.0]]), target)
    assert flat - ce_flat < peaked - ce_peaked  # the complement term rewards the flat one more


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cce_is_finite_in_low_precision_with_confident_logits(dtype):
    logits = torch.tensor([[60.0, -30.0, 5.0, -60.0], [-60.0, 60.0, 60.0, 0.0]], dtype=dtype, requires_grad=True)
    loss = ComplementCrossEntropy()(logits, torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_focal_with_gamma_zero_is_ce():
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), abs=1e-6)


def test_losses_by_name():
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    smooth = create_loss(LossConfig(name="label_smoothing", smoothing=0.2))(logits, target)
    assert smooth.item() == pytest.approx(F.cross_entropy(logits, target, label_smoothing=0.2).item(), abs=1e-6)
    assert create_loss(LossConfig(name="ce"))(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item())
