"""Pictures of a scored experiment, as PNG files in its plots folder (`foldvision.results.figures` draws them).

    python -m foldvision.commands.plots runs/<exp>

learning_curves, confusion, roc, per_class and wrong (the most confidently wrong OOF images); `make report` puts
them on one page.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from foldvision.results.figures import write_plots


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp>, scored")
    args = parser.parse_args(argv)
    for path in write_plots(args.run_dir).values():
        print(path)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
