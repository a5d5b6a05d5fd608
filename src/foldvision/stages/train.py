"""Stage 2: train one model per fold; the fold's validation predictions are its out-of-fold (OOF) rows.

    python -m foldvision.stages.train runs/<exp> --fold 0

Reads the run folder's config, split and class order. Writes into `fold<k>/`: `best.pt` (weights of the best
epoch by the task metric, with their validation predictions), `history.csv` (one row per epoch) and `oof.csv`
(id, fold, label, one probability column per class), written last, so its presence means the fold is done.
While a fold runs, `last.pt` holds everything needed to resume it after an interruption; it is deleted when the
fold finishes. A cut-short or foreign `last.pt` is set aside (`last.pt.corrupt`) and the fold starts over.

    python -m foldvision train runs/<exp> --fold 0 --nproc 4      (one fold on 4 GPUs: torchrun + DDP)

trains each fold in 4 processes (`foldvision.learn.distributed`); rank 0 alone writes the files above.

This module is the loop: `fit_fold` owns the epochs (`fit_epoch`: `train_one_epoch`, then `validate`), the best
checkpoint and the fold's OOF file. What the fold trains with is built by foldvision.learn.fold (`build_fold`);
its checkpoints are read and written by foldvision.learn.checkpoint. The fine-tuning recipes (EMA, Mixup/CutMix,
freezing, precise BN, prior correction, a larger last input size, the average of the best epochs) are
foldvision.learn.recipes' glue, each switched on by a config key: with EMA the EMA weights are the ones validated
and kept; with train.average_top_k the k best epochs' weights wait in `fold<k>/epoch<n>.pt` until the fold ends.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path

import numpy as np
import torch

from foldvision.campaign import torchrun
from foldvision.config import Config, check_task, to_dict
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.learn import distributed
from foldvision.learn.checkpoint import (BEST_KEYS, best_checkpoint, best_snapshots, clear_leftovers, initial_state,
                                         keep_snapshot, read_checkpoint, resume_checkpoint, save_checkpoint)
from foldvision.learn.distributed import rank_seed
from foldvision.learn.engine import Amp, NonFiniteLoss, predict, progress_bar, train_one_epoch
from foldvision.learn.fold import FoldParts, build_fold
from foldvision.learn.optim import epoch_end, per_step
from foldvision.learn.recipes import average_weights, epoch_layers, pool_bn_stats, precise_bn, set_trainable
from foldvision.learn.transforms import Preprocessing
from foldvision.results.metrics import is_better, resolve_metric, score
from foldvision.results.tracking import create_tracker
from foldvision.run import Predictions, Run, load_run_config


# history.csv's val_loss per task kind: the validation score on the training loss's scale where there is one
# (regression and ordinal train on standardised values: their metrics are in the user's units, not a loss's)
VAL_LOSS = {"single": "log_loss", "multilabel": "bce"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit_fold(cfg: Config, run_dir: Path, fold: int) -> dict:
    """Train fold `fold` to its best checkpoint and write its OOF predictions. Returns its best scores."""
    run = Run(run_dir)
    split = run.read_split()
    if fold not in split.folds:
        raise UserError(f"--fold {fold}: folds.csv has folds {split.folds}")
    files, world = run.fold(fold), distributed.current()
    if world.main:
        clear_leftovers(files, fold)
    check_task(cfg, split.kind, f"{run.classes_json}: data.task=auto read a {split.kind} target: ")
    metric, seed = resolve_metric(cfg.train.metric, split.kind), cfg.train.seed + 1000 * fold
    seed_everything(seed)
    parts = build_fold(cfg, split, fold, files, seed, world)
    state = initial_state(parts)
    setup = parts.setup
    console.print(f"fold {fold}: {len(parts.train_loader.dataset)} train / {len(parts.val_loader.dataset)} val "
                  f"images, {cfg.model.name} at {parts.preprocessing.size}px, {parts.total_steps} optimizer steps, "
                  f"amp {setup.amp.mode}, device {setup.device}{cpu_threads(setup.device)}")
    tracker = create_tracker(cfg.tracking if world.main else "none", run_dir, f"{cfg.name}-fold{fold}", "train",
                             to_dict(cfg))
    try:
        with progress_bar() as progress:
            for epoch in range(state["epoch"], cfg.train.epochs):
                if state["bad_epochs"] >= cfg.train.patience:
                    break
                row, line = fit_epoch(parts, cfg, state, epoch, seed, metric, progress)
                tracker.log(row, step=epoch + 1)
                console.print(line)
        if cfg.train.average_top_k > 1:
            average_best(parts, cfg, state, metric, progress)
        if not world.main:  # rank 0 writes the fold's files
            return {"fold": fold, metric: state["best_score"]}
        best = finish_fold(run, parts, state, metric)
        tracker.summary({f"best_{metric}": best["score"], "best_epoch": best["epoch"]})
        return {"fold": fold, metric: best["score"], "epoch": best["epoch"]}
    finally:
        tracker.finish()


def fit_epoch(parts: FoldParts, cfg: Config, state: dict, epoch: int, seed: int, metric: str, progress
              ) -> tuple[dict, str]:
    """Epoch `epoch` (0-based): train, validate, best.pt when it is the best so far (and its snapshot with
    train.average_top_k), then last.pt with the state after it. Returns its history row and its line."""
    setup, world, epochs = parts.setup, parts.world, cfg.train.epochs
    prepare_epoch(parts, cfg, epoch)
    seed_everything(rank_seed(seed + epoch, world.rank))  # a resumed epoch draws the same again
    parts.train_loader.set_epoch(seed + epoch)
    start, where = time.perf_counter(), f"fold {parts.fold} epoch {epoch + 1}/{epochs}"
    mix = parts.mix if parts.mix is not None and parts.mix.active(epoch + 1) else None
    try:
        stats = train_one_epoch(parts.train_net, parts.train_loader, parts.loss_fn, parts.optimizer,
                                parts.scheduler if per_step(parts.scheduler) else None, setup.amp, setup.device,
                                cfg.train.accumulate, progress, where, world.sum if world.distributed else None,
                                mix=mix, clip_grad=cfg.train.clip_grad, ema=parts.ema, head=parts.head)
    except NonFiniteLoss as e:
        raise diverged(e, cfg, setup.amp) from None
    scores, probs = validated(parts, cfg, where, progress)
    epoch_end(parts.scheduler, scores[metric])
    loss = VAL_LOSS.get(parts.head.kind)
    row = {"epoch": epoch + 1, **stats, **({"val_loss": scores[loss]} if loss in scores else {}),
           **{f"val_{k}": v for k, v in scores.items()}, "seconds": time.perf_counter() - start}
    state["history"].append(row)
    improved = is_better(metric, scores[metric], state["best_score"])
    if improved:
        state["best_score"], state["bad_epochs"] = scores[metric], 0
        save_checkpoint(parts.files.best_pt, best_checkpoint(parts, epoch + 1, metric, scores[metric], probs))
    else:
        state["bad_epochs"] += 1
    if cfg.train.average_top_k > 1:
        keep_snapshot(parts, state, epoch + 1, scores[metric], metric, cfg.train.average_top_k)
    state["epoch"] = epoch + 1
    save_checkpoint(parts.files.last_pt, resume_checkpoint(parts, state))
    return row, epoch_line(where, stats, scores, metric, improved, loss)


def prepare_epoch(parts: FoldParts, cfg: Config, epoch: int) -> None:
    """What epoch `epoch` (0-based) trains and at which input: train.head_epochs, then model.train_layers; the
    last train.finetune_epochs at train.finetune_size (the model's input at that size: loaders rebuilt for it,
    best.pt records it)."""
    t = cfg.train
    if t.head_epochs:  # set every epoch: a resumed fold may start on either side of the switch
        set_trainable(parts.setup.model, epoch_layers(cfg.model.train_layers, t.head_epochs, epoch),
                      cfg.model.train_last_n)
        if parts.ema is not None:  # precise_bn tells frozen BatchNorm layers by their weights' requires_grad
            for ema_p, p in zip(parts.ema.module.parameters(), parts.setup.model.parameters()):
                ema_p.requires_grad_(p.requires_grad)
    if t.finetune_size:
        model_input = parts.setup.preprocessing
        spec = model_input.at(t.finetune_size) if epoch >= t.epochs - t.finetune_epochs else model_input
        if parts.use(spec):
            console.print(f"fold {parts.fold}: epochs {epoch + 1}-{t.epochs} at {spec.size}px")


def validated(parts: FoldParts, cfg: Config, where: str, progress, net: torch.nn.Module | None = None
              ) -> tuple[dict, np.ndarray]:
    """`validate`, after train.precise_bn's re-estimate of the BatchNorm statistics of the weights validated."""
    if cfg.train.precise_bn:
        target = parts.eval_net if net is None else net
        precise_bn(target, parts.train_loader, cfg.train.precise_bn, parts.setup.amp)
        if parts.world.distributed:
            pool_bn_stats(target, parts.world.sum, parts.world.size)
    return validate(parts, where, progress, net)


def validate(parts: FoldParts, where: str, progress, net: torch.nn.Module | None = None) -> tuple[dict, np.ndarray]:
    """The validation scores (the task kind's: log_loss, auc, accuracy... for classes) and probabilities (or
    values in the user's units: the fold's head) of the model as it is now (under DDP each rank predicts its
    share and every rank gets all of them, in order, so all score alike): the EMA's weights when on (or `net`),
    the prior correction added to the logits."""
    net, head, prior = parts.eval_net if net is None else net, parts.head, parts.prior
    forward = None if prior is None else (lambda m, x: head.values(m(x).float() + prior))
    probs = parts.world.gather_rows(lambda: predict(net, parts.val_loader, parts.setup.amp, parts.setup.device,
                                                    forward=forward, progress=progress,
                                                    description=f"{where} validate", head=head), len(parts.y_val))
    return score(parts.y_val, probs, head.kind, len(head.names)), probs


def average_best(parts: FoldParts, cfg: Config, state: dict, metric: str, progress) -> None:
    """train.average_top_k at the fold's end: the mean of the k best epochs' weights (those validated at the
    best one's input), validated; it replaces best.pt only when it scores better than the best epoch."""
    distributed.barrier()  # rank 0 wrote the snapshots
    if state["best_score"] is None:
        return
    found = best_snapshots(parts.files, state, parts.setup.preprocessing)
    if found is None:
        return
    spec, same = found
    if len(same) < 2:
        console.print(f"fold {parts.fold}: train.average_top_k: {len(same)} of the best epochs ran at the best one's "
                      "input size; nothing to average")
    else:
        validate_average(parts, cfg, state, metric, progress, spec, same)
    if parts.world.main:
        parts.files.remove_epoch_pts()


def validate_average(parts: FoldParts, cfg: Config, state: dict, metric: str, progress, spec: Preprocessing,
                     snapshots: list[tuple[int, dict]]) -> None:
    """The mean of `snapshots` (epoch, weights; the best first) validated at `spec`; best.pt when better."""
    parts.use(spec)
    model = copy.deepcopy(parts.eval_model)
    model.load_state_dict(average_weights([weights for _, weights in snapshots]))
    scores, probs = validated(parts, cfg, f"fold {parts.fold} average", progress, model)
    epochs = sorted(e for e, _ in snapshots)
    better = is_better(metric, scores[metric], state["best_score"])
    console.print(f"fold {parts.fold}: the mean of epochs {', '.join(map(str, epochs))} scores {metric} "
                  f"{scores[metric]:.4f} against the best epoch's {state['best_score']:.4f}: "
                  f"{'it replaces' if better else 'kept'} best.pt")
    if better:
        state["best_score"] = scores[metric]
        best = best_checkpoint(parts, snapshots[0][0], metric, scores[metric], probs, model.state_dict())
        save_checkpoint(parts.files.best_pt, {**best, "averaged": epochs})


def finish_fold(run: Run, parts: FoldParts, state: dict, metric: str) -> dict:
    """history.csv, then oof.csv (the best epoch's validation predictions: its presence marks the fold done);
    last.pt goes. Returns the best checkpoint."""
    if not parts.files.best_pt.is_file():
        raise UserError(f"fold {parts.fold}: no epoch gave a finite {metric}; check the labels of this fold")
    best = read_checkpoint(parts.files.best_pt, BEST_KEYS)
    probs = best["val_probs"].numpy()
    oof = Predictions(list(best["val_ids"]), parts.classes, probs, np.full(len(probs), parts.fold),
                      parts.val_labels, parts.head.kind)
    run.write_history(parts.fold, state["history"])
    run.write_fold_oof(parts.fold, oof)
    parts.files.last_pt.unlink(missing_ok=True)
    console.print(f"fold {parts.fold}: best {metric} {best['score']:.4f} at epoch {best['epoch']}")
    return best


def diverged(error: NonFiniteLoss, cfg: Config, amp: Amp) -> UserError:
    """The one line for a NaN/inf loss: where, and the settings that usually cure it, with their values now."""
    tries = [f"a lower train.lr (train.lr={cfg.train.lr:g} now)"]
    if amp.mode != "off":
        tries.append(f"train.amp=off ({amp.mode} now)")
    if cfg.loss.name in ("focal", "focal_bce", "asl"):
        tries.append("loss.name=" + ("ce" if cfg.loss.name == "focal" else "bce"))
    return UserError(f"{error.where}; try {', '.join(tries)}")


def epoch_line(where: str, stats: dict, scores: dict, metric: str, improved: bool, loss: str | None = "log_loss"
               ) -> str:
    """The epoch's line: the training loss, the validation loss (`loss`: the task kind's, when it has one), the
    metric, and the accuracy beside it (for the kinds that score one)."""
    val_loss = f"  val_loss {scores[loss]:.4f}" if loss in scores else ""
    accuracy = "" if metric == "accuracy" or "accuracy" not in scores else f"  acc {scores['accuracy']:.4f}"
    return (f"{where}  loss {stats['train_loss']:.4f}{val_loss}  {metric} "
            f"{scores[metric]:.4f}{' *' if improved else ''}{accuracy}  lr {stats['lr']:.2e}  "
            f"{stats['train_img_s']:.0f} img/s")


def cpu_threads(device: torch.device) -> str:
    """On a CPU, how many threads torch computes with: results are bit-identical only at equal thread counts
    (make -j N gives each process the cores / N), so the fold's first line says it."""
    n = torch.get_num_threads()
    return f" ({n} thread{'' if n == 1 else 's'})" if device.type == "cpu" else ""


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
