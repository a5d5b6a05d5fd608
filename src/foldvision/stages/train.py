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
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
from foldvision.results.metrics import is_better, resolve_metric, score
from foldvision.learn.models import CheckpointError, read_checkpoint
from foldvision.learn.optim import create_optimizer, create_scheduler, optimizer_steps
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


def apply_resume(resume: dict, path: Path, model: torch.nn.Module, optimizer, scheduler, amp: Amp) -> dict:
    """Load the resumed weights and optimizer, scheduler and scaler states; returns the training state.

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
    return resume["state"]


def resume_checkpoint(parts: FoldParts, state: dict) -> dict:
    """What last.pt holds after an epoch: enough to carry on exactly where the loop stopped."""
    return {"model": parts.setup.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict() if parts.scheduler else None,
            "scaler": parts.setup.amp.scaler.state_dict() if parts.setup.amp.scaler else None,
            "state": state, "config": parts.train_config}


def best_checkpoint(parts: FoldParts, epoch: int, metric: str, value: float, probs: np.ndarray) -> dict:
    """What best.pt holds: the weights and everything predict needs to rebuild the model without the config,
    and the validation predictions that become the fold's OOF rows."""
    return {"model": parts.setup.model.state_dict(), "epoch": epoch, "metric": metric, "score": value,
            "classes": parts.classes, "channels": parts.channels, "model_config": parts.model_config,
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


def build_fold(cfg: Config, split: Split, fold: int, files: FoldFiles, seed: int,
               world: World = SINGLE) -> FoldParts:
    """The fold's model (as predict and bench build theirs), loaders, optimizer, schedule and loss; under DDP
    this rank's shares of the splits, and its steps and the global batch's lr for the optimizer."""
    setup = build_model_for(cfg.model, len(split.classes), cfg.data.channels,
                            **runtime_kwargs(cfg.train) | world.device_kwargs())
    val = split.fold == fold
    paths = np.asarray(split.paths, dtype=object)
    root = Path(cfg.data.dir)  # folds.csv paths are relative to the corpus folder
    shard = (world.rank, world.size) if world.distributed else None
    with progress_bar() as progress:  # images not cached yet are decoded now, once, on every core
        train_loader = create_loader(root, paths[~val], split.y[~val], setup.data_cfg, setup.device,
                                     **loader_kwargs(cfg, train=True), seed=seed, shard=shard, progress=progress)
        val_loader = create_loader(root, paths[val], split.y[val], setup.data_cfg, setup.device,
                                   **loader_kwargs(cfg, train=False), shard=shard, progress=progress)
    total_steps = optimizer_steps(len(train_loader), cfg.train)
    optimizer = create_optimizer(setup.model, world.scale_lr(cfg.train), total_steps)
    full = to_dict(cfg)
    train_config = {k: full[k] for k in TRAIN_SECTIONS} | ({"processes": world.size} if world.distributed else {})
    return FoldParts(fold, files, setup, train_loader, val_loader, optimizer,
                   create_scheduler(optimizer, cfg.train, total_steps), create_loss(cfg.loss), total_steps,
                   split.classes, cfg.data.channels, full["model"], train_config,
                   [i for i, v in zip(split.ids, val) if v], [label for label, v in zip(split.labels, val) if v],
                   split.y[val], world, world.wrap(setup.model, setup.net, cfg.train.compile))


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
            state = apply_resume(resume, last, setup.model, parts.optimizer, parts.scheduler, setup.amp)
            console.print(f"fold {parts.fold}: resuming after epoch {state['epoch']}")
        except CheckpointError as e:
            if world.main:
                start_over(e, parts.fold)
    if state["epoch"] == 0 and world.main:
        parts.files.best_pt.unlink(missing_ok=True)  # an earlier attempt's: its score is in no state this run knows
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

def validate(parts: FoldParts, where: str, progress) -> tuple[dict, np.ndarray]:
    """The validation scores (log_loss, auc, accuracy...) and probabilities of the model as it is now (under DDP
    each rank predicts its share and every rank gets all of them, in order, so all score alike)."""
    probs = parts.world.gather_rows(lambda: predict(parts.setup.net, parts.val_loader, parts.setup.amp,
                                                    parts.setup.device, progress=progress,
                                                    description=f"{where} validate"), len(parts.y_val))
    return score(parts.y_val, probs), probs


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
                  f"amp {setup.amp.mode}, device {setup.device}")
    tracker = create_tracker(cfg.tracking if world.main else "none", run_dir, f"{cfg.name}-fold{fold}", "train",
                             to_dict(cfg))
    try:
        with progress_bar() as progress:
            for epoch in range(state["epoch"], epochs):
                if state["bad_epochs"] >= cfg.train.patience:
                    break
                seed_everything(rank_seed(seed + epoch, world.rank))  # a resumed epoch draws the same again
                parts.train_loader.set_epoch(seed + epoch)
                start, where = time.perf_counter(), f"fold {fold} epoch {epoch + 1}/{epochs}"
                try:
                    stats = train_one_epoch(parts.train_net, parts.train_loader, parts.loss_fn, parts.optimizer,
                                            parts.scheduler, setup.amp, setup.device, cfg.train.accumulate,
                                            progress, where, world.sum if world.distributed else None)
                except NonFiniteLoss as e:
                    raise diverged(e, cfg, setup.amp) from None
                scores, probs = validate(parts, where, progress)
                row = {"epoch": epoch + 1, **stats, "val_loss": scores["log_loss"],
                       **{f"val_{k}": v for k, v in scores.items()}, "seconds": time.perf_counter() - start}
                state["history"].append(row)
                improved = is_better(metric, scores[metric], state["best_score"])
                if improved:
                    state["best_score"], state["bad_epochs"] = scores[metric], 0
                    save_checkpoint(files.best_pt, best_checkpoint(parts, epoch + 1, metric, scores[metric], probs))
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch + 1
                save_checkpoint(files.last_pt, resume_checkpoint(parts, state))
                tracker.log(row, step=epoch + 1)
                console.print(epoch_line(where, stats, scores, metric, improved))
        if not world.main:  # rank 0 writes the fold's files
            return {"fold": fold, metric: state["best_score"]}
        best = finish_fold(run, parts, state, metric)
        tracker.summary({f"best_{metric}": best["score"], "best_epoch": best["epoch"]})
        return {"fold": fold, metric: best["score"], "epoch": best["epoch"]}
    finally:
        tracker.finish()


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
        if args.nproc is not None and distributed.launched(args.nproc, cfg.train.device, stage):
            return  # the folds were trained by the processes torchrun started
        with distributed.process_group(cfg.train):
            for fold in args.fold:
                fit_fold(cfg, args.run_dir, fold)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
