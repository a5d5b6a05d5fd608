"""Losses by name, per task kind (config.LOSS_NAMES; loss.name=auto picks the kind's first):

    single      class indices      cce (Complement Cross Entropy), ce, label_smoothing, focal
    multilabel  N x K 0/1 floats   bce, focal_bce (sigmoid focal), asl (asymmetric loss)
    regression  N x 1 floats       mse, huber (standardised targets), scaled_bce (targets scaled to 0..1)
    ordinal     N x 1 or N x K-1   mse, huber, scaled_bce (on the grade), cumulative (BCE of P(grade > k))

The targets other than single-label's are what `foldvision.learn.heads.Head.targets` makes of the labels (soft
ones after Mixup/CutMix); every loss is a mean over its elements. Every loss computes in float32 whatever the
autocast dtype, so bf16/fp16 logits cannot overflow it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import AsymmetricLossMultiLabel
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from foldvision.config import LossConfig, TrainConfig, loss_name


class ComplementCrossEntropy(nn.Module):
    """Complement Cross Entropy (Kim, Lee, Jeon 2021): L = CE − (γ'/(K−1))·H̄.

    H̄ is the batch mean of the complement entropy −Σ_{j≠g} p'_j log p'_j of the non-target probabilities
    renormalised to sum to one, p'_j = p_j / (1 − p_g). Minimising L raises the target probability and
    flattens the wrong ones. γ' = 1 is the paper's γ = −1; the authors' code has the opposite sign and
    divides by K (their issues #8 and #2). For K = 2 the complement holds one class, H̄ = 0 and L = CE.

    No library ships it (pytorch-optimizer has focal, LDAM, bi-tempered, ... but not CCE), hence ours.
    """

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        ce = F.cross_entropy(logits, target)
        num_classes = logits.shape[1]
        if num_classes < 3:
            return ce
        is_target = F.one_hot(target, num_classes).bool()
        # p'_j = p_j / (1 - p_g) is the softmax over the non-target logits alone: computing it that way
        # never forms 1 - p_g, which rounds to 0 (and its log to -inf) once the model is confident.
        # The target's -inf is then set to 0 (p log p -> 1·0) before the product: 0·(-inf) would be NaN,
        # and a NaN gradient leaks through torch.where.
        log_p = torch.log_softmax(logits.masked_fill(is_target, float("-inf")), dim=1).masked_fill(is_target, 0.0)
        entropy = -(log_p.exp() * log_p).sum(dim=1).mean()
        return ce - self.gamma / (num_classes - 1) * entropy


class FocalLoss(nn.Module):
    """Softmax focal loss, −(1 − p_g)^γ log p_g (Lin et al. 2017).

    pytorch-optimizer's FocalLoss is the sigmoid/binary form on one-hot float targets; this one takes class
    indices for any number of classes like the other losses here.
    """

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p_target = torch.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        return (-((1 - log_p_target.exp()) ** self.gamma) * log_p_target).mean()


class CrossEntropy(nn.CrossEntropyLoss):
    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.float(), target)


class BinaryCrossEntropy(nn.Module):
    """BCE on logits: multi-label tags (bce), a value scaled to 0..1 (scaled_bce, the Pawpularity trick) and the
    cumulative targets [grade > k] of an ordinal task (cumulative); soft targets (mixed) are welcome."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class FocalBCE(nn.Module):
    """Sigmoid focal loss, −(1 − p_t)^γ log p_t per tag (torchvision's, without its α weighting)."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits.float(), target.float(), alpha=-1, gamma=self.gamma, reduction="mean")


def asymmetric_loss(cfg: LossConfig) -> nn.Module:
    """ASL (Ridnik et al. 2021), timm's: −y (1−p)^γ+ log p − (1−y) p_m^γ− log(1−p_m), p_m = max(p − m, 0),
    averaged over the elements like the other losses (the paper sums them, which ties the lr to the batch)."""
    return AsymmetricLossMultiLabel(gamma_neg=cfg.asl_gamma_neg, gamma_pos=cfg.asl_gamma_pos,
                                    clip=cfg.asl_clip or None, reduction="mean")


class ValueLoss(nn.Module):
    """MSE or Huber of the one output against the standardised target (both N x 1)."""

    def __init__(self, huber_delta: float | None = None):
        super().__init__()
        self.huber_delta = huber_delta

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = logits.float(), target.float()
        if self.huber_delta is None:
            return F.mse_loss(logits, target)
        return F.huber_loss(logits, target, delta=self.huber_delta)


class TeacherLoss(nn.Module):
    """The loss of a fold taught by a teacher (foldvision.learn.teacher), on its packed rows (`teacher.pack`):

        labelled, untaught:  L(z, y)                      L: the configured loss (loss.name)
        labelled, taught:    (1 − w)·L(z, y) + w·T(z, q)  (distillation)
        test image:          w·T(z, q)                    (a pseudo label: no true label to mix with)

    T per task kind, q the teacher's target as `teacher.targets` made it (already tempered, or hard):
    - single: τ²·KL(q ‖ softmax(z/τ)) (Hinton et al. 2015: τ² keeps the gradient's scale as τ grows); a hard
      target at τ = 1 is plain cross-entropy.
    - multilabel (soft tags): τ²·the mean over tags of the binary KL(q ‖ sigmoid(z/τ)), on the scale of the
      tags' mean loss; whatever loss.name is, the teacher's term is this one.
    - regression, ordinal (soft scores): L(z, q), the student's own loss with the teacher's value as its target
      (no temperature: a value is not a distribution).
    Averaged over the batch's rows. The KLs differ from cross-entropy with soft targets by q's entropy, a constant:
    same gradients, and 0 when the student matches the teacher.
    """

    packed = True  # recipes.mixed_loss mixes the losses of its rows, never the rows themselves

    def __init__(self, base: nn.Module, weight: float, temperature: float = 1.0, kind: str = "single"):
        super().__init__()
        self.base, self.weight, self.temperature, self.kind = base, weight, temperature, kind

    def forward(self, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        logits, rows = logits.float(), rows.float()
        m = logits.shape[1]
        taught, q = rows[:, 1] > 0, rows[:, 2:2 + m]
        if self.kind == "single":  # [y, taught, q]: y the class index, -1 for a test image
            labelled, truth = rows[:, 0] >= 0, rows[:, 0].long()
        else:  # [±1, taught, q, t]: t the head's targets of the true label
            labelled, truth = rows[:, 0] > 0, rows[:, 2 + m:]
        w, n = self.weight, len(logits)
        total = logits.new_zeros(())
        for rows_of, share in ((labelled & taught, 1 - w), (labelled & ~taught, 1.0)):
            if rows_of.any() and share > 0:  # the base loss is a batch mean: weighted by its rows' count
                total = total + share * rows_of.sum() * self.base(logits[rows_of], truth[rows_of])
        if taught.any():
            total = total + w * self.taught_sum(logits[taught], q[taught])
        return total / n

    def taught_sum(self, z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """T(z, q) summed over the rows (the class docstring)."""
        tau = self.temperature
        if self.kind == "single":
            return tau * tau * F.kl_div(torch.log_softmax(z / tau, dim=1), q, reduction="none").sum()
        if self.kind == "multilabel":
            bce = F.binary_cross_entropy_with_logits(z / tau, q, reduction="none")
            kl = bce + torch.special.xlogy(q, q) + torch.special.xlogy(1 - q, 1 - q)  # BCE − q's entropy
            return tau * tau * kl.mean(dim=1).sum()
        return len(z) * self.base(z, q)


LOSSES = {
    "cce": lambda cfg: ComplementCrossEntropy(gamma=cfg.cce_gamma),
    "ce": lambda cfg: CrossEntropy(),
    "label_smoothing": lambda cfg: CrossEntropy(label_smoothing=cfg.smoothing),
    "focal": lambda cfg: FocalLoss(gamma=cfg.focal_gamma),
    "bce": lambda cfg: BinaryCrossEntropy(),
    "focal_bce": lambda cfg: FocalBCE(gamma=cfg.focal_gamma),
    "asl": asymmetric_loss,
    "mse": lambda cfg: ValueLoss(),
    "huber": lambda cfg: ValueLoss(huber_delta=cfg.huber_delta),
    "scaled_bce": lambda cfg: BinaryCrossEntropy(),
    "cumulative": lambda cfg: BinaryCrossEntropy(),
}


def create_loss(cfg: LossConfig, kind: str = "single", teacher: TrainConfig | None = None) -> nn.Module:
    """The loss loss.name names for a task kind (auto: the kind's default; config.check_task refused a name of
    another kind before any work); wrapped in a TeacherLoss when `teacher` (the train section) names a teacher."""
    base = LOSSES[loss_name(cfg, kind)](cfg)
    if teacher is None or not teacher.teacher:
        return base
    return TeacherLoss(base, teacher.teacher_weight, teacher.teacher_temperature, kind)
