"""A trained experiment or a blend as a self-contained folder that predicts anywhere, offline.

    foldvision package runs/<exp or blend> OUT/          (make package NAME=<exp> [OUT=packages/<exp>])
    foldvision infer OUT/ --images DIR [--sample CSV] --out submission.csv

OUT holds every fold model's weights (safetensors) with the timm architecture and pretrained config that rebuild it
without the hub, the preprocessing, TTA views, classes, metric and decision rule, a blend's members and weights (a
member of weight 0 adds nothing and is left out), a README, and manifest.json (foldvision's and the libraries'
versions, the sha256 of every other file; `foldvision infer` checks them first). It needs nothing of the run folder
or the corpus. Its layout is `foldvision.learn.package`'s. OUT is written whole or not at all (built beside it, then
renamed); an existing package there is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from foldvision import __version__
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.learn.package import (DECISION_JSON, ENSEMBLE_JSON, FORMAT, MANIFEST_JSON, PACKAGE_JSON, README,
                                      FoldModel, Package, from_run, sha256)

# the libraries whose versions decide what a package predicts (recorded, not enforced)
LIBRARIES = ("torch", "torchvision", "timm", "safetensors", "numpy", "polars", "albumentations", "ttach", "pillow",
             "scikit-learn", "opencv-python-headless")

README_TEXT = """# {name}: a foldvision inference package

A {kind} ({models} fold models; classes: {classes}; TTA: {tta}), packaged by foldvision {version}.

Install foldvision (offline: `pip install --no-index --find-links <wheelhouse> foldvision`, from `make wheelhouse`),
then, from any folder:

    foldvision infer {folder} --images <test images> --sample <sample_submission.csv> --out submission.csv

`--ids <table>` instead of `--sample` takes the ids from a table's first column (the output is then the id and
one probability column per class); `--device cpu|cuda`, `--batch-size N`, `--tta hflip vflip` or `--tta none`,
and `--max-minutes M` (TTA views are dropped, by name, when the estimate would overrun) adjust the run.
The package may be read-only; `infer` writes nothing but the submission. manifest.json lists the sha256 of every
file, checked before anything runs.
"""


def _versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"foldvision": __version__, "python": platform.python_version(), "libraries": versions}


def _save_weights(fold: FoldModel, classes: list[str], path: Path) -> None:
    """The fold model's weights as safetensors: plain tensors, no pickle (each its own contiguous copy, since
    safetensors refuses tensors that share memory)."""
    from safetensors.torch import save_file  # noqa: PLC0415 - torch's side

    weights = fold.checkpoint(classes)["model"]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in weights.items()}, str(path))
    path.chmod(0o644)  # safetensors writes 0600: the package is read by whoever mounts it


def describe(pkg: Package, weights: dict[tuple[str, int], str]) -> dict:
    """package.json: what `learn.package.load_package` reads back."""
    members = [{"name": m.name, "weight": m.weight,
                "folds": [{"fold": f.fold, "weights": weights[m.name, f.fold], "model_config": f.model_config,
                           "timm": f.timm, "channels": f.channels, "data_config": f.data_config, "head": f.head}
                          for f in m.folds]}
               for m in pkg.members]
    return {"format": FORMAT, "name": pkg.name, "kind": pkg.kind, "classes": pkg.classes, "metric": pkg.metric,
            "predict": pkg.predict, "data": pkg.data, "method": pkg.method, "members": members}


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fill(pkg: Package, folder: Path, shown_as: Path) -> None:
    """Every file of the package into `folder`, the manifest last."""
    weights = {}
    for member in pkg.members:
        for fold in member.folds:
            rel = f"models/{member.name}/fold{fold.fold}.safetensors"
            _save_weights(fold, pkg.classes, folder / rel)
            weights[member.name, fold.fold] = rel
    _write_json(folder / PACKAGE_JSON, describe(pkg, weights))
    if pkg.rule is not None:
        _write_json(folder / DECISION_JSON, pkg.rule)
    if pkg.ensemble is not None:
        _write_json(folder / ENSEMBLE_JSON, pkg.ensemble)
    (folder / README).write_text(README_TEXT.format(
        name=pkg.name, kind=pkg.kind, models=len(pkg.models), classes=", ".join(pkg.classes),
        tta=", ".join(pkg.predict["tta"]) or "none", version=__version__, folder=shown_as), encoding="utf-8")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    _write_json(folder / MANIFEST_JSON, {"format": FORMAT, **_versions(),
                                         "files": {name: sha256(folder / name) for name in files}})


def write_package(run_dir: Path, out: Path) -> Path:
    """Package the run into `out` (replaced whole when it is a package already); returns `out`."""
    out = Path(out)
    if out.exists() and not (out / MANIFEST_JSON).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a foldvision package: name a new folder for the package")
    pkg, idle = from_run(Path(run_dir)).without_idle()  # idle models: upload size (a Kaggle dataset's limit)
    if idle:
        console.print(f"package: left out {', '.join(idle)}: weight 0 in the blend")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _fill(pkg, staging, out)
        staging.chmod(0o755)  # mkdtemp's 0700 would keep the package from others who mount it
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision package", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> (trained) or runs/<blend> (make ensemble)")
    parser.add_argument("out", type=Path, help="the package folder to write (replaced whole if it is one)")
    args = parser.parse_args(argv)
    out = write_package(args.run_dir, args.out)
    files = [p for p in out.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    console.print(f"package: wrote {out} ({len(files)} files, {size / 2**20:.1f} MiB); run it with "
                  f"foldvision infer {out} --images DIR --sample CSV --out submission.csv")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
