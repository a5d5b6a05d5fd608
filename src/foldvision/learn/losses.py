"""Classification losses by name: Complement Cross Entropy (default), CE, label smoothing, focal.

Every loss computes in float32 whatever the autocast dtype, so bf16/fp16 logits cannot overflow it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foldvision.config import LossConfig


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


LOSSES = {
    "cce": lambda cfg: ComplementCrossEntropy(gamma=cfg.cce_gamma),
    "ce": lambda cfg: CrossEntropy(),
    "label_smoothing": lambda cfg: CrossEntropy(label_smoothing=cfg.smoothing),
    "focal": lambda cfg: FocalLoss(gamma=cfg.focal_gamma),
}


def create_loss(cfg: LossConfig) -> nn.Module:
    return LOSSES[cfg.name](cfg)
