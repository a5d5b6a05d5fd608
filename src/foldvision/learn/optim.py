"""Optimizers by name from pytorch-optimizer (Ranger21 by default) and a per-step LR schedule for the others."""

from __future__ import annotations

import math

import torch
from pytorch_optimizer import Ranger21, create_optimizer as create_named_optimizer, get_supported_optimizers
from torch import nn

from foldvision.config import TrainConfig
from foldvision.errors import UserError, did_you_mean


def optimizer_steps(batches_per_epoch: int, cfg: TrainConfig) -> int:
    """Total optimizer steps of a fold: Ranger21 needs it up front (`num_iterations`) for its schedule."""
    return cfg.epochs * math.ceil(batches_per_epoch / cfg.accumulate)


def create_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int) -> torch.optim.Optimizer:
    name = cfg.optimizer.lower()
    try:
        if name == "ranger21":
            # Its built-in schedule (warm-up over 22% of short runs, warm-down from 72% to warm_down_min_lr)
            # reads the lr given here and overrides per-group lrs unless disable_lr_scheduler=True.
            return Ranger21(model.parameters(), num_iterations=total_steps, lr=cfg.lr,
                            weight_decay=cfg.weight_decay, **cfg.optimizer_args)
        return create_named_optimizer(model, name, lr=cfg.lr, weight_decay=cfg.weight_decay, **cfg.optimizer_args)
    except NotImplementedError:
        names = get_supported_optimizers()
        raise UserError(f"train.optimizer: pytorch-optimizer has no '{cfg.optimizer}'{did_you_mean(name, names)}") from None
    except TypeError as e:
        raise UserError(f"train.optimizer_args for {cfg.optimizer}: {e}") from None


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr in effect: Ranger21 keeps its scheduled lr to itself (`current_lr`)."""
    scheduled = getattr(optimizer, "current_lr", None)
    if scheduled is not None and not getattr(optimizer, "disable_lr_scheduler", False):
        return float(scheduled)
    return float(optimizer.param_groups[0]["lr"])


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """A LambdaLR stepped once per optimizer step, or None (constant lr, or the optimizer's own schedule)."""
    if cfg.scheduler == "none":
        return None
    warmup = int(cfg.warmup_frac * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
