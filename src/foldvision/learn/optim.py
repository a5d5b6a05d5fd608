"""Optimizers by name from pytorch-optimizer (Ranger21 by default), learning rates per parameter group (a head
multiplier, timm's layer-wise decay) and the external lr schedules (cosine, step, plateau)."""

from __future__ import annotations

import math

import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from foldvision.config import TrainConfig
from foldvision.errors import UserError, did_you_mean

WD_BAN_LIST = ("bias", "LayerNorm.bias", "LayerNorm.weight")  # pytorch-optimizer's: no weight decay on these


def optimizer_steps(batches_per_epoch: int, cfg: TrainConfig) -> int:
    """Total optimizer steps of a fold: Ranger21 needs it up front (`num_iterations`) for its schedule."""
    return cfg.epochs * math.ceil(batches_per_epoch / cfg.accumulate)


def classifier_names(model: nn.Module) -> set[str]:
    """The parameter names of timm's classifier (`get_classifier()`): the new head of a fine-tuned model."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module):
        return set()
    ids = {id(p) for p in head.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def lr_scales(model: nn.Module, cfg: TrainConfig) -> dict[str, float]:
    """Each parameter's lr multiplier: timm's layer-wise decay (`param_groups_layer_decay`: the head's layer 1,
    each layer below × layer_decay) times head_lr_scale for the classifier. Empty when every multiplier is 1."""
    if cfg.layer_decay is None and cfg.head_lr_scale == 1:
        return {}
    scales = {name: 1.0 for name, _ in model.named_parameters()}
    if cfg.layer_decay is not None:
        by_id = {id(p): group["lr_scale"]
                 for group in param_groups_layer_decay(model, weight_decay=0.0, layer_decay=cfg.layer_decay)
                 for p in group["params"]}
        # param_groups_layer_decay skips frozen parameters: they keep 1 (train_layers may unfreeze them later)
        scales = {name: by_id.get(id(p), 1.0) for name, p in model.named_parameters()}
    for name in classifier_names(model):
        scales[name] *= cfg.head_lr_scale
    return scales


def _split_by_scale(model: nn.Module, groups: list[dict], scales: dict[str, float], lr: float) -> list[dict]:
    """Each weight-decay group cut into one group per lr multiplier, with `lr` = lr × `lr_scale` (the key timm's
    schedulers read; torch's keep each group's ratio as they scale every group's initial lr)."""
    scale_of = {id(p): scales[name] for name, p in model.named_parameters()}
    out = []
    for group in groups:
        by_scale: dict[float, list] = {}
        for p in group["params"]:
            by_scale.setdefault(scale_of[id(p)], []).append(p)
        for scale, params in sorted(by_scale.items()):
            out.append({**group, "params": params, "lr": lr * scale, "lr_scale": scale})
    return out


def create_optimizer(model: nn.Module, cfg: TrainConfig, total_steps: int) -> torch.optim.Optimizer:
    """`cfg.optimizer` over `model`'s parameters; one group per lr multiplier when `lr_scales` gives any."""
    # imported here: pytorch-optimizer is a training dependency, and `foldvision infer` imports this module
    # (through the checkpoint and engine modules) without it
    from pytorch_optimizer import Lookahead, Ranger21, create_optimizer as create_named_optimizer  # noqa: PLC0415
    from pytorch_optimizer import get_supported_optimizers, load_optimizer  # noqa: PLC0415
    from pytorch_optimizer.optimizer import get_optimizer_parameters  # noqa: PLC0415

    name = cfg.optimizer.lower()
    scales = lr_scales(model, cfg)
    try:
        if name == "ranger21":
            kwargs = dict(cfg.optimizer_args)
            if not cfg.lookahead:  # blending fully towards the fast weights: its Lookahead does nothing
                kwargs.setdefault("lookahead_blending_alpha", 1.0)
            if cfg.warmup_frac is not None and not kwargs.get("disable_lr_scheduler", False):
                # Ranger21's own warm-up is 22% of a short run (2000 steps of a long one): warmup_frac sets it
                kwargs.setdefault("num_warm_up_iterations", math.ceil(cfg.warmup_frac * total_steps))
            # Its built-in schedule (warm-up, warm-down from 72% to warm_down_min_lr) reads the lr given here and
            # sets one lr for every group during the warm-down: per-group rates need disable_lr_scheduler=True
            # (config.validate refuses the combination).
            params = _split_by_scale(model, [{"params": list(model.parameters())}], scales, cfg.lr) if scales \
                else model.parameters()
            return Ranger21(params, num_iterations=total_steps, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
        if not scales:
            return create_named_optimizer(model, name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          use_lookahead=cfg.lookahead, **cfg.optimizer_args)
        # pytorch-optimizer's create_optimizer takes a model, not groups: the same weight-decay grouping by hand
        groups = (get_optimizer_parameters(model, cfg.weight_decay, WD_BAN_LIST) if cfg.weight_decay > 0
                  else [{"params": list(model.parameters()), "weight_decay": 0.0}])
        optimizer = load_optimizer(name)(_split_by_scale(model, groups, scales, cfg.lr), lr=cfg.lr,
                                         weight_decay=cfg.weight_decay, **cfg.optimizer_args)
        return Lookahead(optimizer) if cfg.lookahead else optimizer
    except NotImplementedError:
        names = get_supported_optimizers()
        raise UserError(f"train.optimizer: pytorch-optimizer has no '{cfg.optimizer}'{did_you_mean(name, names)}") from None
    except TypeError as e:
        raise UserError(f"train.optimizer_args for {cfg.optimizer}: {e}") from None


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The base lr in effect (train.lr as scheduled; a group with a multiplier reports lr / lr_scale): Ranger21
    keeps its scheduled lr to itself (`current_lr`)."""
    scheduled = getattr(optimizer, "current_lr", None)
    if scheduled is not None and not getattr(optimizer, "disable_lr_scheduler", False):
        return float(scheduled)
    group = optimizer.param_groups[0]
    return float(group["lr"]) / group.get("lr_scale", 1.0)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int, metric: str = "auc"):
    """The external lr schedule, or None (constant lr, or the optimizer's own schedule).

    cosine and step are LambdaLR stepped once per optimizer step (a linear warm-up over warmup_frac of the steps
    first); plateau is torch's ReduceLROnPlateau, stepped once per epoch on the validation `metric`
    (`epoch_end`). Each scales every group's own lr, so per-group ratios (head, layer decay) are kept.
    """
    if cfg.scheduler == "none":
        return None
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min" if metric == "log_loss" else "max", factor=cfg.decay_factor,
            patience=cfg.decay_epochs - 1)  # torch decays once more than `patience` epochs were not better
    warmup = int((cfg.warmup_frac or 0.0) * total_steps)
    steps_per_epoch = max(1, total_steps // cfg.epochs)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "step":
            return cfg.decay_factor ** ((step // steps_per_epoch) // cfg.decay_epochs)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def per_step(scheduler) -> bool:
    """Whether the schedule steps with each optimizer step (plateau steps once per epoch, on the metric)."""
    return scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def epoch_end(scheduler, value: float) -> None:
    """End of an epoch: plateau takes the validation metric's value (a NaN one, e.g. AUC of a one-class
    validation set, is skipped); per-step schedules have nothing to do."""
    if scheduler is not None and not per_step(scheduler) and math.isfinite(value):
        scheduler.step(value)
