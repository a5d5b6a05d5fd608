"""The loop's parts: one model set-up for train, predict and bench (`build_model_for`: model, input spec,
device, AMP), and `train_one_epoch` and `predict`, each taking its parts and returning plain values."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.utils import dispatch_clip_grad
from torch import nn

from foldvision.config import ModelConfig, TrainConfig
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.results.metrics import score
from foldvision.learn.checkpoint import load_weights
from foldvision.learn.heads import Head
from foldvision.learn.models import create_model, preprocessing as model_preprocessing
from foldvision.learn.optim import current_lr
from foldvision.learn.recipes import LossMix, WeightEma, keep_frozen_norms, mixed_loss
from foldvision.learn.transforms import Preprocessing


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite; `where` names the epoch and step, the caller adds what to try."""

    def __init__(self, description: str, value: float, step: int, steps: int):
        self.where = f"{description}: the training loss is {value} at step {step} of {steps}"
        super().__init__(f"{self.where}; try a lower train.lr or train.amp=off")


def check_finite(probs: np.ndarray, description: str) -> np.ndarray:
    """`probs`, or a UserError when a row holds NaN or inf: scikit-learn's metrics and the OOF and test tables
    would otherwise fail later (a traceback) or carry NaN silently."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise UserError(f"{description}: {int(bad.sum())} of {len(probs)} rows of predicted probabilities are not "
                        "finite (NaN or inf): the model diverged; try a lower train.lr or train.amp=off")
    return probs


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={setting}: no CUDA device here; use train.device=auto or cpu")
    return torch.device(setting)


def _cpu_has_bf16() -> bool:
    try:  # True on CPUs with native bf16 (AVX512-BF16, AMX); elsewhere bf16 is emulated and slower than fp32
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Amp:
    """Mixed precision: bf16 where the device supports it, else fp16 with a gradient scaler, or off."""

    def __init__(self, setting: str, device: torch.device):
        self.device_type = device.type
        if setting == "auto":
            if device.type == "cuda":
                setting = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                setting = "bf16" if _cpu_has_bf16() else "off"
        if setting == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("train.amp=bf16: this GPU has no bf16; use train.amp=fp16 or auto")
        self.mode = setting
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(setting)
        # fp16's narrow range underflows small gradients: scale the loss (bf16 has fp32's range)
        self.scaler = torch.amp.GradScaler(device.type) if setting == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, clip_grad: float | None = None) -> None:
        """An optimizer step; `clip_grad` clips the gradients' global norm first (unscaled first under fp16, so
        the norm is the true one: timm's dispatch_clip_grad)."""
        if clip_grad is not None:
            if self.scaler:
                self.scaler.unscale_(optimizer)
            dispatch_clip_grad([p for group in optimizer.param_groups for p in group["params"]], clip_grad)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@dataclass
class ModelSetup:
    """A model placed where it runs, with what its inputs need."""

    model: nn.Module  # the weights: what checkpoints save and optimizers update
    net: nn.Module  # what runs them: `model`, or its torch.compile'd twin
    preprocessing: Preprocessing  # the model's input: from the model, or as saved with its checkpoint
    device: torch.device
    amp: Amp


def runtime_kwargs(cfg: TrainConfig) -> dict:
    """`build_model_for`'s keyword arguments from the train section (where and how the model runs)."""
    return {"device": cfg.device, "amp": cfg.amp, "channels_last": cfg.channels_last, "compile": cfg.compile}


def build_model_for(model_cfg: ModelConfig, num_classes: int, channels: int, *, device: str = "auto",
                    amp: str = "auto", channels_last: bool = True, compile: bool = False,
                    pretrained: bool | None = None, weights: dict | None = None, weights_path: Path | None = None,
                    preprocessing: Preprocessing | None = None, source: dict | None = None) -> ModelSetup:
    """The one way train, predict and bench build a model.

    Args:
        model_cfg, num_classes, channels: what `models.create_model` builds.
        device, amp: `train.device` and `train.amp` settings, resolved here.
        channels_last: NHWC weights, matching the loader's channels_last batches.
        compile: `net` is `torch.compile(model)`.
        pretrained: passed to `create_model` (False when `weights` follow).
        weights: a state dict loaded before the model moves (a fold checkpoint's); `weights_path` names its file
            in the error when it does not fit.
        preprocessing: the input saved with those weights; by default the model's own (`models.preprocessing`).
        source: the architecture and pretrained config saved with those weights (`models.timm_source`), so a
            hub or local-folder model is rebuilt without reaching either.
    """
    resolved = resolve_device(device)
    mixed = Amp(amp, resolved)
    model = create_model(model_cfg, num_classes, channels, pretrained=pretrained, source=source)
    if weights is not None:
        load_weights(model, weights, weights_path or Path("<weights>"))
    preprocessing = preprocessing or model_preprocessing(model, model_cfg, channels)
    model = model.to(resolved)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # the loader's batches come in channels_last
    net = torch.compile(model) if compile else model
    return ModelSetup(model, net, preprocessing, resolved, mixed)


def progress_bar(total_label: str = "") -> Progress:
    """Per-batch progress on a terminal; silent when the output is a log (CI), where epoch lines suffice."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>6.1f} img/s"),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (console.is_terminal and sys.stderr.isatty()),
    )


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    amp: Amp,
    device: torch.device,
    accumulate: int = 1,
    progress: Progress | None = None,
    description: str = "train",
    reduce_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    mix: LossMix | None = None,
    clip_grad: float | None = None,
    ema: WeightEma | None = None,
    head: Head | None = None,
) -> dict[str, float]:
    """One pass over `loader`; an optimizer step every `accumulate` batches.

    `mix` mixes each batch (Mixup/CutMix) and the loss with it (`recipes.mixed_loss`; the train scores are then
    those of the mixed images against their first labels); `clip_grad` clips the gradient norm before each step;
    `ema` is updated after each step. BatchNorm layers with frozen weights stay in eval mode. `head` maps the
    outputs and targets back for the scores (`heads.Head`; None: single-label softmax over the outputs).

    `reduce_loss` (DDP: every rank's loss summed, `World.sum`) is what is checked for NaN/inf, so a NaN on one
    rank stops every rank at the same step instead of leaving the others waiting in DDP's gradient all-reduce.

    Returns the loss, the scores of the batches' own predictions (`train_auc`, `train_accuracy`...: the train
    side of the learning curves, drawn as the weights changed), lr and img/s.
    """
    model.train()
    keep_frozen_norms(model)
    tally = _Tally(progress, description, len(loader), head or Head())
    optimizer.zero_grad(set_to_none=True)
    for i, (images, targets) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        lam = mix(images) if mix is not None else 1.0
        with amp.autocast():
            logits = model(images)
            loss = mixed_loss(loss_fn, logits, targets, lam)
        checked = loss if reduce_loss is None else reduce_loss(loss)
        if not torch.isfinite(checked):  # a step on it would turn every weight into NaN
            raise NonFiniteLoss(description, checked.item(), i + 1, len(loader))
        amp.backward(loss / accumulate)
        if (i + 1) % accumulate == 0 or i + 1 == len(loader):
            amp.step(optimizer, clip_grad)
            if scheduler is not None:
                scheduler.step()
            if ema is not None:
                ema.update()
        tally.add(loss, logits, targets, len(images))
    return tally.close(current_lr(optimizer))


class _Tally:
    """An epoch's running loss and the scores of the batches' own predictions, on the progress bar as it goes
    (with the accuracy for single-label classes)."""

    def __init__(self, progress: Progress | None, description: str, batches: int, head: Head):
        self.progress, self.head, self.total_loss, self.seen, self.correct = progress, head, 0.0, 0, 0
        self.batch_probs: list[np.ndarray] = []
        self.batch_truth: list[np.ndarray] = []
        self.start = time.perf_counter()
        self.task = progress.add_task(description, total=batches, rate=0.0, info="") if progress else None

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, n: int) -> None:
        self.total_loss += loss.item() * n
        self.seen += n
        if targets.ndim == 2 and self.head.link == "softmax":  # a taught fold's rows (teacher.pack): single-label
            labelled = targets[:, 0] >= 0  # targets are class indices otherwise; scored on the labelled images
            logits, targets = logits[labelled], targets[labelled, 0].long()
        elif targets.ndim == 2 and targets.shape[1] == 2 + 2 * self.head.outputs:  # [±1, taught, q, t]: the others
            labelled = targets[:, 0] > 0  # (plain targets have `outputs` columns)
            logits, targets = logits[labelled], targets[labelled, 2 + self.head.outputs:]
        probs = self.head.values(logits.detach()).cpu().double().numpy()
        self.batch_probs.append(probs)
        self.batch_truth.append(self.head.truth(targets))
        info = f"loss {self.total_loss / self.seen:.4f}"
        if self.head.kind == "single":
            self.correct += int((probs.argmax(1) == self.batch_truth[-1]).sum())
            info += f"  acc {self.correct / self.seen:.3f}"
        if self.task is not None:
            rate = self.seen / (time.perf_counter() - self.start)
            self.progress.update(self.task, advance=1, rate=rate, info=info)

    def close(self, lr: float) -> dict[str, float]:
        """The loss, `train_<score>` of every score, `lr` and img/s (history.csv's order); the bar's task goes."""
        if self.task is not None:
            self.progress.remove_task(self.task)
        elapsed = time.perf_counter() - self.start
        seen = self.seen
        scores = (score(np.concatenate(self.batch_truth), np.concatenate(self.batch_probs), self.head.kind,
                        len(self.head.names))
                  if seen else {})
        return {"train_loss": self.total_loss / max(seen, 1), **{f"train_{k}": v for k, v in scores.items()},
                "lr": lr, "train_img_s": seen / elapsed}


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    amp: Amp,
    device: torch.device,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    progress: Progress | None = None,
    description: str = "predict",
    on_batch: Callable[[int], None] | None = None,
    head: Head | None = None,
) -> np.ndarray:
    """What Predictions hold (float64, rows in loader order): class or tag probabilities, or values in the
    user's units, as `head` maps the outputs (None: single-label softmax). `forward(model, images)` must return
    them; by default it is head.values(model(images)) (TTA passes its own). `on_batch(images seen)` is called
    after each batch (`foldvision infer` paces itself by it)."""
    model.eval()
    head = head or Head()
    forward = forward or (lambda m, x: head.values(m(x)))
    out, seen, start = [], 0, time.perf_counter()
    task = progress.add_task(description, total=len(loader), rate=0.0, info="") if progress else None
    for images, _ in loader:
        with amp.autocast():
            probs = forward(model, images.to(device, non_blocking=True))
        out.append(probs.float().cpu().numpy().astype(np.float64))
        seen += len(images)
        if task is not None:
            progress.update(task, advance=1, rate=seen / (time.perf_counter() - start))
        if on_batch is not None:
            on_batch(seen)
    if task is not None:
        progress.remove_task(task)
    probs = np.concatenate(out) if out else np.zeros((0, 0))
    if head.kind == "single":  # tags' sigmoids and values are not a distribution: never normalised
        with np.errstate(invalid="ignore", divide="ignore"):  # a row of NaN (or zeros) is reported just below
            probs = probs / probs.sum(axis=1, keepdims=True)  # softmax in low precision sums to 1 only roughly
    return check_finite(probs, description)
