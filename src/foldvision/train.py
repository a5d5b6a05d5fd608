"""Stage 2: train one model per fold; the fold's validation predictions are its out-of-fold (OOF) rows.

    python -m foldvision.train runs/<exp> --fold 0

Reads `runs/<exp>/config.yaml`, `folds.csv` and `classes.json`. Writes to `runs/<exp>/fold<k>/`:
`best.pt` (weights of the best epoch by the task metric, with their validation predictions), `oof.csv`
(id, fold, label, one probability column per class) and `history.csv` (one row per epoch). `oof.csv` is
written last, so its presence means the fold is done. While a fold runs, `last.pt` holds everything needed to
resume it after an interruption; it is deleted when the fold finishes.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from foldvision.config import Config, to_dict
from foldvision.run import load_run_config
from foldvision.console import console
from foldvision.engine import Amp, NonFiniteLoss, predict, progress_bar, resolve_device, train_one_epoch
from foldvision.errors import UserError, remove_partial_writes, write_atomic
from foldvision.loader import create_loader
from foldvision.losses import create_loss
from foldvision.metrics import is_better, resolve_metric, score
from foldvision.models import CheckpointError, create_model, data_config, load_weights, read_checkpoint
from foldvision.optim import create_optimizer, create_scheduler, optimizer_steps
from foldvision.tables import oof_frame, read_split
from foldvision.tracking import create_tracker


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "state", "config")
STATE_KEYS = {"epoch", "best_score", "bad_epochs", "history"}
BEST_KEYS = ("model", "epoch", "metric", "score", "classes", "channels", "model_config", "data_config", "val_ids",
             "val_probs")


def save_checkpoint(path: Path, content: dict) -> None:
    """torch.save to a temporary name, then renamed: a kill mid-write never leaves a cut-short checkpoint."""
    write_atomic(path, lambda tmp: torch.save(content, tmp))


def set_aside(path: Path) -> Path:
    """Rename a damaged file to `<name>.corrupt` (kept for a look, out of the way of the next run)."""
    aside = path.with_name(path.name + ".corrupt")
    path.replace(aside)
    return aside


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
        set_aside(path)
        console.print(f"fold {fold}: {e.path} {e.problem}; set aside as {path.name}.corrupt, "
                      f"starting fold {fold} from scratch")
        return None
    if resume["config"] != train_config:
        console.print(f"fold {fold}: the config changed since {path.name} was written; starting over")
        return None
    return resume


def apply_resume(resume: dict, path: Path, model, optimizer, scheduler, amp: Amp) -> dict:
    """Load the resumed weights and optimizer, scheduler and scaler states; returns the training state.

    Raises:
        CheckpointError: the weights do not fit the model (checked before anything is changed).
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = resume["model"]
    if not isinstance(saved, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in saved.items()} != expected:
        raise CheckpointError(path, "its weights do not fit the model")
    try:  # the optimizer checks its groups before it changes anything
        optimizer.load_state_dict(resume["optimizer"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"its optimizer state does not fit ({type(e).__name__})") from None
    load_weights(model, saved, path)
    if scheduler is not None and resume["scheduler"]:
        scheduler.load_state_dict(resume["scheduler"])
    if amp.scaler is not None and resume["scaler"]:
        amp.scaler.load_state_dict(resume["scaler"])
    return resume["state"]


def diverged(error: NonFiniteLoss, cfg: Config, amp: Amp) -> UserError:
    """The one line for a NaN/inf loss: where, and the settings that usually cure it, with their values now."""
    tries = [f"a lower train.lr (train.lr={cfg.train.lr:g} now)"]
    if amp.mode != "off":
        tries.append(f"train.amp=off ({amp.mode} now)")
    if cfg.loss.name == "focal":
        tries.append("loss.name=ce")
    return UserError(f"{error.where}; try {', '.join(tries)}")


def fit_fold(cfg: Config, run_dir: Path, fold: int) -> dict:
    """Train fold `fold` to its best checkpoint and write its OOF predictions. Returns its best scores."""
    table, classes = read_split(run_dir)
    if fold not in set(table["fold"]):
        raise UserError(f"--fold {fold}: folds.csv has folds {sorted(set(table['fold']))}")
    fold_dir = run_dir / f"fold{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    left = remove_partial_writes(fold_dir)  # a kill during a checkpoint write: only one process trains a fold
    if left:
        console.print(f"fold {fold}: removed {len(left)} file{'s' * (len(left) != 1)} left by an interrupted "
                      f"write ({', '.join(p.name for p in left)})")
    train_rows, val_rows = table[table["fold"] != fold], table[table["fold"] == fold].reset_index(drop=True)
    metric = resolve_metric(cfg.train.metric)
    seed = cfg.train.seed + 1000 * fold
    seed_everything(seed)

    device = resolve_device(cfg.train.device)
    channels = cfg.data.channels
    model = create_model(cfg.model, len(classes), channels).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # the loader's batches come in channels_last
    net = torch.compile(model) if cfg.train.compile else model  # `net` runs, `model` is what checkpoints hold
    dcfg = data_config(model, cfg.model, channels)
    image_dir = Path(cfg.data.dir)  # folds.csv paths are relative to the corpus folder
    with progress_bar() as progress:  # images not cached yet are decoded now, once, on every core
        train_loader = create_loader(cfg, dcfg, device, image_dir, train_rows["path"], train_rows["target"],
                                     train=True, seed=seed, progress=progress)
        val_loader = create_loader(cfg, dcfg, device, image_dir, val_rows["path"], val_rows["target"],
                                   train=False, batch_size=cfg.predict.batch_size, progress=progress)

    total_steps = optimizer_steps(len(train_loader), cfg.train)
    optimizer = create_optimizer(model, cfg.train, total_steps)
    scheduler = create_scheduler(optimizer, cfg.train, total_steps)
    loss_fn = create_loss(cfg.loss)
    amp = Amp(cfg.train.amp, device)

    state = {"epoch": 0, "best_score": None, "bad_epochs": 0, "history": []}
    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    train_config = {k: to_dict(cfg)[k] for k in ("data", "cv", "model", "augment", "train", "loss")}
    resume = load_resume(last_path, fold, train_config, device)
    if resume is not None:
        try:
            state = apply_resume(resume, last_path, model, optimizer, scheduler, amp)
            console.print(f"fold {fold}: resuming after epoch {state['epoch']}")
        except CheckpointError as e:
            set_aside(last_path)
            console.print(f"fold {fold}: {e.path} {e.problem}; set aside as {last_path.name}.corrupt, "
                          f"starting fold {fold} from scratch")
    if state["epoch"] == 0:
        best_path.unlink(missing_ok=True)  # an earlier attempt's: its score is in no state this run knows

    y_val = val_rows["target"].to_numpy()
    console.print(f"fold {fold}: {len(train_loader.dataset)} train / {len(val_loader.dataset)} val images, "
                  f"{cfg.model.name} at {dcfg['size']}px, {total_steps} optimizer steps, amp {amp.mode}, device {device}")
    tracker = create_tracker(cfg.tracking, run_dir, f"{cfg.name}-fold{fold}", "train", to_dict(cfg))
    try:
        with progress_bar() as progress:
            for epoch in range(state["epoch"], cfg.train.epochs):
                if state["bad_epochs"] >= cfg.train.patience:
                    break
                seed_everything(seed + epoch)  # a resumed epoch draws the same batches and augmentations
                train_loader.set_epoch(seed + epoch)
                start = time.perf_counter()
                where = f"fold {fold} epoch {epoch + 1}/{cfg.train.epochs}"
                try:
                    stats = train_one_epoch(net, train_loader, loss_fn, optimizer, scheduler, amp, device,
                                            cfg.train.accumulate, progress, where)
                except NonFiniteLoss as e:
                    raise diverged(e, cfg, amp) from None
                probs = predict(net, val_loader, amp, device, progress=progress, description=f"{where} validate")
                scores = score(y_val, probs)
                row = {"epoch": epoch + 1, **stats, "val_loss": scores["log_loss"],
                       **{f"val_{k}": v for k, v in scores.items()}, "seconds": time.perf_counter() - start}
                state["history"].append(row)
                improved = is_better(metric, scores[metric], state["best_score"])
                if improved:
                    state["best_score"], state["bad_epochs"] = scores[metric], 0
                    best = {"model": model.state_dict(), "epoch": epoch + 1, "metric": metric,
                            "score": scores[metric], "classes": classes, "channels": channels,
                            "model_config": to_dict(cfg)["model"], "data_config": dcfg,
                            "val_ids": val_rows["id"].tolist(), "val_probs": torch.from_numpy(probs)}
                    save_checkpoint(best_path, best)
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch + 1
                resume = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler else None,
                          "scaler": amp.scaler.state_dict() if amp.scaler else None,
                          "state": state, "config": train_config}
                save_checkpoint(last_path, resume)
                tracker.log(row, step=epoch + 1)
                accuracy = "" if metric == "accuracy" else f"  acc {scores['accuracy']:.4f}"
                console.print(
                    f"fold {fold} epoch {epoch + 1}/{cfg.train.epochs}  loss {stats['train_loss']:.4f}  "
                    f"val_loss {scores['log_loss']:.4f}  {metric} {scores[metric]:.4f}{' *' if improved else ''}"
                    f"{accuracy}  lr {stats['lr']:.2e}  {stats['train_img_s']:.0f} img/s"
                )
        if not best_path.is_file():
            raise UserError(f"fold {fold}: no epoch gave a finite {metric}; check the labels of this fold")
        best = read_checkpoint(best_path, BEST_KEYS)
        oof = oof_frame(best["val_ids"], fold, val_rows["label"].tolist(), best["val_probs"].numpy(), classes)
        history = pd.DataFrame(state["history"])
        write_atomic(fold_dir / "history.csv", lambda tmp: history.to_csv(tmp, index=False))
        write_atomic(fold_dir / "oof.csv", lambda tmp: oof.to_csv(tmp, index=False))  # last: marks the fold done
        last_path.unlink(missing_ok=True)
        tracker.summary({f"best_{metric}": best["score"], "best_epoch": best["epoch"]})
        console.print(f"fold {fold}: best {metric} {best['score']:.4f} at epoch {best['epoch']}")
        return {"fold": fold, metric: best["score"], "epoch": best["epoch"]}
    finally:
        tracker.finish()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision train", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> holding config.yaml, folds.csv, classes.json")
    parser.add_argument("--fold", type=int, nargs="+", required=True, help="fold number(s) to train")
    args = parser.parse_args(argv)
    cfg = load_run_config(args.run_dir)
    for fold in args.fold:
        fit_fold(cfg, args.run_dir, fold)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
