"""One fold on several GPUs, inside each of torchrun's processes: DistributedDataParallel, and the samplers and
gathers it needs. (Starting the processes, `--nproc N`, is foldvision.campaign.torchrun.)

Under torchrun each process is a rank with its own GPU (cuda:<local rank>, nccl) or a share of the CPU (gloo).
Every rank builds the same model from the same seed and draws the same imbalanced sample each epoch, then trains
on its own disjoint share of it; DDP averages the gradients. The per-rank batch is train.batch_size, so the global
batch is N times larger and the learning rate is scaled by N (the linear rule); Ranger21's `num_iterations`
counts the optimizer steps each rank takes. Validation: each rank predicts every N-th image, and the probabilities
are gathered in the original order onto every rank, so all compute the same scores and stop early together.
Rank 0 alone prints, writes files (checkpoints, history, OOF) and talks to W&B; a NaN loss on any rank stops all
of them at the same step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

from foldvision.console import console, out
from foldvision.errors import UserError

RANK_SEED_STRIDE = 1_000_003  # rank r augments from seed + r·stride: its own stream, as timm seeds seed + rank


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's processes (one process, rank 0 of 1, outside torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: str | None = None  # where this rank trains ("cuda:<local rank>" or "cpu"); None: train.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device_kwargs(self) -> dict:
        """`build_model_for`'s device under DDP (each rank its own GPU); nothing outside it."""
        return {"device": self.device} if self.distributed else {}

    def scale_lr(self, train_cfg):
        """The train section with lr × world size (the linear rule: the global batch is size × batch_size)."""
        return dataclasses.replace(train_cfg, lr=train_cfg.lr * self.size) if self.distributed else train_cfg

    def wrap(self, model: torch.nn.Module, net: torch.nn.Module, compile: bool) -> torch.nn.Module:
        """What trains: `net` alone, or DDP around `model` (compiled after wrapping, as torch advises).
        Validation keeps the plain `net`: DDP's forward is a collective, and the ranks' shares differ in length."""
        if not self.distributed:
            return net
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.local_rank] if self.device.startswith("cuda") else None)
        return torch.compile(ddp) if compile else ddp

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the ranks (a NaN or inf on any rank makes every rank's sum non-finite)."""
        if not self.distributed:
            return value
        total = value.detach().float().clone()
        dist.all_reduce(total)
        return total

    def broadcast(self, value):
        """Rank 0's `value` on every rank (a picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_rows(self, compute: Callable[[], np.ndarray], n: int) -> np.ndarray:
        """Every rank's `compute()` (its `ShardSampler` rows) put back in the original order, on every rank.

        A UserError on any rank (non-finite probabilities) is raised on all of them, with the first rank's
        message, so all stop at the same place and rank 0 says why.
        """
        if not self.distributed:
            return compute()
        try:
            rows, error = compute(), None
        except UserError as e:
            rows, error = None, str(e)
        parts = [None] * self.size
        dist.all_gather_object(parts, (rows, error))
        errors = [e for _, e in parts if e is not None]
        if errors:
            raise UserError(errors[0])
        return interleave([r for r, _ in parts], n)


SINGLE = World()
_world = SINGLE  # set by init_from_env, reset by cleanup: the process's place, like torch.distributed's own state


def current() -> World:
    return _world


def is_main() -> bool:
    """Whether this process writes files and prints: rank 0, or the only process."""
    return _world.main


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s own random streams (augmentations, dropout); rank 0 keeps `seed`."""
    return (seed + RANK_SEED_STRIDE * rank) % 2**32


def interleave(parts: list[np.ndarray], n: int) -> np.ndarray:
    """Rows predicted by rank r for images r, r+size, r+2·size... back into the order 0..n-1."""
    size = len(parts)
    first = next(p for p in parts if len(p))
    rows = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    for rank, part in enumerate(parts):
        if len(part) != len(range(rank, n, size)):
            raise ValueError(f"rank {rank} predicted {len(part)} rows, not {len(range(rank, n, size))}")
        rows[rank::size] = part
    return rows


# ---- samplers: this rank's share of a split -----------------------------------------------------------------

class ShardSampler(Sampler[int]):
    """Images rank, rank+size, rank+2·size... in order, not padded: every image is predicted exactly once."""

    def __init__(self, n: int, rank: int, size: int):
        self.indices = range(rank, n, size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class DistributedImbalancedSampler(Sampler[int]):
    """torchsampler's `ImbalancedDatasetSampler` for DDP (it has none: its issue #9).

    Its draw — weights 1/class count, with replacement, as many as the split holds — is made once per epoch from
    a generator seeded alike on every rank (`set_epoch`), padded with its own first indices to a multiple of the
    world size (DDP needs equal shares), and dealt out rank::size. Lightning's `DistributedSamplerWrapper` does
    the same by wrapping any sampler, but would add Lightning to the stack for these twenty lines.
    """

    def __init__(self, labels: list[int], rank: int, size: int, seed: int = 0):
        from torchsampler import ImbalancedDatasetSampler  # noqa: PLC0415 - training only; inference runs without it

        self.weights = ImbalancedDatasetSampler(labels, labels=labels).weights  # torchsampler's own weights
        self.rank, self.size, self.seed, self.epoch = rank, size, seed, 0
        self.num_samples = len(labels)
        self.total = math.ceil(self.num_samples / size) * size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self) -> torch.Tensor:
        """The epoch's whole draw, the same on every rank (torchsampler's under torch.manual_seed(seed + epoch))."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)

    def __iter__(self):
        indices = self.draw()
        padded = torch.cat([indices, indices[torch.arange(self.total - len(indices)) % len(indices)]])
        return iter(padded[self.rank::self.size].tolist())

    def __len__(self) -> int:
        return self.total // self.size


def shard_sampler(targets, kind: str | None, rank: int, size: int) -> Sampler[int]:
    """This rank's share of a split: of the imbalanced draw or of a shuffle (`kind`, training), or every size-th
    image in order (None: validation). Each has `set_epoch` where the draw changes per epoch."""
    labels = np.asarray(targets).tolist()
    if kind == "imbalanced":
        return DistributedImbalancedSampler(labels, rank, size)
    if kind == "random":  # torch's: a shuffle seeded alike on every rank (seed + set_epoch), padded, dealt out
        return DistributedSampler(range(len(labels)), num_replicas=size, rank=rank, shuffle=True, seed=0)
    return ShardSampler(len(labels), rank, size)


# ---- processes --------------------------------------------------------------------------------------------

def env_world() -> World | None:
    """torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or None outside torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def check_processes(nproc: int, device_setting: str) -> str:
    """The device type the processes train on ("cuda" or "cpu"), or a UserError when `nproc` cannot run there."""
    device = device_setting
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if re.fullmatch(r"cuda:\d+", device):
        raise UserError(f"train.device={device} with {nproc} processes: each process takes its own GPU "
                        "(cuda:<local rank>); use train.device=auto or cuda")
    if device == "cuda":
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if nproc > gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise UserError(f"NPROC={nproc} processes, but {gpus} GPU{'s' * (gpus != 1)} visible here"
                            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
                            + f": use NPROC={max(gpus, 1)} or fewer")
        return "cuda"
    if device != "cpu":
        raise UserError(f"train.device={device} with {nproc} processes: DDP runs on CUDA GPUs (nccl) or the CPU "
                        "(gloo); use NPROC=1")
    return "cpu"


def init_from_env(device_setting: str = "auto") -> World:
    """Join torchrun's process group (nccl on CUDA, gloo on the CPU) and pin this rank's GPU; outside torchrun,
    or with one process, nothing to join. Checked first, on every rank, before any work."""
    global _world
    env = env_world()
    if env is None or not env.distributed:
        return SINGLE
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", env.size))
    kind = check_processes(local_size, device_setting)
    if kind == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = f"cuda:{env.local_rank}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        device = "cpu"
        dist.init_process_group("gloo")
    _world = dataclasses.replace(env, device=device)
    return _world


@contextmanager
def process_group(train_cfg):
    """This process's `World` for the stage (joined with `init_from_env`, left on the way out); the global batch
    and its learning rate are printed once."""
    world = init_from_env(train_cfg.device)
    try:
        if world.distributed:
            console.print(f"{world.size} processes × batch {train_cfg.batch_size} = global batch "
                          f"{world.size * train_cfg.batch_size}: lr {train_cfg.lr:g} × {world.size} = "
                          f"{world.scale_lr(train_cfg).lr:g} (linear scaling rule)")
        yield world
    finally:
        cleanup()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier(device_ids=[_world.local_rank] if (_world.device or "").startswith("cuda") else None)


def cleanup() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = SINGLE


@contextmanager
def ranks_quiet():
    """Under torchrun, ranks other than 0 print nothing: rank 0 says everything once (the ranks run the same
    code on the same data, so their warnings and errors repeat rank 0's). A UserError or an interrupt ends
    them with rank 0's exit status, silently."""
    env = env_world()
    if env is None or env.main:
        yield
        return
    quiet = console.quiet, out.quiet
    console.quiet = out.quiet = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except UserError:
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    finally:
        console.quiet, out.quiet = quiet
