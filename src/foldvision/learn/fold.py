"""The fold builder: everything one fold trains with (`FoldParts`), built by `build_fold` from the config and the
split, so the loop in foldvision.stages.train only uses it.

The model is built as predict and bench build theirs (`engine.build_model_for`), as wide as the task's head
(`heads.Head`: its outputs, targets and the map back to the user's units, fitted on the fold's training rows);
then the loaders at the model's input (and, with train.finetune_size, at the larger one, built when first
used), the optimizer, schedule and loss, and the recipes that are parts: the first epoch's trainable layers,
EMA, Mixup/CutMix, prior correction.
Under DDP each rank gets its share of the splits, and its steps and the global batch's lr for the optimizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foldvision.config import Config, ModelConfig, loss_name, to_dict
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.learn.distributed import SINGLE, World
from foldvision.learn.engine import ModelSetup, build_model_for, progress_bar, runtime_kwargs
from foldvision.learn.heads import Head
from foldvision.learn.loader import DeviceLoader, create_loader, loader_kwargs
from foldvision.learn.losses import create_loss
from foldvision.learn.optim import create_optimizer, create_scheduler, optimizer_steps
from foldvision.learn.recipes import (LossMix, WeightEma, classifier_bias_name, create_mix, epoch_layers, log_prior,
                                      rarest_tags, set_trainable, tag_prior_shift)
from foldvision.learn.teacher import TaughtRows, fold_rows, sampling_labels
from foldvision.learn.transforms import Preprocessing
from foldvision.results.metrics import resolve_metric
from foldvision.run import FoldFiles, Split
from foldvision.splits import read_exclude

TRAIN_SECTIONS = ("data", "cv", "model", "augment", "train", "loss")  # a change in any: last.pt cannot resume

Loaders = Callable[[Preprocessing], tuple[DeviceLoader, DeviceLoader]]  # (train, val) at an input


@dataclass(frozen=True)
class Draw:
    """How the fold's training rows are drawn: train.sampler as it applies to the task, and the label of each
    training row (in order) that the imbalanced draw balances (None: the class indices themselves)."""

    sampler: str
    balance: np.ndarray | None = None


@dataclass
class FoldParts:
    """Everything one fold trains with, built by `build_fold`; the loop only uses it."""

    fold: int
    files: FoldFiles
    setup: ModelSetup  # its `preprocessing` is the model's own input (the epochs before train.finetune_size's)
    loaders_at: Loaders
    preprocessing: Preprocessing  # the input the loaders give now, and best.pt records (`use`)
    train_loader: DeviceLoader
    val_loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: torch.nn.Module
    total_steps: int
    classes: list[str]
    channels: int
    model_config: dict
    train_config: dict  # what last.pt must have been written under to resume from it
    val_ids: list[str]
    val_labels: list[str]
    y_val: np.ndarray
    head: Head  # the outputs' meaning: what best.pt records, so predict maps them as validation did
    world: World = SINGLE  # this process among torchrun's (foldvision.learn.distributed)
    train_net: torch.nn.Module | None = None  # what trains: setup.net, or DDP around setup.model
    ema: WeightEma | None = None  # train.ema_decay: the EMA of the weights, validated and kept instead of them
    mix: LossMix | None = None  # augment.mixup/cutmix: mixes batches and the loss with them
    prior: torch.Tensor | None = None  # train.prior_correction: log prior added to the logits
    bias_name: str | None = None  # the classifier bias's key, where best.pt stores the prior correction

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and kept: the EMA's when on, else the model's (uncompiled)."""
        return self.ema.module if self.ema is not None else self.setup.model

    @property
    def eval_net(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.setup.net

    def use(self, spec: Preprocessing) -> bool:
        """Train and validate at input `spec` from now on (the loaders at it; best.pt records it, the model is
        dynamic). Returns whether the input changed."""
        if spec == self.preprocessing:
            return False
        self.train_loader, self.val_loader = self.loaders_at(spec)
        self.preprocessing = spec
        return True


def build_fold(cfg: Config, split: Split, fold: int, files: FoldFiles, seed: int,
               world: World = SINGLE) -> FoldParts:
    """The fold's model, loaders, optimizer, schedule, loss and recipes (the module's docstring)."""
    t = cfg.train
    exclusion = read_exclude(cfg.data.exclude, split.ids, split.y, split.task)  # its mistakes before any work
    val = split.fold == fold
    train = ~val & ~exclusion.dropped  # data.exclude drops training rows only: every row is still validated
    head = Head.fit(split.task, loss_name(cfg.loss, split.kind), exclusion.y_train[train])
    taught = None
    if t.teacher:  # teacher fold k's targets, and the pseudo-labelled test images, join the training rows only
        taught = fold_rows(cfg, files.dir.parent, split, fold, (train, exclusion.y_train), head, write=world.main)
    setup, model_cfg = fold_model(cfg, head.outputs, world)
    if exclusion.source:
        console.print(f"fold {fold}: data.exclude drops {int((exclusion.dropped & ~val).sum())} training images and "
                      f"relabels {int(exclusion.changed(split.y)[~val].sum())} ({exclusion.source})")
    if head.describe():
        console.print(f"fold {fold}: {head.describe()}")
    draw = fold_draw(cfg, split.kind, exclusion.y_train, train, fold)
    loaders_at = fold_loaders(cfg, split, val, (train, exclusion.y_train), (head, draw), setup.device, seed, world,
                              taught)
    train_loader, val_loader = loaders_at(setup.preprocessing)
    total_steps = optimizer_steps(len(train_loader), t)
    optimizer = create_optimizer(setup.model, world.scale_lr(t), total_steps)  # every layer's lr, frozen or not
    set_trainable(setup.model, epoch_layers(cfg.model.train_layers, t.head_epochs, 0), cfg.model.train_last_n)
    prior, bias_name = prior_correction(cfg, setup, (exclusion.y_train[train], draw), head, fold)
    return FoldParts(
        fold, files, setup, loaders_at, setup.preprocessing, train_loader, val_loader, optimizer,
        scheduler=create_scheduler(optimizer, t, total_steps, resolve_metric(t.metric, split.kind)),
        loss_fn=create_loss(cfg.loss, split.kind, t), total_steps=total_steps, classes=split.classes,
        channels=cfg.data.channels, model_config=dataclasses.asdict(model_cfg), train_config=train_config(cfg, world),
        val_ids=[i for i, v in zip(split.ids, val) if v],
        val_labels=[label for label, v in zip(split.labels, val) if v],
        y_val=split.y[val], head=head, world=world, train_net=world.wrap(setup.model, setup.net, t.compile),
        ema=WeightEma(setup.model, t.ema_decay, t.ema_warmup) if t.ema_decay else None,
        mix=create_mix(cfg.augment, head.outputs), prior=prior, bias_name=bias_name)


def fold_draw(cfg: Config, kind: str, y: np.ndarray, train: np.ndarray, fold: int) -> Draw:
    """train.sampler for the task: the imbalanced draw balances classes (single-label) or each row's rarest tag
    (multi-label). A regression or ordinal target is shuffled instead, with one line: a balanced draw would pull
    the predicted values toward the rare ones, no prior correction undoes that for a value (RMSE and QWK are
    scored on the real distribution), and an ordinal task's imbalance is what the OOF-fitted cut-points handle."""
    if cfg.train.sampler != "imbalanced":
        return Draw(cfg.train.sampler)
    if kind in ("regression", "ordinal"):
        article = "an" if kind == "ordinal" else "a"
        console.print(f"fold {fold}: train.sampler=imbalanced balances classes, which {article} {kind} target has "
                      "not: its training rows are shuffled (train.sampler=random: the same, without this line)")
        return Draw("random")
    if kind != "multilabel":
        return Draw("imbalanced")  # the loader balances the class indices themselves
    return Draw("imbalanced", rarest_tags(y[train]))  # rarest among the fold's training rows


def fold_model(cfg: Config, num_classes: int, world: World) -> tuple[ModelSetup, ModelConfig]:
    """The model placed where it trains, and the model config it was built from (what best.pt records)."""
    t = cfg.train
    if world.distributed and t.head_epochs:
        raise UserError("train.head_epochs under DDP (--nproc): DDP fixes the trainable parameters when it wraps "
                        "the model; use model.train_layers, or train the fold in one process")
    # one set of weights for both input sizes: ViT-style models resample their position embeddings per input
    model_cfg = dataclasses.replace(cfg.model, dynamic_img_size=True) if t.finetune_size else cfg.model
    setup = build_model_for(model_cfg, num_classes, cfg.data.channels, **runtime_kwargs(t) | world.device_kwargs())
    patch = getattr(getattr(setup.model, "patch_embed", None), "patch_size", None)
    if t.finetune_size and patch and t.finetune_size % patch[0]:
        raise UserError(f"train.finetune_size={t.finetune_size}: {cfg.model.name} cuts images into {patch[0]}px "
                        f"patches; use a multiple of {patch[0]}")
    return setup, model_cfg


def fold_loaders(cfg: Config, split: Split, val: np.ndarray, training: tuple[np.ndarray, np.ndarray],
                 how: tuple[Head, Draw], device: torch.device, seed: int, world: World,
                 taught: TaughtRows | None = None) -> Loaders:
    """`loaders_at(spec)`: the train and validation loaders at input `spec`, each built once (the cache keeps
    each size); under DDP this rank's shares. `training` is (rows that train, the label each trains with);
    `how` the head that makes the loss's targets of the labels and the draw of the training rows. `taught`
    (train.teacher) replaces the training rows: fold k's and the pseudo-labelled test images, with their targets."""
    train, y_train = training
    head, draw = how
    paths = np.asarray(split.paths, dtype=object)
    root = Path(cfg.data.dir)  # folds.csv paths are relative to the corpus folder
    shard = (world.rank, world.size) if world.distributed else None
    targets, val_targets = head.targets(y_train[train]), head.targets(split.y[val])
    train_paths, balance = paths[train], draw.balance
    if taught is not None:  # the packed rows are the targets; the draw balances each row's class or rarest tag
        train_paths, targets, balance = taught.paths, taught.rows, sampling_labels(taught.rows, head)
    loaders: dict[Preprocessing, tuple[DeviceLoader, DeviceLoader]] = {}

    def loaders_at(spec: Preprocessing) -> tuple[DeviceLoader, DeviceLoader]:
        if spec not in loaders:
            with progress_bar() as progress:  # images not cached yet are decoded now, once, on every core
                loaders[spec] = (
                    create_loader(root, train_paths, targets, spec, device,
                                  **loader_kwargs(cfg, train=True, sampler=draw.sampler), seed=seed, shard=shard,
                                  progress=progress, balance=balance),
                    create_loader(root, paths[val], val_targets, spec, device,
                                  **loader_kwargs(cfg, train=False), shard=shard, progress=progress))
        return loaders[spec]

    return loaders_at


def prior_correction(cfg: Config, setup: ModelSetup, training: tuple[np.ndarray, Draw], head: Head, fold: int
                     ) -> tuple[torch.Tensor | None, str | None]:
    """train.prior_correction with the imbalanced sampler: what the draw took away from the logits (the log
    prior of the training classes; per tag, the shift of its odds: `recipes.tag_prior_shift`) and the classifier
    bias's key that holds it in best.pt; (None, None) when off, for a shuffled draw, or when the classifier has
    no bias. `training` is (the training rows' labels, their draw)."""
    y_train, draw = training
    if not (cfg.train.prior_correction and draw.sampler == "imbalanced"):
        return None, None
    bias_name = classifier_bias_name(setup.model)
    if bias_name is None:
        console.print(f"fold {fold}: train.prior_correction: {cfg.model.name}'s classifier has no bias to hold "
                      "it; its probabilities stay those of the balanced draw")
        return None, None
    if head.kind == "multilabel":
        shift = tag_prior_shift(y_train, draw.balance)
    else:
        shift = log_prior(y_train, len(head.names))
    return shift.to(setup.device), bias_name


def train_config(cfg: Config, world: World) -> dict:
    """The settings last.pt is written under: the train sections (and the processes under DDP)."""
    full = to_dict(cfg)
    return {k: full[k] for k in TRAIN_SECTIONS} | ({"processes": world.size} if world.distributed else {})
