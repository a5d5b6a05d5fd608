"""Stage 2: train one model per fold; the fold's validation predictions are its out-of-fold (OOF) rows.

    python -m foldvision.stages.train runs/<exp> --fold 0

Reads the run folder's config, split and class order. Writes into `fold<k>/`: `best.pt` (weights of the best
epoch by the task metric, with their validation predictions), `history.csv` (one row per epoch) and `oof.csv`
(id, fold, label, one probability column per class), written last, so its presence means the fold is done.
While a fold runs, `last.pt` holds everything needed to resume it after an interruption; it is deleted when the
fold finishes. A cut-short or foreign `last.pt` is set aside (`last.pt.corrupt`) and the fold starts over.

    python -m foldvision train runs/<exp> --fold 0 --nproc 4      (one fold on 4 GPUs: torchrun + DDP)

trains each fold in 4 processes (`foldvision.learn.distributed`); rank 0 alone writes the files above.

Three parts: `build_fold` (the model set-up shared with predict and bench, the loaders, optimizer, schedule and
loss), the loop in `fit_fold`, and the checkpoint helpers (`save_checkpoint`, `load_resume`, `apply_resume`).
The fine-tuning recipes (EMA, Mixup/CutMix, freezing, precise BN, prior correction, a larger last input size,
the average of the best epochs) are foldvision.learn.recipes' glue, each switched on by a config key: with EMA the
EMA weights are the ones validated and kept; with train.average_top_k the k best epochs' weights wait in
`fold<k>/epoch<n>.pt` until the fold ends.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foldvision.campaign import torchrun
from foldvision.learn import distributed
from foldvision.config import Config, to_dict
from foldvision.console import console
from foldvision.learn.distributed import SINGLE, World, rank_seed
from foldvision.learn.engine import (Amp, ModelSetup, NonFiniteLoss, build_model_for, predict, progress_bar,
                               runtime_kwargs, train_one_epoch)
from foldvision.errors import UserError
from foldvision.files import remove_partial_writes, write_atomic
from foldvision.learn.loader import DeviceLoader, create_loader, loader_kwargs
from foldvision.learn.losses import create_loss
from foldvision.results.metrics import LOWER_IS_BETTER, is_better, resolve_metric, score
from foldvision.learn.models import CheckpointError, read_checkpoint
from foldvision.learn.optim import create_optimizer, create_scheduler, epoch_end, optimizer_steps, per_step
from foldvision.learn.recipes import (LossMix, WeightEma, average_weights, classifier_bias_name, create_mix,
                                      epoch_layers, log_prior, pool_bn_stats, precise_bn, set_trainable, top_k,
                                      with_prior)
from foldvision.run import FoldFiles, Predictions, Run, Split, load_run_config
from foldvision.results.tracking import create_tracker

TRAIN_SECTIONS = ("data", "cv", "model", "augment", "train", "loss")  # a change in any: last.pt cannot resume
RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "state", "config")
STATE_KEYS = {"epoch", "best_score", "bad_epochs", "history"}
BEST_KEYS = ("model", "epoch", "metric", "score", "classes", "channels", "model_config", "data_config", "val_ids",
             "val_probs")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- checkpoints ------------------------------------------------------------------------------------------

def save_checkpoint(path: Path, content: dict) -> None:
    """torch.save to a temporary name, then renamed: a kill mid-write never leaves a cut-short checkpoint.
    Under DDP only rank 0 writes (the ranks hold the same weights)."""
    if not distributed.is_main():
        return
    write_atomic(path, lambda tmp: torch.save(content, tmp))


def set_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.corrupt` (kept for a look, out of the way of the next run)."""
    aside = path.with_name(path.name + ".corrupt")
    path.replace(aside)
    return aside


def start_over(error: CheckpointError, fold: int) -> None:
    set_aside(error.path)
    console.print(f"fold {fold}: {error.path} {error.problem}; set aside as {error.path.name}.corrupt, "
                  f"starting fold {fold} from scratch")


def load_resume(path: Path, fold: int, train_config: dict, device: torch.device) -> dict | None:
    """The contents of `last.pt` when the fold can resume from it, else None (with one printed line).

    A cut-short or foreign file is set aside as `last.pt.corrupt`; one written under other settings is ignored
    (and overwritten after the first epoch).
    """
    if not path.is_file():
        return None
    try:
        resume = read_checkpoint(path, RESUME_KEYS, device)
        if not (isinstance(resume["state"], dict) and STATE_KEYS <= set(resume["state"])):
            raise CheckpointError(path, "not a foldvision checkpoint (no training state)")
    except CheckpointError as e:
        start_over(e, fold)
        return None
    if resume["config"] != train_config:
        console.print(f"fold {fold}: the config changed since {path.name} was written; starting over")
        return None
    return resume


def apply_resume(resume: dict, path: Path, model: torch.nn.Module, optimizer, scheduler, amp: Amp,
                 ema: WeightEma | None = None) -> dict:
    """Load the resumed weights and optimizer, scheduler, scaler and EMA states; returns the training state.

    Raises:
        CheckpointError: the weights or the optimizer state do not fit (checked before anything is changed).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = resume["model"]
    if not isinstance(saved, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in saved.items()} != expected:
        raise CheckpointError(path, "its weights do not fit the model")
    try:  # the optimizer checks its groups before it changes anything
        optimizer.load_state_dict(resume["optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"its optimizer state does not fit ({type(e).__name__})") from None
    model.load_state_dict(saved)
    if scheduler is not None and resume["scheduler"]:
        scheduler.load_state_dict(resume["scheduler"])
    if amp.scaler is not None and resume["scaler"]:
        amp.scaler.load_state_dict(resume["scaler"])
    if ema is not None:
        if not resume.get("ema"):
            raise CheckpointError(path, "it holds no EMA weights")
        ema.load_state_dict(resume["ema"])
    return resume["state"]


def resume_checkpoint(parts: FoldParts, state: dict) -> dict:
    """What last.pt holds after an epoch: enough to carry on exactly where the loop stopped."""
    return {"model": parts.setup.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict() if parts.scheduler else None,
            "scaler": parts.setup.amp.scaler.state_dict() if parts.setup.amp.scaler else None,
            "ema": parts.ema.state_dict() if parts.ema else None, "state": state, "config": parts.train_config}


def best_checkpoint(parts: FoldParts, epoch: int, metric: str, value: float, probs: np.ndarray,
                    weights: dict | None = None) -> dict:
    """What best.pt holds: the weights (the validated ones: EMA's when on, `weights` when given; the prior
    correction in the classifier bias) and everything predict needs to rebuild the model without the config,
    at the input size they were validated at, and the validation predictions that become the fold's OOF rows."""
    weights = parts.eval_model.state_dict() if weights is None else weights
    return {"model": with_prior(weights, parts.bias_name, parts.prior), "epoch": epoch, "metric": metric,
            "score": value, "classes": parts.classes, "channels": parts.channels, "model_config": parts.model_config,
            "data_config": parts.setup.data_cfg, "val_ids": parts.val_ids, "val_probs": torch.from_numpy(probs)}


# ---- set-up -----------------------------------------------------------------------------------------------

@dataclass
class FoldParts:
    """Everything one fold trains with, built by `build_fold`; the loop only uses it."""

    fold: int
    files: FoldFiles
    setup: ModelSetup
    train_loader: DeviceLoader
    val_loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: torch.nn.Module
    total_steps: int
    classes: list[str]
    channels: int
    model_config: dict
    train_config: dict
    val_ids: list[str]
    val_labels: list[str]
    y_val: np.ndarray
    world: World = SINGLE  # this process among torchrun's (foldvision.learn.distributed)
    train_net: torch.nn.Module | None = None  # what trains: setup.net, or DDP around setup.model (build_fold)
    ema: WeightEma | None = None  # train.ema_decay: the EMA of the weights, validated and kept instead of them
    mix: LossMix | None = None  # augment.mixup/cutmix: mixes batches and the loss with them
    prior: torch.Tensor | None = None  # train.prior_correction: log prior added to the logits
    bias_name: str | None = None  # the classifier bias's key, where best.pt stores the prior correction
    loaders_at: Callable[[int], tuple[DeviceLoader, DeviceLoader]] | None = None  # (train, val) at an input size
    base_size: int = 0  # the model's input size (the epochs before train.finetune_size's)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated and kept: the EMA's when on, else the model's (uncompiled)."""
        return self.ema.module if self.ema is not None else self.setup.model

    @property
    def eval_net(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.setup.net

    def use_size(self, size: int) -> bool:
        """Train and validate at input size `size` from now on (the loaders at that size; best.pt records it, the
        model is dynamic). Returns whether the size changed."""
        if size == self.setup.data_cfg["size"]:
            return False
        self.train_loader, self.val_loader = self.loaders_at(size)
        self.setup.data_cfg = {**self.setup.data_cfg, "size": size}
        return True


def build_fold(cfg: Config, split: Split, fold: int, files: FoldFiles, seed: int,
               world: World = SINGLE) -> FoldParts:
    """The fold's model (as predict and bench build theirs), loaders, optimizer, schedule and loss; under DDP
    this rank's shares of the splits, and its steps and the global batch's lr for the optimizer. The recipes:
    the first epoch's trainable layers, EMA, mixing, prior correction."""
    t = cfg.train
    if world.distributed and t.head_epochs:
        raise UserError("train.head_epochs under DDP (--nproc): DDP fixes the trainable parameters when it wraps "
                        "the model; use model.train_layers, or train the fold in one process")
    # one set of weights for both input sizes: ViT-style models resample their position embeddings per input
    model_cfg = dataclasses.replace(cfg.model, dynamic_img_size=True) if t.finetune_size else cfg.model
    setup = build_model_for(model_cfg, len(split.classes), cfg.data.channels,
                            **runtime_kwargs(t) | world.device_kwargs())
    patch = getattr(getattr(setup.model, "patch_embed", None), "patch_size", None)
    if t.finetune_size and patch and t.finetune_size % patch[0]:
        raise UserError(f"train.finetune_size={t.finetune_size}: {cfg.model.name} cuts images into {patch[0]}px "
                        f"patches; use a multiple of {patch[0]}")
    val = split.fold == fold
    paths = np.asarray(split.paths, dtype=object)
    root = Path(cfg.data.dir)  # folds.csv paths are relative to the corpus folder
    shard = (world.rank, world.size) if world.distributed else None
    loaders: dict[int, tuple[DeviceLoader, DeviceLoader]] = {}

    def loaders_at(size: int) -> tuple[DeviceLoader, DeviceLoader]:
        """The train and validation loaders at input size `size`, built once (the cache keeps each size)."""
        if size not in loaders:
            data_cfg = {**setup.data_cfg, "size": size}
            with progress_bar() as progress:  # images not cached yet are decoded now, once, on every core
                loaders[size] = (
                    create_loader(root, paths[~val], split.y[~val], data_cfg, setup.device,
                                  **loader_kwargs(cfg, train=True), seed=seed, shard=shard, progress=progress),
                    create_loader(root, paths[val], split.y[val], data_cfg, setup.device,
                                  **loader_kwargs(cfg, train=False), shard=shard, progress=progress))
        return loaders[size]

    train_loader, val_loader = loaders_at(setup.data_cfg["size"])
    total_steps = optimizer_steps(len(train_loader), t)
    optimizer = create_optimizer(setup.model, world.scale_lr(t), total_steps)  # every layer's lr, frozen or not
    set_trainable(setup.model, epoch_layers(cfg.model.train_layers, t.head_epochs, 0), cfg.model.train_last_n)
    y_train = split.y[~val]
    shifted = t.prior_correction and t.sampler == "imbalanced"  # what the sampler took away from the logits
    prior = log_prior(y_train, len(split.classes)).to(setup.device) if shifted else None
    bias_name = classifier_bias_name(setup.model) if shifted else None
    if shifted and bias_name is None:
        console.print(f"fold {fold}: train.prior_correction: {cfg.model.name}'s classifier has no bias to hold "
                      "it; its probabilities stay those of the balanced draw")
        prior = None
    full = to_dict(cfg)
    train_config = {k: full[k] for k in TRAIN_SECTIONS} | ({"processes": world.size} if world.distributed else {})
    return FoldParts(fold, files, setup, train_loader, val_loader, optimizer,
                     create_scheduler(optimizer, t, total_steps, resolve_metric(t.metric)), create_loss(cfg.loss),
                     total_steps, split.classes, cfg.data.channels, dataclasses.asdict(model_cfg), train_config,
                     [i for i, v in zip(split.ids, val) if v], [label for label, v in zip(split.labels, val) if v],
                     split.y[val], world, world.wrap(setup.model, setup.net, t.compile),
                     ema=WeightEma(setup.model, t.ema_decay, t.ema_warmup) if t.ema_decay else None,
                     mix=create_mix(cfg.augment, len(split.classes)), prior=prior, bias_name=bias_name,
                     loaders_at=loaders_at, base_size=setup.data_cfg["size"])


def clear_leftovers(files: FoldFiles, fold: int) -> None:
    """Temporary files of a checkpoint write that a kill interrupted (one process trains a fold at a time)."""
    files.dir.mkdir(parents=True, exist_ok=True)
    left = remove_partial_writes(files.dir)
    if left:
        console.print(f"fold {fold}: removed {len(left)} file{'s' * (len(left) != 1)} left by an interrupted "
                      f"write ({', '.join(p.name for p in left)})")


def initial_state(parts: FoldParts) -> dict:
    """The training state to start from: last.pt's when it fits, else a fresh one (and no stale best.pt).
    Under DDP rank 0 vets last.pt (and sets a bad one aside); every rank loads it when rank 0 resumes from it."""
    state = {"epoch": 0, "best_score": None, "bad_epochs": 0, "history": []}
    last, world = parts.files.last_pt, parts.world
    resume = load_resume(last, parts.fold, parts.train_config, parts.setup.device) if world.main else None
    if world.broadcast(resume is not None) and not world.main:
        resume = read_checkpoint(last, RESUME_KEYS, parts.setup.device)
    if resume is not None:
        try:
            setup = parts.setup
            state = apply_resume(resume, last, setup.model, parts.optimizer, parts.scheduler, setup.amp, parts.ema)
            console.print(f"fold {parts.fold}: resuming after epoch {state['epoch']}")
        except CheckpointError as e:
            if world.main:
                start_over(e, parts.fold)
    if state["epoch"] == 0 and world.main:
        parts.files.best_pt.unlink(missing_ok=True)  # an earlier attempt's: its score is in no state this run knows
        parts.files.remove_epoch_pts()
    return state


def diverged(error: NonFiniteLoss, cfg: Config, amp: Amp) -> UserError:
    """The one line for a NaN/inf loss: where, and the settings that usually cure it, with their values now."""
    tries = [f"a lower train.lr (train.lr={cfg.train.lr:g} now)"]
    if amp.mode != "off":
        tries.append(f"train.amp=off ({amp.mode} now)")
    if cfg.loss.name == "focal":
        tries.append("loss.name=ce")
    return UserError(f"{error.where}; try {', '.join(tries)}")


# ---- the loop ---------------------------------------------------------------------------------------------

def validate(parts: FoldParts, where: str, progress, net: torch.nn.Module | None = None) -> tuple[dict, np.ndarray]:
    """The validation scores (log_loss, auc, accuracy...) and probabilities of the model as it is now (under DDP
    each rank predicts its share and every rank gets all of them, in order, so all score alike): the EMA's
    weights when on (or `net`), the prior correction added to the logits."""
    net = parts.eval_net if net is None else net
    prior = parts.prior
    forward = None if prior is None else (lambda m, x: torch.softmax(m(x).float() + prior, dim=1))
    probs = parts.world.gather_rows(lambda: predict(net, parts.val_loader, parts.setup.amp, parts.setup.device,
                                                    forward=forward, progress=progress,
                                                    description=f"{where} validate"), len(parts.y_val))
    return score(parts.y_val, probs), probs


def prepare_epoch(parts: FoldParts, cfg: Config, epoch: int) -> None:
    """What epoch `epoch` (0-based) trains and at which input size: train.head_epochs, then
    model.train_layers; the last train.finetune_epochs at train.finetune_size (loaders rebuilt at that size;
    best.pt records the size its weights were validated at)."""
    t = cfg.train
    if t.head_epochs:  # set every epoch: a resumed fold may start on either side of the switch
        set_trainable(parts.setup.model, epoch_layers(cfg.model.train_layers, t.head_epochs, epoch),
                      cfg.model.train_last_n)
        if parts.ema is not None:  # precise_bn tells frozen BatchNorm layers by their weights' requires_grad
            for ema_p, p in zip(parts.ema.module.parameters(), parts.setup.model.parameters()):
                ema_p.requires_grad_(p.requires_grad)
    if t.finetune_size:
        size = t.finetune_size if epoch >= t.epochs - t.finetune_epochs else parts.base_size
        if parts.use_size(size):
            console.print(f"fold {parts.fold}: epochs {epoch + 1}-{t.epochs} at {size}px")


def validated(parts: FoldParts, cfg: Config, where: str, progress, net: torch.nn.Module | None = None
              ) -> tuple[dict, np.ndarray]:
    """`validate`, after train.precise_bn's re-estimate of the BatchNorm statistics of the weights validated."""
    if cfg.train.precise_bn:
        target = parts.eval_net if net is None else net
        precise_bn(target, parts.train_loader, cfg.train.precise_bn, parts.setup.amp)
        if parts.world.distributed:
            pool_bn_stats(target, parts.world.sum, parts.world.size)
    return validate(parts, where, progress, net)


def fit_fold(cfg: Config, run_dir: Path, fold: int) -> dict:
    """Train fold `fold` to its best checkpoint and write its OOF predictions. Returns its best scores."""
    run = Run(run_dir)
    split = run.read_split()
    if fold not in split.folds:
        raise UserError(f"--fold {fold}: folds.csv has folds {split.folds}")
    files, world = run.fold(fold), distributed.current()
    if world.main:
        clear_leftovers(files, fold)
    metric, epochs, seed = resolve_metric(cfg.train.metric), cfg.train.epochs, cfg.train.seed + 1000 * fold
    seed_everything(seed)
    parts = build_fold(cfg, split, fold, files, seed, world)
    state = initial_state(parts)
    setup = parts.setup
    console.print(f"fold {fold}: {len(parts.train_loader.dataset)} train / {len(parts.val_loader.dataset)} val "
                  f"images, {cfg.model.name} at {setup.data_cfg['size']}px, {parts.total_steps} optimizer steps, "
                  f"amp {setup.amp.mode}, device {setup.device}{cpu_threads(setup.device)}")
    tracker = create_tracker(cfg.tracking if world.main else "none", run_dir, f"{cfg.name}-fold{fold}", "train",
                             to_dict(cfg))
    try:
        with progress_bar() as progress:
            for epoch in range(state["epoch"], epochs):
                if state["bad_epochs"] >= cfg.train.patience:
                    break
                prepare_epoch(parts, cfg, epoch)
                seed_everything(rank_seed(seed + epoch, world.rank))  # a resumed epoch draws the same again
                parts.train_loader.set_epoch(seed + epoch)
                start, where = time.perf_counter(), f"fold {fold} epoch {epoch + 1}/{epochs}"
                mix = parts.mix if parts.mix is not None and parts.mix.active(epoch + 1) else None
                try:
                    stats = train_one_epoch(parts.train_net, parts.train_loader, parts.loss_fn, parts.optimizer,
                                            parts.scheduler if per_step(parts.scheduler) else None, setup.amp,
                                            setup.device, cfg.train.accumulate, progress, where,
                                            world.sum if world.distributed else None, mix=mix,
                                            clip_grad=cfg.train.clip_grad, ema=parts.ema)
                except NonFiniteLoss as e:
                    raise diverged(e, cfg, setup.amp) from None
                scores, probs = validated(parts, cfg, where, progress)
                epoch_end(parts.scheduler, scores[metric])
                row = {"epoch": epoch + 1, **stats, "val_loss": scores["log_loss"],
                       **{f"val_{k}": v for k, v in scores.items()}, "seconds": time.perf_counter() - start}
                state["history"].append(row)
                improved = is_better(metric, scores[metric], state["best_score"])
                if improved:
                    state["best_score"], state["bad_epochs"] = scores[metric], 0
                    save_checkpoint(files.best_pt, best_checkpoint(parts, epoch + 1, metric, scores[metric], probs))
                else:
                    state["bad_epochs"] += 1
                if cfg.train.average_top_k > 1:
                    keep_snapshot(parts, state, epoch + 1, scores[metric], metric, cfg.train.average_top_k)
                state["epoch"] = epoch + 1
                save_checkpoint(files.last_pt, resume_checkpoint(parts, state))
                tracker.log(row, step=epoch + 1)
                console.print(epoch_line(where, stats, scores, metric, improved))
        if cfg.train.average_top_k > 1:
            average_best(parts, cfg, state, metric, progress)
        if not world.main:  # rank 0 writes the fold's files
            return {"fold": fold, metric: state["best_score"]}
        best = finish_fold(run, parts, state, metric)
        tracker.summary({f"best_{metric}": best["score"], "best_epoch": best["epoch"]})
        return {"fold": fold, metric: best["score"], "epoch": best["epoch"]}
    finally:
        tracker.finish()


def cpu_threads(device: torch.device) -> str:
    """On a CPU, how many threads torch computes with: results are bit-identical only at equal thread counts
    (make -j N gives each process the cores / N), so the fold's first line says it."""
    n = torch.get_num_threads()
    return f" ({n} thread{'' if n == 1 else 's'})" if device.type == "cpu" else ""


def keep_snapshot(parts: FoldParts, state: dict, epoch: int, value: float, metric: str, k: int) -> None:
    """train.average_top_k: this epoch's validated weights (and input size) kept while among the k best;
    the ranking lives in the training state (last.pt), the weights in fold<k>/epoch<n>.pt."""
    ranked, dropped = top_k(state.get("top_k", []), value, epoch, k, metric not in LOWER_IS_BETTER)
    state["top_k"] = ranked
    if any(e == epoch for _, e in ranked):
        save_checkpoint(parts.files.epoch_pt(epoch),
                        {"model": parts.eval_model.state_dict(), "size": parts.setup.data_cfg["size"]})
    for old in dropped:
        if old != epoch and parts.world.main:
            parts.files.epoch_pt(old).unlink(missing_ok=True)


def average_best(parts: FoldParts, cfg: Config, state: dict, metric: str, progress) -> None:
    """train.average_top_k at the fold's end: the mean of the k best epochs' weights (those validated at the
    best one's input size), validated; it replaces best.pt only when it scores better than the best epoch."""
    distributed.barrier()  # rank 0 wrote the snapshots
    # none left: a fold stopped after its average, before its OOF file, comes back here with nothing to do
    ranked = [(v, e) for v, e in state.get("top_k", []) if parts.files.epoch_pt(e).is_file()]
    if not ranked or state["best_score"] is None:
        return
    snapshots = [read_checkpoint(parts.files.epoch_pt(e), ("model", "size")) for _, e in ranked]
    same = [(e, s) for (_, e), s in zip(ranked, snapshots) if s["size"] == snapshots[0]["size"]]
    if len(same) < 2:
        console.print(f"fold {parts.fold}: train.average_top_k: {len(same)} of the best epochs ran at the best one's "
                      "input size; nothing to average")
    else:
        parts.use_size(same[0][1]["size"])
        weights = average_weights([s["model"] for _, s in same])
        model = copy.deepcopy(parts.eval_model)
        model.load_state_dict(weights)
        scores, probs = validated(parts, cfg, f"fold {parts.fold} average", progress, model)
        epochs = sorted(e for e, _ in same)
        better = is_better(metric, scores[metric], state["best_score"])
        console.print(f"fold {parts.fold}: the mean of epochs {', '.join(map(str, epochs))} scores {metric} "
                      f"{scores[metric]:.4f} against the best epoch's {state['best_score']:.4f}: "
                      f"{'it replaces' if better else 'kept'} best.pt")
        if better:
            state["best_score"] = scores[metric]
            best = best_checkpoint(parts, ranked[0][1], metric, scores[metric], probs, model.state_dict())
            save_checkpoint(parts.files.best_pt, {**best, "averaged": epochs})
    if parts.world.main:
        parts.files.remove_epoch_pts()


def epoch_line(where: str, stats: dict, scores: dict, metric: str, improved: bool) -> str:
    accuracy = "" if metric == "accuracy" else f"  acc {scores['accuracy']:.4f}"
    return (f"{where}  loss {stats['train_loss']:.4f}  val_loss {scores['log_loss']:.4f}  {metric} "
            f"{scores[metric]:.4f}{' *' if improved else ''}{accuracy}  lr {stats['lr']:.2e}  "
            f"{stats['train_img_s']:.0f} img/s")


def finish_fold(run: Run, parts: FoldParts, state: dict, metric: str) -> dict:
    """history.csv, then oof.csv (the best epoch's validation predictions: its presence marks the fold done);
    last.pt goes. Returns the best checkpoint."""
    if not parts.files.best_pt.is_file():
        raise UserError(f"fold {parts.fold}: no epoch gave a finite {metric}; check the labels of this fold")
    best = read_checkpoint(parts.files.best_pt, BEST_KEYS)
    probs = best["val_probs"].numpy()
    oof = Predictions(list(best["val_ids"]), parts.classes, probs, np.full(len(probs), parts.fold),
                      parts.val_labels)
    run.write_history(parts.fold, state["history"])
    run.write_fold_oof(parts.fold, oof)
    parts.files.last_pt.unlink(missing_ok=True)
    console.print(f"fold {parts.fold}: best {metric} {best['score']:.4f} at epoch {best['epoch']}")
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision train", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> holding config.yaml, folds.csv, classes.json")
    parser.add_argument("--fold", type=int, nargs="+", required=True, help="fold number(s) to train")
    parser.add_argument("--nproc", help="processes per fold on this machine, one per GPU (torchrun + DDP)")
    with distributed.ranks_quiet():  # under torchrun rank 0 alone prints
        args = parser.parse_args(argv)
        cfg = load_run_config(args.run_dir)
        stage = ["train", str(args.run_dir), "--fold", *map(str, args.fold)]
        if args.nproc is not None and torchrun.launched(args.nproc, cfg.train.device, stage):
            return  # the folds were trained by the processes torchrun started
        with distributed.process_group(cfg.train):
            for fold in args.fold:
                fit_fold(cfg, args.run_dir, fold)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
