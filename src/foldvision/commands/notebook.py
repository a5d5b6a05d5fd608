"""A Kaggle notebook that submits with a package, offline: internet off, the package and the wheelhouse attached.

    foldvision kaggle-notebook OUT/ --kernel <user>/<slug> --competition <slug> --package-dataset <user>/<slug>
                               --wheelhouse-dataset <user>/<slug> [--images test] [--sample sample_submission.csv]
                               [--max-minutes 480] [--gpu]
    make kaggle-notebook KERNEL=... COMPETITION=... PACKAGE_DATASET=... WHEELHOUSE_DATASET=... [NOTEBOOK=kaggle]

OUT gets <slug>.ipynb and kernel-metadata.json (`kaggle kernels push -p OUT` uploads it). The package
(`make package`) and the wheelhouse (`make wheelhouse`) are uploaded as datasets first (`kaggle datasets create`).
The notebook finds each input by its name under /kaggle/input (the mount layout has changed over the years), installs
foldvision with `pip install --no-index --find-links <wheelhouse>` (torch comes with Kaggle's image), and runs
`foldvision infer` on the competition's test folder into /kaggle/working/submission.csv. KAGGLE_INPUT and
KAGGLE_WORKING, when set, stand for /kaggle/input and /kaggle/working (to run it elsewhere).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from foldvision.console import console
from foldvision.errors import UserError
from foldvision.files import write_text_atomic

SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

SETUP = '''import glob, os, subprocess, sys

INPUT = os.environ.get("KAGGLE_INPUT", "/kaggle/input")
WORKING = os.environ.get("KAGGLE_WORKING", "/kaggle/working")


def mounted(name, marker):
    """The attached input `name` (at /kaggle/input/<name> or deeper) that holds `marker`."""
    hits = sorted(glob.glob(f"{{INPUT}}/**/{{name}}/{{marker}}", recursive=True))
    if not hits:
        raise FileNotFoundError(f"{{name}}: no {{marker}} under {{INPUT}}; attach it as an input of the notebook")
    return os.path.dirname(hits[0])


PACKAGE = mounted({package}, "manifest.json")
WHEELHOUSE = mounted({wheelhouse}, "*.whl")
COMPETITION = mounted({competition}, {sample})
TEST_IMAGES = os.path.join(COMPETITION, {images})
SAMPLE = os.path.join(COMPETITION, {sample})
OUT = os.path.join(WORKING, "submission.csv")
MAX_MINUTES = {max_minutes!r}  # infer drops TTA views, by name, when its estimate would overrun this
print(PACKAGE, WHEELHOUSE, TEST_IMAGES, sep="\\n")'''

INSTALL = '''# offline: only the attached wheels (torch comes with the image)
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", WHEELHOUSE,
                "foldvision"], check=True)'''

INFER = '''subprocess.run([sys.executable, "-m", "foldvision", "infer", PACKAGE, "--images", TEST_IMAGES, "--sample", SAMPLE,
                "--out", OUT, "--max-minutes", str(MAX_MINUTES)], check=True)'''

SHOW = '''print(open(OUT).read()[:500])'''


def _cell(n: int, kind: str, text: str) -> dict:
    cell = {"cell_type": kind, "id": f"cell-{n}", "metadata": {}, "source": text.splitlines(keepends=True)}
    return cell | ({"execution_count": None, "outputs": []} if kind == "code" else {})


def notebook(package: str, wheelhouse: str, competition: str, images: str, sample: str, max_minutes: float) -> dict:
    """The notebook (nbformat 4): what it does, then set-up, install, infer and a look at the submission."""
    intro = (f"# Submit with a foldvision package, offline\n\nInputs: the package `{package}`, the wheelhouse "
             f"`{wheelhouse}` and the competition `{competition}`. Internet off.")
    setup = SETUP.format(**{k: json.dumps(v) for k, v in dict(package=package, wheelhouse=wheelhouse,
                            competition=competition, images=images, sample=sample).items()}, max_minutes=max_minutes)
    cells = [_cell(0, "markdown", intro)] + [_cell(n, "code", text)
                                             for n, text in enumerate((setup, INSTALL, INFER, SHOW), start=1)]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                         "language_info": {"name": "python"}}}


def _slug(value: str, what: str, owned: bool) -> str:
    parts = value.split("/")
    if len(parts) != (2 if owned else 1) or not all(SLUG.fullmatch(p) for p in parts):
        form = "<user>/<name>" if owned else "<name>"
        raise UserError(f"{what} {value!r}: write it as Kaggle names it, {form}")
    return parts[-1]


def metadata(kernel: str, code_file: str, competition: str, datasets: list[str], gpu: bool) -> dict:
    """kernel-metadata.json, as `kaggle kernels push` reads it: internet off, the inputs attached."""
    return {"id": kernel, "title": kernel.split("/")[1], "code_file": code_file, "language": "python",
            "kernel_type": "notebook", "is_private": True, "enable_gpu": gpu, "enable_tpu": False,
            "enable_internet": False, "dataset_sources": datasets, "competition_sources": [competition],
            "kernel_sources": [], "model_sources": []}


def write_notebook(out: Path, kernel: str, competition: str, package_dataset: str, wheelhouse_dataset: str,
                   images: str = "test", sample: str = "sample_submission.csv", max_minutes: float = 480,
                   gpu: bool = False) -> Path:
    """OUT/<slug>.ipynb and OUT/kernel-metadata.json; returns the notebook's path."""
    slug = _slug(kernel, "--kernel", True)
    _slug(competition, "--competition", False)
    package, wheelhouse = (_slug(d, flag, True) for d, flag in ((package_dataset, "--package-dataset"),
                                                               (wheelhouse_dataset, "--wheelhouse-dataset")))
    if max_minutes <= 0:
        raise UserError(f"--max-minutes {max_minutes}: give the minutes inference may take, e.g. 480")
    path = Path(out) / f"{slug}.ipynb"
    nb = notebook(package, wheelhouse, competition, images, sample, max_minutes)
    write_text_atomic(path, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    meta = metadata(kernel, path.name, competition, [package_dataset, wheelhouse_dataset], gpu)
    write_text_atomic(Path(out) / "kernel-metadata.json", json.dumps(meta, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision kaggle-notebook", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder for the notebook and kernel-metadata.json")
    parser.add_argument("--kernel", required=True, help="the notebook's Kaggle id, <user>/<slug>")
    parser.add_argument("--competition", required=True, help="the competition's slug")
    parser.add_argument("--package-dataset", required=True, help="the package's dataset, <user>/<slug>")
    parser.add_argument("--wheelhouse-dataset", required=True, help="the wheelhouse's dataset, <user>/<slug>")
    parser.add_argument("--images", default="test", help="the test images' folder in the competition's data")
    parser.add_argument("--sample", default="sample_submission.csv", help="the sample submission's file name")
    parser.add_argument("--max-minutes", type=float, default=480, help="infer's time limit (TTA views dropped)")
    parser.add_argument("--gpu", action="store_true", help="ask for a GPU (enable_gpu)")
    args = parser.parse_args(argv)
    path = write_notebook(args.out, args.kernel, args.competition, args.package_dataset, args.wheelhouse_dataset,
                          args.images, args.sample, args.max_minutes, args.gpu)
    console.print(f"kaggle-notebook: wrote {path} and {args.out / 'kernel-metadata.json'}; upload the package and "
                  f"the wheelhouse as datasets, then kaggle kernels push -p {args.out}")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
