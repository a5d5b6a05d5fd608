"""The fine-tuning recipes' glue around timm: weight EMA, loss mixing for Mixup/CutMix, freezing (head, last n
layers) with frozen BatchNorm statistics, precise BatchNorm statistics, the sampler's prior correction, and
the average of a fold's best epochs. Each is off by default and switched on by one config key (foldvision.config);
train.py and engine.py call these and hold no recipe logic of their own.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from timm.data import Mixup
from timm.models import group_parameters
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from foldvision.config import AugmentConfig
from foldvision.errors import UserError
from foldvision.learn.optim import classifier_names


# ---- EMA of the weights -----------------------------------------------------------------------------------

class WeightEma:
    """timm's ModelEmaV3 of `model` (parameters and buffers), updated after every optimizer step with the step
    count (its decay warm-up, 1 − (1 + step)^(−2/3) capped at `decay`, needs `step=`; without warm-up the
    first update copies the weights and the later ones use `decay`). Its state, weights and step, goes into
    last.pt so a resumed fold continues the same average."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.source = model  # the plain model (not DDP's or torch.compile's wrapper): the same state dict keys
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=warmup)
        self.step = 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self) -> None:
        self.step += 1
        self.ema.update(self.source, step=self.step)

    def state_dict(self) -> dict:
        return {"weights": self.ema.module.state_dict(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state["weights"])
        self.step = int(state["step"])


# ---- Mixup / CutMix as loss mixing ------------------------------------------------------------------------

class LossMix:
    """Mixup/CutMix drawn by timm's `Mixup` (one λ per batch, the batch mixed with its reverse), applied as loss
    mixing: λ·L(logits, y) + (1−λ)·L(logits, y reversed), so CCE, focal and CE keep their hard labels; the
    other task kinds' targets (tags, values, cumulative grades: float rows) are mixed themselves (`mixed_loss`).

    An odd batch needs nothing special: its middle image is mixed with itself (unchanged) and both its labels
    are its own. λ and CutMix's box come from numpy's global generator, seeded per epoch by the loop, so a
    resumed epoch mixes as the uninterrupted one did.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int):
        self.off_epoch = cfg.mix_off_epoch
        self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob, mode="batch",
                           num_classes=num_classes)

    def active(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based) mixes: every epoch before augment.mix_off_epoch."""
        return self.off_epoch == 0 or epoch < self.off_epoch

    def __call__(self, images: torch.Tensor) -> float:
        """Mix `images` in place; returns λ (1.0: this batch was left alone)."""
        return float(self.mixup._mix_batch(images))  # Mixup.__call__ would also refuse an odd batch


def mixed_loss(loss_fn: nn.Module, logits: torch.Tensor, targets: torch.Tensor, lam: float) -> torch.Tensor:
    """Class indices: λ·L(y_a) + (1−λ)·L(y_b), with y_b the targets of the images mixed in (the batch reversed).
    Float targets (tags, standardised values, cumulative grades): L(λ·y_a + (1−λ)·y_b), the mixed image's mixed
    target (for BCE and MSE the two forms have the same gradient; for Huber and ASL the mixed target is the one
    that means something). A taught fold's packed rows (`losses.TeacherLoss.packed`: flags, class indices and
    teacher targets side by side) are loss-mixed: a mixed flag or class index means nothing."""
    if lam == 1.0:
        return loss_fn(logits, targets)
    if torch.is_floating_point(targets) and not getattr(loss_fn, "packed", False):
        return loss_fn(logits, lam * targets + (1.0 - lam) * targets.flip(0))
    return lam * loss_fn(logits, targets) + (1.0 - lam) * loss_fn(logits, targets.flip(0))


def create_mix(cfg: AugmentConfig, num_classes: int) -> LossMix | None:
    return LossMix(cfg, num_classes) if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mix_prob > 0 else None


# ---- freezing ---------------------------------------------------------------------------------------------

def layer_ids(model: nn.Module) -> dict[str, int]:
    """Each parameter's layer in timm's grouping (`group_matcher(coarse=False)`, as layer decay uses it): 0 is
    the stem, the highest the classifier."""
    if hasattr(model, "group_matcher"):
        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    from timm.optim._param_groups import auto_group_layers  # timm's own fallback for models without a matcher

    return auto_group_layers(model)


def set_trainable(model: nn.Module, train_layers: str, last_n: int = 1) -> int:
    """requires_grad for model.train_layers: all; head (timm's `get_classifier()`); last_n (the head and the
    last `last_n` layers of `layer_ids`). Returns the number of trainable parameters (tensors).

    Frozen parameters get no gradient, so no optimizer moves them (nor decays them); their BatchNorm layers are
    kept in eval mode by `keep_frozen_norms`.
    """
    head = classifier_names(model)
    if train_layers == "head" and not head:
        raise UserError(f"model.train_layers=head: {type(model).__name__} has no classifier (get_classifier())")
    if train_layers == "last_n":
        ids = layer_ids(model)
        top = max(ids.values())
        keep = {name for name, layer in ids.items() if layer >= top - last_n} | head
    elif train_layers == "head":
        keep = head
    else:
        keep = {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
    return sum(1 for p in model.parameters() if p.requires_grad)


def _frozen(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def keep_frozen_norms(model: nn.Module) -> None:
    """After `model.train()`: BatchNorm layers whose weights are frozen run in eval mode, so their running
    statistics stay as they were (the pretrained ones) and they normalise with them."""
    for module in model.modules():
        if isinstance(module, _BatchNorm) and _frozen(module):
            module.eval()


def epoch_layers(train_layers: str, head_epochs: int, epoch: int) -> str:
    """What trains in epoch `epoch` (0-based): the head alone for the first train.head_epochs, then train_layers."""
    return "head" if epoch < head_epochs else train_layers


# ---- BatchNorm statistics ---------------------------------------------------------------------------------

@torch.no_grad()
def precise_bn(model: nn.Module, loader, batches: int, amp) -> None:
    """Re-estimate the running statistics of the trainable BatchNorm layers as a plain mean over `batches`
    training batches (torch's `swa_utils.update_bn`, but frozen layers stay in eval mode and keep theirs).

    A short run's running averages (momentum 0.1) still hold the early weights' activations; validation in
    eval mode then sees statistics that no longer fit the weights."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and not _frozen(m)]
    if not norms:
        return
    was_training = model.training
    model.train()
    keep_frozen_norms(model)
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative mean
    for images, _ in itertools.islice(loader, batches):
        with amp.autocast():
            model(images)
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)


@torch.no_grad()
def pool_bn_stats(model: nn.Module, total, ranks: int) -> None:
    """Under DDP, after `precise_bn` on each rank's share: every rank gets what one process computes over the
    batches of all the shares, so each validates alike and N processes match one. `precise_bn` keeps the plain
    mean of the batches' means and of their variances, and every rank ran the same number of batches, so both
    are averaged over the ranks (adding the variance of the rank means would count a spread between batches that
    one process never counts). `total(tensor)` sums a tensor over the ranks (`World.sum`)."""
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats and not _frozen(m):
            m.running_mean.copy_(total(m.running_mean) / ranks)
            m.running_var.copy_(total(m.running_var) / ranks)


# ---- prior correction -------------------------------------------------------------------------------------

def log_prior(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """log of the training split's class frequencies: what the imbalanced sampler (which shows every class
    equally often) took away from the model's logits."""
    counts = np.bincount(np.asarray(y), minlength=num_classes).astype(np.float64)
    return torch.from_numpy(np.log(np.maximum(counts, 1) / counts.sum())).float()


def rarest_tags(y: np.ndarray) -> np.ndarray:
    """Each multi-label row's rarest tag (by these rows' tag counts), or K for a row without tags: the label the
    imbalanced sampler balances a multi-label split by, so rows holding a rare tag are drawn as often as the
    rows whose rarest tag is common."""
    y = np.asarray(y) > 0
    ranked = np.where(y, y.sum(axis=0)[None, :], np.inf)
    return np.where(y.any(axis=1), ranked.argmin(axis=1), y.shape[1]).astype(np.int64)


def tag_prior_shift(y: np.ndarray, balance: np.ndarray) -> torch.Tensor:
    """Per tag, logit(its rate in the training rows) − logit(its rate in the imbalanced draw, whose weights are
    1 / count of each row's `balance` label): added to a multi-label model's logits it takes each tag's odds
    back to the training set's, as `log_prior` does for classes (exact when the draw changed a tag's rate
    alone; rates are kept 1/(2n) away from 0 and 1)."""
    y = np.asarray(y, dtype=np.float64)
    weights = 1.0 / np.bincount(balance)[balance]
    margin = 0.5 / len(y)
    true = np.clip(y.mean(axis=0), margin, 1 - margin)
    drawn = np.clip((weights[:, None] * y).sum(axis=0) / weights.sum(), margin, 1 - margin)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    return torch.from_numpy(logit(true) - logit(drawn)).float()


def classifier_bias_name(model: nn.Module) -> str | None:
    """The state dict key of the classifier's bias, where the prior correction is stored (None: it has none)."""
    names = [n for n in classifier_names(model) if n.endswith("bias")]
    return names[0] if len(names) == 1 else None


def with_prior(state: dict, bias_name: str, shift: torch.Tensor | None) -> dict:
    """A copy of a state dict whose classifier bias holds `shift` (logits + log prior): what best.pt stores, so
    predict needs nothing of its own."""
    if shift is None:
        return state
    out = dict(state)
    out[bias_name] = state[bias_name] + shift.to(state[bias_name])
    return out


# ---- averaging the best epochs ----------------------------------------------------------------------------

def average_weights(states: list[dict]) -> dict:
    """The mean of state dicts (timm's avg_checkpoints: floating tensors summed in float64, then cast back);
    integer buffers (BatchNorm's batch counts) are taken from the first."""
    out = {}
    for key, first in states[0].items():
        if torch.is_floating_point(first):
            total = sum(s[key].double() for s in states)
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def top_k(ranked: list[tuple[float, int]], value: float, epoch: int, k: int, higher_is_better: bool
          ) -> tuple[list[tuple[float, int]], list[int]]:
    """The k best (score, epoch) pairs after adding this epoch's, best first; and the epochs that fell out
    (their snapshots can go). A non-finite score never enters."""
    entries = list(ranked) + ([(value, epoch)] if math.isfinite(value) else [])
    entries.sort(key=lambda e: (-e[0] if higher_is_better else e[0], e[1]))
    return entries[:k], [e for _, e in entries[k:]]
