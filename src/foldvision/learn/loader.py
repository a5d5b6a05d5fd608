"""Loaders that keep the model busy: cached uint8 images in, normalised batches on the device out.

    foldvision.learn.cache (decoded + resized once) -> albumentations on the CPU, for what needs the CPU
    -> uint8 CHW batches from the DataLoader workers -> the device, normalised there (timm's PrefetchLoader,
    which also overlaps the copy with compute on CUDA) -> flips/rot90 drawn per image -> channels_last

Set for the machine: one worker per spare core (the main process runs the model), at most 8, or none when a
CPU trains on cached images with nothing to do per item; workers stay alive between epochs unless they draw
random augmentations; pinned memory on CUDA; at least four batches in flight. uint8 batches are a quarter of
the bytes of float ones, and the per-pixel float work (Normalize) happens where the model runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from timm.data.loader import PrefetchLoader

from foldvision.config import Config
from foldvision.errors import UserError
from foldvision.learn.cache import open_images
from foldvision.learn.distributed import rank_seed, shard_sampler
from foldvision.learn.images import ImageDataset, seed_worker
from foldvision.learn.transforms import Preprocessing, _augmentation, build_transform

# albumentations transforms that only permute pixels: exact on a batch tensor, and free on a GPU
DEVICE_OPS = ("HorizontalFlip", "VerticalFlip", "RandomRotate90", "Transpose", "D4")


def default_workers() -> int:
    """One loader worker per spare core (the main process runs the model), at most 8; under torchrun the
    machine's cores are shared between its processes (LOCAL_WORLD_SIZE of them)."""
    return max(0, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)) - 1))


def loader_workers(num_workers: int | None, device: torch.device, cpu_work: bool = True) -> int:
    """train.num_workers; when null, one per spare core, or none on a CPU device when the items need no CPU
    work beyond reading cached records (microseconds each): a worker would only take cores from the model,
    and on 2 cores its wake-ups stall torch's threads (measured: 0.83 of the model-only speed with one worker,
    0.98 without)."""
    if num_workers is not None:
        return num_workers
    return 0 if device.type == "cpu" and not cpu_work else default_workers()


def build_workers(num_workers: int | None) -> int:
    """Processes that fill the cache: every core, since the model is not running yet (none when
    train.num_workers=0 asks for everything in one process)."""
    cores = os.cpu_count() or 1
    return 0 if num_workers == 0 or cores == 1 else min(16, cores)


def split_augment(augment: list[dict], on_device: bool) -> tuple[list[dict], list[dict]]:
    """(CPU part, device part) of augment.train: the flips/rot90 that end the list (with no argument but p)
    move to the device when `on_device`; the order of the transforms is kept."""
    cut = len(augment)
    while on_device and cut > 0:
        (name, args), = augment[cut - 1].items()
        if name not in DEVICE_OPS or set(args or {}) - {"p"}:
            break
        cut -= 1
    return augment[:cut], augment[cut:]


class BatchAugment:
    """Flips and 90° rotations drawn per image and applied to a square (B, C, H, W) batch where it lies.

    The same distributions as albumentations' transforms of those names (RandomRotate90 turns k·90° with k
    uniform in 0..3; D4 picks one of the 8 symmetries), drawn from a generator seeded per epoch.
    """

    def __init__(self, augment: list[dict], seed: int = 0, first_index: int = 0):
        # built by albumentations first: the same argument checks and the same default p
        ops = [_augmentation(first_index + i, item) for i, item in enumerate(augment)]
        self.ops = [(type(op).__name__, float(op.p)) for op in ops]
        self.generator = torch.Generator().manual_seed(seed)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def _draw(self, n: int, p: float, choices: int, device: torch.device) -> torch.Tensor:
        """Per image: 0 (left alone, probability 1-p) or a choice in 0..choices-1, shifted to 1..choices."""
        on = torch.rand(n, generator=self.generator) < p
        pick = torch.randint(0, choices, (n,), generator=self.generator) + 1
        return torch.where(on, pick, 0).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"device flips/rotations need square images, got {tuple(x.shape[-2:])}")
        for name, p in self.ops:
            if name in ("HorizontalFlip", "VerticalFlip", "Transpose"):
                on = self._draw(len(x), p, 1, x.device) == 1
                x[on] = {"HorizontalFlip": lambda t: t.flip(3), "VerticalFlip": lambda t: t.flip(2),
                         "Transpose": lambda t: t.transpose(2, 3)}[name](x[on])
                continue
            # RandomRotate90: k in 0..3; D4: 8 symmetries as a transpose or not, then k quarter turns
            code = self._draw(len(x), p, 4 if name == "RandomRotate90" else 8, x.device) - 1  # -1: untouched
            if name == "D4":
                flip = code >= 4
                x[flip] = x[flip].transpose(2, 3)
                code = torch.where(code >= 0, code % 4, -1)
            for k in (1, 2, 3):
                turn = code == k
                x[turn] = x[turn].rot90(k, dims=(2, 3))
        return x


class DeviceLoader:
    """A DataLoader of uint8 batches, delivered on the device normalised, augmented and in channels_last."""

    def __init__(self, loader: torch.utils.data.DataLoader, spec: Preprocessing, device: torch.device,
                 augment: BatchAugment | None, channels_last: bool, rank: int = 0):
        self.loader, self.rank = loader, rank
        self.batches = PrefetchLoader(loader, mean=spec.mean, std=spec.std, channels=spec.channels, device=device)
        self.augment, self.channels_last = augment, channels_last

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self) -> ImageDataset:
        return self.loader.dataset

    def set_epoch(self, seed: int) -> None:
        """Reseed the augmentations, so a resumed epoch draws what the uninterrupted one drew. Under DDP the
        sampler draws alike on every rank, and each rank augments from a stream of its own."""
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(seed)
        seed = rank_seed(seed, self.rank)
        self.loader.dataset.transform.set_random_seed(seed)
        if self.augment is not None:
            self.augment.seed(seed)

    def __iter__(self):
        for images, targets in self.batches:
            if self.augment is not None:
                images = self.augment(images)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets


def loader_kwargs(cfg: Config, train: bool, **overrides) -> dict:
    """`create_loader`'s keyword arguments from the config (timm's adapter pattern): the training split's
    (augmentations, sampler, train.batch_size, data.cache_size) or a validation/test split's (none of them,
    predict.batch_size); `overrides` win."""
    return {
        "train": train,
        "batch_size": cfg.train.batch_size if train else cfg.predict.batch_size,
        "augment": list(cfg.augment.train) if train else [],
        "device_augment": cfg.train.device_augment,
        "sampler": cfg.train.sampler if train else "random",
        "num_workers": cfg.train.num_workers,
        "channels_last": cfg.train.channels_last,
        "cache_dir": cfg.data.cache_dir if cfg.data.cache else None,
        "cache_size": cfg.data.cache_size if train else None,
        **overrides,
    }


def create_loader(root: Path, paths, targets, spec: Preprocessing, device: torch.device, *, train: bool,
                  batch_size: int, augment: list[dict] | None = None, device_augment: bool = True,
                  sampler: str = "random", num_workers: int | None = None, channels_last: bool = True,
                  cache_dir: str | None = None, cache_size: int | None = None, seed: int = 0,
                  shard: tuple[int, int] | None = None, progress=None, balance=None) -> DeviceLoader:
    """The loader of one split.

    Args:
        root: the corpus folder; `paths` are relative to it.
        targets: class indices (or float rows: `heads.Head.targets`), or None for test images.
        spec: the model's input: size, interpolation, channels and normalisation (`models.preprocessing`).
        train: shuffle (or `sampler="imbalanced"`: torchsampler's weighted draw), drop a last 1-image batch,
            apply `augment` (albumentations by name; trailing flips/rot90 on the device when `device_augment`).
        num_workers: loader processes; None picks them for the machine (`loader_workers`).
        cache_dir: the decoded-image cache (data.cache_dir), built first where missing; None decodes on every
            read. `cache_size` caches training images larger than the input size (a margin for random crops).
        shard: (rank, world size) under DDP: this process's share of the split (`distributed.shard_sampler`).
        balance: the label of each row the imbalanced draw balances; None: `targets` (class indices).
    """
    augment = augment or []
    if cache_size is not None and cache_size < spec.size:
        raise UserError(f"data.cache_size={cache_size} is below the input size {spec.size}; "
                        "use null or a larger size")
    decoded = spec.at(cache_size or spec.size)  # what the cache holds: a margin for random crops, or the input
    paths = list(paths)
    images = open_images(cache_dir, root, paths, decoded, build_workers(num_workers), progress)
    cpu_augment, device_ops = split_augment(augment, device_augment)
    transform = build_transform(cpu_augment, spec, train, seed, input_size=decoded.size, normalize=False)
    dataset = ImageDataset(root, paths, targets, transform, spec.channels, images)
    cpu_work = cache_dir is None or bool(cpu_augment) or decoded.size != spec.size  # decode, augment, resize
    workers = loader_workers(num_workers, device, cpu_work)
    weighted = None
    balance = dataset.targets if balance is None else np.asarray(balance)
    if shard is not None:
        weighted = shard_sampler(balance, sampler if train else None, *shard)
    elif train and sampler == "imbalanced":
        from torchsampler import ImbalancedDatasetSampler  # noqa: PLC0415 - training only; inference runs without it

        # labels passed in: torchsampler would otherwise read every image once just to learn its label
        weighted = ImbalancedDatasetSampler(dataset, labels=balance.tolist())
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=weighted,
        shuffle=train and weighted is None,
        drop_last=train and len(dataset if weighted is None else weighted) > batch_size,  # no 1-image BatchNorm batch
        num_workers=workers,
        # workers that apply random CPU augmentations start afresh each epoch: seed_worker then seeds them from
        # the epoch's torch seed, so a resumed epoch draws what the uninterrupted one drew (persistent workers
        # would carry on their own streams); the others live as long as the loader
        persistent_workers=workers > 0 and not (train and cpu_augment),
        pin_memory=device.type == "cuda",
        prefetch_factor=max(2, 4 // workers) if workers > 0 else None,
        worker_init_fn=seed_worker if workers > 0 else None,
    )
    batch_augment = BatchAugment(device_ops, seed, len(cpu_augment)) if device_ops else None
    return DeviceLoader(loader, spec, device, batch_augment, channels_last, shard[0] if shard else 0)
