"""The `foldvision` command: one sub-command per stage.

    foldvision config <exp> [key=value ...]     resolve a config into runs/<exp>/
    foldvision check runs/<exp>                 validate the corpus (counts, unreadable files, duplicates, leaks)
    foldvision folds runs/<exp>                 stage 1: the corpus split
    foldvision train runs/<exp> --fold K        stage 2: one fold's model and OOF predictions
    foldvision score runs/<exp>                 stage 3: OOF scores over all folds
    foldvision predict runs/<exp> --out F       stage 4: TTA + fold ensemble into a submission
    foldvision ensemble runs/<b> --members R..  blend scored experiments with OOF-fitted weights
    foldvision package runs/<exp> OUT/          a self-contained inference package of a run or blend
    foldvision infer OUT/ --images DIR --out F  a package (or run) predicts new images, offline
    foldvision wheelhouse DIR                   the wheels an offline notebook installs foldvision from
    foldvision kaggle-notebook DIR              a Kaggle notebook (internet off) that installs and runs infer
    foldvision evaluate SUBMISSION SOLUTION     score a submission against known labels
    foldvision label-issues runs/<exp>          rank training images by how little their OOF backs the label
    foldvision ablate <exp> --grid "k=a,b ..."  every grid variant as an experiment, then a comparison table
    foldvision leaderboard runs                 every experiment, best first, with Public/Private scores
    foldvision report runs/<exp>                runs/<exp>/report.html: scores, plots and config on one page
    foldvision plots runs/<exp>                 the report's plots as PNG files
    foldvision demo-data [--kind tags|count]    build a demo corpus (digits; multi-label tags; a count)
    foldvision cache runs/<exp>                 decode every image of the run into the cache (before a fan-out)
    foldvision launch ray|slurm -- CMD          run CMD as a Ray task or a Slurm job (make ... LAUNCHER=ray)
    foldvision slot --gpus "0 1" -- CMD         run CMD on the first free GPU (make -j N GPUS=...)

Mistakes in data, config or command line end with one `error:` line and exit status 2.

`--from-env NAME` anywhere in a command line stands for the words of the environment variable NAME, split as a
shell splits words but with nothing expanded or run, and `--from-env-data NAME` for `data.dir=<$NAME>` taken
whole: the Makefile hands the user's ARGS, DATA, MEMBERS, BENCH... on this way, so no shell reads them.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from collections.abc import Callable

from foldvision.errors import UserError

COMMANDS = {
    "config": "foldvision.run",
    "check": "foldvision.commands.check",
    "folds": "foldvision.stages.folds",
    "train": "foldvision.stages.train",
    "score": "foldvision.stages.score",
    "predict": "foldvision.stages.predict",
    "ensemble": "foldvision.commands.ensemble",
    "package": "foldvision.commands.package",
    "infer": "foldvision.commands.infer",
    "wheelhouse": "foldvision.commands.wheelhouse",
    "kaggle-notebook": "foldvision.commands.notebook",
    "evaluate": "foldvision.commands.evaluate",
    "label-issues": "foldvision.commands.label_issues",
    "ablate": "foldvision.commands.ablate",
    "leaderboard": "foldvision.commands.leaderboard",
    "report": "foldvision.commands.report",
    "plots": "foldvision.commands.plots",
    "demo-data": "foldvision.commands.demo_data",
    "launch": "foldvision.campaign.launch",
    "slot": "foldvision.campaign.slot",
    "cache": "foldvision.stages.cache",
}


def share_cores(processes: int | None = None) -> None:
    """`processes` side by side share the cores: each gets 1/N of them as torch/BLAS threads (else N processes
    each start one thread per core and slow one another down). Set before torch loads; a user's own
    OMP_NUM_THREADS wins. N defaults to make's job count, FOLDVISION_JOBS, which the Makefile reads from its -j
    (the one place -j is parsed); torchrun's processes (campaign.torchrun) pass their own count."""
    jobs = os.environ.get("FOLDVISION_JOBS", "")
    if processes is None:
        processes = int(jobs) if jobs.isdigit() else 1
    if processes > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))


def user_message(error: UserError) -> str:
    """The one-line message, also when a DataLoader worker wrapped it in its traceback."""
    text = str(error)
    if text.startswith("Caught "):  # re-raised from a worker: the original message is the last line
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split("UserError: ", 1)[-1]
    return text


def env_words(name: str) -> list[str]:
    """$NAME as shell-like words: quotes group (ARGS="data.dir='my corpus' train.lr=1e-4"), and a `$`, `;`,
    backtick or `*` is a character like any other."""
    value = os.environ.get(name, "")
    try:
        return shlex.split(value)
    except ValueError as e:
        raise UserError(f"{name}={value!r}: {str(e).lower()}; quote a value with spaces as in a shell, e.g. "
                        f"ARGS=\"data.dir='my corpus' train.lr=1e-4\"") from None


def from_env(argv: list[str]) -> list[str]:
    """argv with each `--from-env NAME` replaced by the words of $NAME and each `--from-env-data NAME` by one
    `data.dir=<$NAME>` (none when it is empty). make passes values this way because a value pasted into a
    recipe is read by the shell: `ARGS='train.lr=1e-4;echo X'` would run `echo X`."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word not in ("--from-env", "--from-env-data"):
            out.append(word)
            continue
        name = next(words, None)
        if not name:
            raise UserError(f"{word} needs the name of an environment variable, e.g. {word} ARGS")
        if word == "--from-env":
            out += env_words(name)
        elif os.environ.get(name):
            out.append(f"data.dir={os.environ[name]}")
    return out


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's main (its `--from-env` words spliced in); user errors become one line on stderr and exit
    status 2."""
    try:
        main(from_env(sys.argv[1:] if argv is None else argv))
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        sys.exit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    if argv[0] != "launch":  # a launched job gets its CPUs from the engine (Ray's num_cpus, Slurm's cpus_per_task)
        share_cores()
    module = importlib.import_module(COMMANDS[argv[0]])
    run_stage(module.main, argv[1:])


if __name__ == "__main__":
    main()
