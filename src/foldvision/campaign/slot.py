"""GPU slots for `make -j N ... GPUS="0 1 2 3"`: each fold process runs pinned to a GPU no other job holds.

    foldvision slot --gpus "0 1" -- python -m foldvision train runs/<exp> --fold 3

make runs the jobs side by side but gives a job no index, so each job takes a GPU itself: it locks the first
free one of `--gpus` (an advisory `flock` on one lock file per GPU), sets `CUDA_VISIBLE_DEVICES` to it and
execs the command, which inherits the lock and so holds the GPU until it exits — a crash or a kill releases it
too. With more jobs than GPUs a job waits for the next GPU freed; no GPU is idle while a job waits. This is
make's scheduling with a lock per device, not a scheduler: make (or Ray, or Slurm) decides what runs.

On a CPU machine `make -j N` needs no slot: `foldvision.cli` gives each job 1/N of the cores' threads.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from foldvision.errors import UserError

POLL_SECONDS = 0.5


def default_lock_dir() -> Path:
    """One lock folder per machine and user: every make on this machine shares the GPUs' locks."""
    return Path(tempfile.gettempdir()) / f"foldvision-gpu-slots-{os.getuid()}"


def parse_gpus(text: str) -> list[str]:
    gpus = text.replace(",", " ").split()
    if not gpus or not all(g.isdigit() for g in gpus):
        raise UserError(f"GPUS={text!r}: list GPU indices separated by spaces, e.g. GPUS=\"0 1 2 3\"")
    if len(set(gpus)) != len(gpus):
        raise UserError(f"GPUS={text!r} names a GPU twice: each GPU is one slot")
    return gpus


def visible_gpus() -> list[str]:
    """The indices of this machine's NVIDIA GPUs (nvidia-smi: no torch import, no CUDA context)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise UserError("GPUS is set but this machine has no NVIDIA GPU (no nvidia-smi); leave GPUS unset to run "
                        "on the CPU")
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise UserError(f"GPUS is set but nvidia-smi failed ({e}); check the driver or leave GPUS unset") from None
    return [line.strip() for line in out.splitlines() if line.strip()]


def check_gpus(gpus: list[str], available: list[str]) -> None:
    unknown = [g for g in gpus if g not in available]
    if unknown:
        raise UserError(f"GPUS names GPU {unknown[0]}, but this machine has GPUs {' '.join(available) or 'none'}; "
                        "list only those")


def take_slot(gpus: list[str], lock_dir: Path, poll: float = POLL_SECONDS) -> tuple[str, int]:
    """Lock the first free GPU of `gpus` (waiting while all are taken); return it and the locked descriptor."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            fd = os.open(lock_dir / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return gpu, fd
        time.sleep(poll)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision slot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", required=True, help='the GPUs to share, e.g. "0 1 2 3"')
    parser.add_argument("--lock-dir", type=Path, default=None, help="default: one per machine and user")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the command to run on the GPU")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UserError("foldvision slot: give the command after --")
    gpus = parse_gpus(args.gpus)
    check_gpus(gpus, visible_gpus())
    gpu, fd = take_slot(gpus, args.lock_dir or default_lock_dir())
    os.set_inheritable(fd, True)  # the command holds the lock until it (and its workers) exit
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "FOLDVISION_GPU": gpu}
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
