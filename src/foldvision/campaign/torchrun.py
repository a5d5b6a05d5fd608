"""One fold on several GPUs of this machine: `--nproc N` runs the stage in N processes under torchrun.

    foldvision train runs/<exp> --fold 0 --nproc 4      (what `NPROC=4 make train` runs)
    torchrun --standalone --nproc-per-node=4 -m foldvision train runs/<exp> --fold 0      (the same, by hand)

`--nproc N` checks N (a positive integer; no more than the visible GPUs when training on CUDA) before anything
starts, then runs the train stage under torchrun in N processes on this machine, the cores shared between them.
A failure ends with the one line rank 0 printed and the exit status of the first process that failed: torchrun
by itself answers a bad `--nproc-per-node` with a traceback, and a worker's exit 2 with a 40-line report and
exit 1. What each process does in there (its rank, DDP, the samplers and gathers) is foldvision.learn.distributed.
"""

from __future__ import annotations

import logging
import re
import signal

from foldvision.cli import share_cores
from foldvision.errors import UserError
from foldvision.learn.distributed import check_processes, env_world


def parse_nproc(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise UserError(f"NPROC={text!r}: the number of training processes must be a whole number from 1 up, "
                        "e.g. NPROC=4 (one per GPU)")
    return int(text)


def launched(nproc_text: str, device_setting: str, argv: list[str]) -> bool:
    """`--nproc N` of a stage: check N and run `foldvision <argv>` in N processes under torchrun (True when done);
    False when there is nothing to launch (N is 1, or this process is one of torchrun's already)."""
    if env_world() is not None:
        return False
    nproc = parse_nproc(nproc_text)
    if nproc == 1:
        return False
    check_processes(nproc, device_setting)
    launch(nproc, argv)
    return True


def launch(nproc: int, argv: list[str]) -> None:
    """`python -m foldvision <argv>` in `nproc` processes under torchrun on this machine (--standalone: a free
    port). Raises SystemExit with the first failed process's status (what rank 0 printed stays the only line)."""
    from torch.distributed import run as elastic_run  # noqa: PLC0415 - only the launching process needs it
    from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: PLC0415
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415

    share_cores(nproc)  # (torchrun would set 1 thread each, with a banner saying so)
    for name in list(logging.root.manager.loggerDict):  # each sets its own level; their reports repeat rank 0
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_run.main(["--standalone", f"--nproc-per-node={nproc}", "-m", "foldvision", *argv])
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        raise SystemExit(failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode) from None
    except SignalException as e:  # torchrun stopped its processes on a signal
        if e.sigval == signal.SIGINT:  # Ctrl-C reached every process of the terminal's group: rank 0 said it
            raise SystemExit(130) from None
        raise KeyboardInterrupt from None
