"""foldvision's checkpoints, read and written in one place: a cut-short or foreign file is one line, never a torch
traceback, and a kill mid-write never leaves a cut-short one.

A fold (foldvision.stages.train) keeps three kinds in `fold<k>/`:

    best.pt      the best epoch's weights, what predict needs to rebuild the model without the config (classes,
                 `head`: the task kind and how the outputs map to probabilities or to the user's units, channels,
                 model config, the input's `Preprocessing` as `data_config`, and `timm`: the resolved architecture
                 and pretrained config, so an hf-hub:/local-dir: model needs neither) and its validation
                 predictions, the fold's OOF rows (`best_checkpoint`; predict reads it back)
    last.pt      after each epoch, all a fold needs to resume exactly where it stopped (`resume_checkpoint`,
                 `initial_state`); a cut-short or foreign one is set aside as `last.pt.corrupt`
    epoch<n>.pt  train.average_top_k: an epoch's validated weights and input while among the k best
                 (`keep_snapshot`, `best_snapshots`)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from foldvision.console import console
from foldvision.errors import UserError
from foldvision.files import remove_partial_writes, write_atomic
from foldvision.learn import distributed
from foldvision.learn.heads import Head
from foldvision.learn.models import timm_source
from foldvision.learn.recipes import top_k, with_prior
from foldvision.learn.transforms import Preprocessing
from foldvision.results.metrics import LOWER_IS_BETTER

if TYPE_CHECKING:  # the fold's parts and recipes, for the annotations only
    from foldvision.learn.engine import Amp
    from foldvision.learn.fold import FoldParts
    from foldvision.learn.recipes import WeightEma
    from foldvision.run import FoldFiles

RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "state", "config")
STATE_KEYS = {"epoch", "best_score", "bad_epochs", "history"}
BEST_KEYS = ("model", "epoch", "metric", "score", "classes", "channels", "model_config", "data_config", "val_ids",
             "val_probs")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: cut short, not a torch file, or not foldvision's. The caller adds
    what to do (set it aside and start over, or re-train the fold)."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def _first_sentence(error: BaseException) -> str:
    """The gist of a library's error (torch's miniz and unpickling messages run to paragraphs)."""
    text = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(error).__name__}: {text[:100]}" if text else type(error).__name__


# ---- reading ----------------------------------------------------------------------------------------------

def read_checkpoint(path: Path, keys: Iterable[str], map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint foldvision wrote (tensors and plain values only), checked to hold `keys`.

    Raises:
        CheckpointError: the file is unreadable (a kill or a full disk cut it short; random bytes; a pickle of
            arbitrary objects) or is not a dict holding every key in `keys`.
    """
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise CheckpointError(path, f"cannot be read ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - miniz, unpickling, EOF...: any of them means a damaged file
        raise CheckpointError(path, f"cut short or not a torch checkpoint ({_first_sentence(e)})") from None
    if not isinstance(content, dict):
        raise CheckpointError(path, f"not a foldvision checkpoint (it holds a {type(content).__name__}, not a dict)")
    missing = [key for key in keys if key not in content]
    if missing:
        raise CheckpointError(path, f"not a foldvision checkpoint (no {', '.join(repr(k) for k in missing)})")
    return content


def read_preprocessing(content: dict, path: Path) -> Preprocessing:
    """The input a checkpoint's weights were validated at (its `data_config`; one written before the spec held
    the channels takes the checkpoint's own `channels`)."""
    try:
        return Preprocessing.from_dict(content["data_config"], content.get("channels"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(path, f"not a foldvision checkpoint (its data_config: {_first_sentence(e)})") from None


def read_head(content: dict, path: Path) -> Head:
    """How a checkpoint's outputs map to what Predictions hold (one written before heads: single-label softmax)."""
    try:
        return Head.from_dict(content.get("head"), list(content["classes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"not a foldvision checkpoint (its head: {_first_sentence(e)})") from None


def load_weights(model: nn.Module, weights: dict, path: Path) -> None:
    """`model.load_state_dict(weights)`; weights of another architecture are a CheckpointError naming `path`."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(path, f"its weights do not fit the model ({_first_sentence(e)})") from None


# ---- writing ----------------------------------------------------------------------------------------------

def save_checkpoint(path: Path, content: dict) -> None:
    """torch.save to a temporary name, then renamed: a kill mid-write never leaves a cut-short checkpoint.
    Under DDP only rank 0 writes (the ranks hold the same weights)."""
    if not distributed.is_main():
        return
    write_atomic(path, lambda tmp: torch.save(content, tmp))


def clear_leftovers(files: FoldFiles, fold: int) -> None:
    """Temporary files of a checkpoint write that a kill interrupted (one process trains a fold at a time)."""
    files.dir.mkdir(parents=True, exist_ok=True)
    left = remove_partial_writes(files.dir)
    if left:
        console.print(f"fold {fold}: removed {len(left)} file{'s' * (len(left) != 1)} left by an interrupted "
                      f"write ({', '.join(p.name for p in left)})")


def best_checkpoint(parts: FoldParts, epoch: int, metric: str, value: float, probs: np.ndarray,
                    weights: dict | None = None) -> dict:
    """What best.pt holds: the weights (the validated ones: EMA's when on, `weights` when given; the prior
    correction in the classifier bias) and everything predict needs to rebuild the model without the config,
    at the input they were validated at, and the validation predictions that become the fold's OOF rows."""
    weights = parts.eval_model.state_dict() if weights is None else weights
    return {"model": with_prior(weights, parts.bias_name, parts.prior), "epoch": epoch, "metric": metric,
            "score": value, "classes": parts.classes, "head": parts.head.to_dict(), "channels": parts.channels,
            "model_config": parts.model_config,
            "data_config": parts.preprocessing.to_dict(), "timm": timm_source(parts.setup.model),
            "val_ids": parts.val_ids,
            "val_probs": torch.from_numpy(probs)}


# ---- resuming (last.pt) -----------------------------------------------------------------------------------

def resume_checkpoint(parts: FoldParts, state: dict) -> dict:
    """What last.pt holds after an epoch: enough to carry on exactly where the loop stopped."""
    return {"model": parts.setup.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict() if parts.scheduler else None,
            "scaler": parts.setup.amp.scaler.state_dict() if parts.setup.amp.scaler else None,
            "ema": parts.ema.state_dict() if parts.ema else None, "state": state, "config": parts.train_config}


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


# ---- the k best epochs' snapshots (epoch<n>.pt) -----------------------------------------------------------

def keep_snapshot(parts: FoldParts, state: dict, epoch: int, value: float, metric: str, k: int) -> None:
    """train.average_top_k: this epoch's validated weights (and input) kept while among the k best;
    the ranking lives in the training state (last.pt), the weights in fold<k>/epoch<n>.pt."""
    ranked, dropped = top_k(state.get("top_k", []), value, epoch, k, metric not in LOWER_IS_BETTER)
    state["top_k"] = ranked
    if any(e == epoch for _, e in ranked):
        save_checkpoint(parts.files.epoch_pt(epoch),
                        {"model": parts.eval_model.state_dict(), "data_config": parts.preprocessing.to_dict()})
    for old in dropped:
        if old != epoch and parts.world.main:
            parts.files.epoch_pt(old).unlink(missing_ok=True)


def best_snapshots(files: FoldFiles, state: dict, base: Preprocessing
                   ) -> tuple[Preprocessing, list[tuple[int, dict]]] | None:
    """The kept snapshots that ran at the best one's input, best first: that input and their (epoch, weights);
    None when none is left (a fold stopped after its average, before its OOF file, has nothing to do).
    A snapshot of before the spec (`size` alone) is at `base` with that size."""
    ranked = [e for _, e in state.get("top_k", []) if files.epoch_pt(e).is_file()]
    if not ranked:
        return None
    kept = []
    for epoch in ranked:
        content = read_checkpoint(files.epoch_pt(epoch), ("model",))
        spec = base.at(content["size"]) if "size" in content else read_preprocessing(content, files.epoch_pt(epoch))
        kept.append((epoch, content["model"], spec))
    return kept[0][2], [(epoch, weights) for epoch, weights, spec in kept if spec == kept[0][2]]
