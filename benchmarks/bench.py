"""Speed: foldvision's training loop against the model-only limit and the textbook loop; batched TTA vs ttach.

    python benchmarks/bench.py <exp> [key=value ...] [--steps 20] [--tta-images 256]
    make bench EXP=pneumonia_lite0 DATA=../shared/data/pneumonia ARGS="model.name=resnet10t model.img_size=64 ..."

One process, one model, the experiment's batch size, image size, AMP setting and images (the first
steps × batch_size training images in a fixed shuffle; the first --tta-images test images). Prints one line
per figure as `name: value`:

    model_only_img_s    training steps on one synthetic batch already on the device: the limit of this model here
                        (median of --repeats runs, alternating with the warm loop's)
    train_cold_img_s    foldvision's loop (sampler, augmentations, AMP, device batches) with an empty cache:
                        filling the cache is part of the time
    train_warm_img_s    the same with the cache filled (median of --repeats epochs)
    textbook_img_s      the loop the seeds wrote: PIL decode + torchvision transforms + a DataLoader, every epoch
    tta_img_s           test prediction with 4 TTA views (hflip × vflip) in one forward pass per batch (median
                        of 3 passes over the same cached images)
    ttach_img_s         the same loader with ttach's ClassificationTTAWrapper (one forward pass per view)
    peak_rss_mb         the peak resident memory of this process
    warm_vs_model_only, warm_vs_textbook, tta_vs_ttach   the ratios

`--textbook-folds runs/<exp>` instead trains the experiment's folds the textbook way (same epochs, a
validation pass per epoch), to time five of them against `make train`.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
import ttach
from torch import nn

from foldvision.config import CONFIG_DIR, Config, load_config
from foldvision.run import Run
from foldvision.console import console, out
from foldvision.corpus import open_image, read_test, read_train
from foldvision.learn.engine import Amp, build_model_for, predict, resolve_device, runtime_kwargs, train_one_epoch
from foldvision.errors import UserError
from foldvision.learn.loader import create_loader, loader_kwargs, loader_workers
from foldvision.learn.losses import create_loss
from foldvision.results.metrics import score
from foldvision.learn.optim import create_optimizer
from foldvision.learn.transforms import Preprocessing
from foldvision.learn.tta import tta_compose, tta_forward

TTA_VIEWS = ["hflip", "vflip"]  # 4 views
TTA_REPEATS = 3  # prediction passes are short: the median of three
WARMUP_STEPS = 2  # untimed steps before the model-only timing: oneDNN/cuDNN pick their kernels on the first


# ---- the textbook loop ----------------------------------------------------------------------------------

class TextbookDataset(torch.utils.data.Dataset):
    """What the seeds wrote: every item decoded by PIL and transformed by torchvision, every epoch."""

    def __init__(self, root: Path, paths, targets, transform, channels: int):
        self.root, self.paths, self.targets = root, list(paths), list(targets)
        self.transform, self.mode = transform, "RGB" if channels == 3 else "L"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open_image(self.root / self.paths[i]) as image:
            return self.transform(image.convert(self.mode)), int(self.targets[i])


def textbook_transform(augment: list[dict], spec: Preprocessing, train: bool) -> T.Compose:
    """torchvision's version of the experiment's pipeline (its flips and rot90; other augmentations are left
    out, which only makes the textbook loop faster)."""
    ops = [T.Resize((spec.size,) * 2, interpolation=T.InterpolationMode(spec.interpolation))]
    for item in augment if train else []:
        (name, args), = item.items()
        p = (args or {}).get("p", 1.0 if name == "RandomRotate90" else 0.5)
        if name == "HorizontalFlip":
            ops.append(T.RandomHorizontalFlip(p))
        elif name == "VerticalFlip":
            ops.append(T.RandomVerticalFlip(p))
        elif name == "RandomRotate90":
            ops.append(T.RandomApply([T.RandomChoice([T.RandomRotation((a, a)) for a in (90, 180, 270)])], p))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(spec.mean, spec.std)])


def textbook_loader(dataset: TextbookDataset, batch_size: int, train: bool,
                    workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train,
                                       num_workers=workers, persistent_workers=workers > 0)


def textbook_epoch(model: nn.Module, loader, loss_fn, optimizer, amp: Amp, device: torch.device) -> int:
    """The seeds' loop: move, forward, backward, step. Returns the number of images."""
    model.train()
    seen = 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with amp.autocast():
            loss = loss_fn(model(images), targets)
        amp.backward(loss)
        amp.step(optimizer)
        seen += len(images)
    return seen


@torch.no_grad()
def textbook_predict(model: nn.Module, loader, amp: Amp, device: torch.device) -> np.ndarray:
    model.eval()
    out_probs = []
    for images, _ in loader:
        with amp.autocast():
            out_probs.append(torch.softmax(model(images.to(device)).float(), 1).cpu().numpy())
    return np.concatenate(out_probs).astype(np.float64)


# ---- the figures ----------------------------------------------------------------------------------------

def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def model_only(net: nn.Module, spec: Preprocessing, channels: int, batch: int, n_classes: int, optimizer, loss_fn,
               amp: Amp, device: torch.device, steps: int, channels_last: bool) -> float:
    """img/s of training steps on one synthetic batch already on the device, as foldvision's loop runs them."""
    size = spec.size
    images = torch.randn(batch, channels, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, n_classes, (batch,), device=device)
    net.train()

    def step():
        with amp.autocast():
            loss = loss_fn(net(images), targets)
        amp.backward(loss)
        amp.step(optimizer)
        loss.item()  # the loop reads the loss every step: the same synchronisation

    for _ in range(WARMUP_STEPS):
        step()
    seconds, _ = timed(lambda: [step() for _ in range(steps)])
    return steps * batch / seconds


def tta_figures(net: nn.Module, loader, amp: Amp, device: torch.device) -> tuple[float, float, float]:
    """img/s of foldvision's batched TTA and of ttach's wrapper on the same loader, and their largest
    difference in probability on one batch when both average logits (they must agree)."""
    wrapper = ttach.ClassificationTTAWrapper(net, tta_compose(TTA_VIEWS), merge_mode="mean")

    def ttach_forward(model, images):
        return torch.softmax(wrapper(images).float(), dim=1)

    ours = tta_forward(TTA_VIEWS)
    first = next(iter(loader))[0]
    net.eval()
    with torch.no_grad(), amp.autocast():  # warm-up: kernels for these batch shapes; and the agreement check
        gap = (tta_forward(TTA_VIEWS, merge="logit")(net, first) - ttach_forward(net, first)).abs().max().item()
        ours(net, first)
    seconds = {"tta": [], "ttach": []}
    for _ in range(TTA_REPEATS):  # alternating, so a busy moment of the machine hits both
        for name, forward in (("tta", ours), ("ttach", ttach_forward)):
            seconds[name].append(timed(lambda: predict(net, loader, amp, device, forward=forward))[0])
    n = len(loader.dataset)
    return n / np.median(seconds["tta"]), n / np.median(seconds["ttach"]), gap


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench(cfg: Config, steps: int, tta_images: int, repeats: int = 3) -> dict[str, float]:
    corpus = read_train(cfg.data)
    batch = cfg.train.batch_size
    n_images = steps * batch
    if len(corpus.table) < n_images:
        raise UserError(f"--steps {steps} × batch {batch} needs {n_images} training images; the corpus has "
                        f"{len(corpus.table)}")
    rows = corpus.table.sample(n=n_images, seed=0)
    index = {c: i for i, c in enumerate(corpus.classes)}
    targets = np.array([index[label] for label in rows["label"].to_list()])
    setup = build_model_for(cfg.model, len(corpus.classes), cfg.data.channels, **runtime_kwargs(cfg.train))
    model, net, spec, device, amp = setup.model, setup.net, setup.preprocessing, setup.device, setup.amp
    # the textbook's twin: the same weights in the default memory format, run uncompiled
    textbook_model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    workers = loader_workers(cfg.train.num_workers, device)
    optimizer = create_optimizer(model, cfg.train, 100 * steps)
    textbook_optimizer = create_optimizer(textbook_model, cfg.train, 100 * steps)
    loss_fn = create_loss(cfg.loss)
    console.print(f"bench: {cfg.model.name} at {spec.size} px, batch {batch}, {steps} steps ({n_images} "
                  f"images of {cfg.data.dir}), amp {amp.mode}, channels_last {cfg.train.channels_last}, compile "
                  f"{cfg.train.compile}, textbook loader workers {workers}, TTA forward passes "
                  f"of {cfg.predict.batch_size}, {os.cpu_count()} cores, device {device}")
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as cache_dir:
        cache = cache_dir if cfg.data.cache else None  # an empty cache: the cold run fills it
        train_kw = loader_kwargs(cfg, train=True, cache_dir=cache)

        def run_epoch() -> float:
            """img/s of one epoch of foldvision's loop, the loader's set-up (and cache fill) included."""
            def epoch():
                loader = create_loader(corpus.image_dir, rows["path"].to_list(), targets, spec, device, **train_kw)
                return train_one_epoch(net, loader, loss_fn, optimizer, None, amp, device, cfg.train.accumulate)
            return (len(rows) // batch) * batch / timed(epoch)[0]

        figures["train_cold_img_s"] = run_epoch()
        # The limit and the warm loop, alternating, each the median of `repeats` runs: a 2-core machine's speed
        # drifts by ±10% over a minute, which a single pair of runs would read as a loader gap (or a gain).
        limit, warm = [], []
        for _ in range(repeats):
            limit.append(model_only(net, spec, cfg.data.channels, batch, len(corpus.classes), optimizer, loss_fn,
                                    amp, device, steps, cfg.train.channels_last))
            warm.append(run_epoch())
        figures["model_only_img_s"], figures["train_warm_img_s"] = float(np.median(limit)), float(np.median(warm))

        # the textbook's kernels warmed up too (its own memory format): untimed
        model_only(textbook_model, spec, cfg.data.channels, batch, len(corpus.classes), textbook_optimizer, loss_fn,
                   amp, device, 1, channels_last=False)
        textbook_ds = TextbookDataset(corpus.image_dir, rows["path"].to_list(), targets,
                                      textbook_transform(cfg.augment.train, spec, train=True), cfg.data.channels)
        loader = textbook_loader(textbook_ds, batch, True, workers)  # workers as for decoding
        textbook_s, seen = timed(partial(textbook_epoch, textbook_model, loader, loss_fn, textbook_optimizer, amp,
                                         device))
        figures["textbook_img_s"] = seen / textbook_s
        del textbook_model, textbook_optimizer, loader

        test = read_test(cfg.data)
        if test is None:
            raise UserError(f"{cfg.data.dir} has no test images to time TTA on")
        test_rows = test.table.head(tta_images)
        views = len(tta_compose(TTA_VIEWS))  # as predict does: one forward pass of predict.batch_size images
        test_kw = loader_kwargs(cfg, train=False, cache_dir=cache, batch_size=max(1, cfg.predict.batch_size // views))
        # fills the cache, untimed
        tta_loader = create_loader(test.image_dir, test_rows["path"].to_list(), None, spec, device, **test_kw)
        figures["tta_img_s"], figures["ttach_img_s"], gap = tta_figures(net, tta_loader, amp, device)
        console.print(f"bench: batched TTA vs ttach's wrapper, both averaging logits: largest probability "
                      f"difference {gap:.2e}")
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["warm_vs_model_only"] = figures["train_warm_img_s"] / figures["model_only_img_s"]
    figures["warm_vs_textbook"] = figures["train_warm_img_s"] / figures["textbook_img_s"]
    figures["tta_vs_ttach"] = figures["tta_img_s"] / figures["ttach_img_s"]
    return figures


ORDER = ("model_only_img_s", "train_cold_img_s", "train_warm_img_s", "textbook_img_s", "tta_img_s", "ttach_img_s",
         "peak_rss_mb", "warm_vs_model_only", "warm_vs_textbook", "tta_vs_ttach")


def textbook_folds(run_dir: Path, folds: list[int] | None) -> None:
    """Train folds of `run_dir` (all by default) the textbook way: the experiment's epochs, a validation pass
    per epoch, nothing cached, nothing written."""
    run = Run(run_dir)
    cfg = run.load_config()
    split = run.read_split()
    device = resolve_device(cfg.train.device)
    amp = Amp(cfg.train.amp, device)
    workers = loader_workers(cfg.train.num_workers, device)
    root = Path(cfg.data.dir)
    paths = np.asarray(split.paths, dtype=object)
    start = time.perf_counter()
    for fold in folds or split.folds:
        torch.manual_seed(cfg.train.seed + 1000 * fold)
        train_rows, val_rows = split.fold != fold, split.fold == fold
        # built as foldvision builds it, but left in the default memory format and uncompiled
        setup = build_model_for(cfg.model, len(split.classes), cfg.data.channels, device=str(device), amp=amp.mode,
                                channels_last=False, compile=False)
        model, spec = setup.model, setup.preprocessing
        train_loader = textbook_loader(TextbookDataset(root, paths[train_rows], split.y[train_rows],
                                       textbook_transform(cfg.augment.train, spec, True), cfg.data.channels),
                                       cfg.train.batch_size, True, workers)
        val_loader = textbook_loader(TextbookDataset(root, paths[val_rows], split.y[val_rows],
                                     textbook_transform([], spec, False), cfg.data.channels),
                                     cfg.predict.batch_size, False, workers)
        optimizer = create_optimizer(model, cfg.train, len(train_loader) * cfg.train.epochs)
        loss_fn = create_loss(cfg.loss)
        for epoch in range(cfg.train.epochs):
            textbook_epoch(model, train_loader, loss_fn, optimizer, amp, device)
            scores = score(split.y[val_rows], textbook_predict(model, val_loader, amp, device))
            console.print(f"textbook fold {fold} epoch {epoch + 1}: auc {scores['auc']:.4f}  "
                          f"{time.perf_counter() - start:.1f} s so far")
    out.print(f"textbook_folds_s: {time.perf_counter() - start:.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("exp", help="experiment name (configs/<exp>.yaml) or a YAML path; or runs/<exp> "
                                    "with --textbook-folds")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.img_size=64")
    parser.add_argument("--configs", type=Path, default=CONFIG_DIR, help="folder of experiment configs")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed loop")
    parser.add_argument("--tta-images", type=int, default=256, help="test images for the TTA timings")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the model-only limit and of the warm loop, alternating; the median is printed")
    parser.add_argument("--textbook-folds", action="store_true",
                        help="train the folds of the run folder EXP the textbook way and print the seconds")
    parser.add_argument("--fold", type=int, nargs="+", help="with --textbook-folds: only these folds")
    args = parser.parse_args(argv)
    if args.textbook_folds:
        textbook_folds(Path(args.exp), args.fold)
        return
    cfg = load_config(args.exp, args.overrides, args.configs)
    figures = bench(cfg, args.steps, args.tta_images, args.repeats)
    for name in ORDER:
        value = figures[name]
        out.print(f"{name}: {value:.0f}" if name == "peak_rss_mb" else
                  f"{name}: {value:.2f}" if "_vs_" in name else f"{name}: {value:.1f}")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
