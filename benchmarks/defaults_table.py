"""The default recipe against the textbook loop (and the settings between them) at an equal budget, per corpus.

    .venv/bin/python benchmarks/defaults_table.py --corpora digits pollen12 --variants before now textbook \\
        [--runs /tmp/fv-runs] [--define 'name=k=v;k=v' ...] [--table-only]

Each (corpus, variant) is `make train` (5 folds, tracking off) into <runs>/<corpus>--<variant>; a finished one is
not trained again (make sees its files). Every run is in float32 (train.amp=off) on one thread
(OMP_NUM_THREADS=1, two folds side by side): on this 2-core machine bf16 autocast trains EfficientNet-Lite0
slower than float32 (96 px, 2 threads: 115 against 174 img/s), and torch threads that outnumber the cores
spin-wait on each other (two 2-thread trainings side by side: 1.8 img/s each); neither changes what a variant
computes, only how long it takes. The table holds the OOF scores (the whole out-of-fold set scored at
once): macro-F1, accuracy, log loss and AUC, the first epoch's validation log loss (mean over folds) and the
training wall time. A corpus is an experiment, a data folder and the overrides that size it for a CPU:

    digits      configs/digits (resnet10t from scratch, 32 px), 1 epoch
    pollen12    configs/pollen12_lite0, EfficientNet-Lite0 from ../shared/weights at 96 px, 3 epochs
    pollen12_imb  the same on an imbalanced cut of pollen12 (35 images in 4 classes, 10-12 in 4, 5 in 4): make it
                with --make-imbalanced DIR
    pneumonia   configs/pneumonia_small, the same weights at 64 px, 1 epoch (5,216 images)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
LITE0 = "model.pretrained_file=../shared/weights/tf_efficientnet_lite0.in1k.safetensors"
CORPORA = {
    "digits": ("digits", "inputs/digits", ["train.epochs=1"]),
    "pollen12": ("pollen12_lite0", "../shared/data/pollen12", [LITE0, "model.img_size=96", "train.epochs=3"]),
    "pollen12_imb": ("pollen12_lite0", "/tmp/fv/data/pollen12_imb", [LITE0, "model.img_size=96", "train.epochs=3"]),
    "pneumonia": ("pneumonia_small", "../shared/data/pneumonia", [LITE0, "model.img_size=64", "train.epochs=1"]),
}
R21_EXTERNAL = ["train.optimizer_args={disable_lr_scheduler: true}"]
BEFORE = ["train.optimizer=ranger21", "loss.name=cce", "train.sampler=imbalanced"]
VARIANTS = {
    # the recipe as shipped before issue 14 (Ranger21 with its Lookahead, CCE, imbalanced sampler), then the
    # defaults' changes one at a time, and the plain loop the defaults should never lose to
    "before": [*BEFORE, "train.lookahead=true", "train.precise_bn=0", "train.prior_correction=false"],
    "no-lookahead": [*BEFORE, "train.lookahead=false", "train.precise_bn=0", "train.prior_correction=false"],
    "no-lookahead+pbn": [*BEFORE, "train.lookahead=false", "train.precise_bn=50", "train.prior_correction=false"],
    "now": [],  # the defaults: Ranger21 without Lookahead, precise BN (50 batches), the prior correction
    "textbook": ["train.optimizer=adamw", "train.lr=3e-4", "loss.name=ce", "train.sampler=random",
                 "train.precise_bn=0"],
    "textbook+pbn": ["train.optimizer=adamw", "train.lr=3e-4", "loss.name=ce", "train.sampler=random",
                            "train.precise_bn=50"],
}


def make_imbalanced(source: Path, out: Path) -> None:
    """Classes in name order keep 35, 35, 35, 35, 12, 12, 12, 12, 5, 5, 5, 5 images (or fewer when they have fewer)."""
    keep = [35] * 4 + [12] * 4 + [5] * 4
    for k, folder in zip(keep, sorted(p for p in source.iterdir() if p.is_dir())):
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:k]:
            shutil.copy(image, out / folder.name / image.name)


def train(corpus: str, variant: str, overrides: list[str], runs: Path) -> float:
    exp, data, sizing = CORPORA[corpus]
    args = " ".join(shlex.quote(a) for a in [*sizing, *overrides, "tracking=none", "train.amp=off"])
    # -j2: two folds side by side, each on one thread (what OMP_NUM_THREADS=1 gives a single job too)
    cmd = ["make", "--no-print-directory", "-j2", "train", f"EXP={exp}", f"DATA={data}", f"NAME={corpus}--{variant}",
           f"RUNS={runs}", f"ARGS={args}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(f"{corpus}--{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def row(corpus: str, variant: str, runs: Path) -> dict | None:
    run = runs / f"{corpus}--{variant}"
    if not (run / "scores.json").is_file():
        return None
    oof = json.loads((run / "scores.json").read_text())["oof"]
    histories = [pl.read_csv(p) for p in sorted(run.glob("fold*/history.csv"))]
    first = sum(h["val_loss"][0] for h in histories) / len(histories)
    seconds = sum(float(h["seconds"].sum()) for h in histories)
    return {"corpus": corpus, "variant": variant, "macro_f1": oof["macro_f1"], "accuracy": oof["accuracy"],
            "log_loss": oof["log_loss"], "auc": oof["auc"], "epoch1_val_loss": first, "train_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--define", nargs="*", default=[], metavar="NAME=k=v;k=v",
                        help="extra variants, e.g. 'r21-warm5=train.warmup_frac=0.05'")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/fv-runs"))
    parser.add_argument("--make-imbalanced", type=Path, help="write the imbalanced pollen12 cut here, then stop")
    parser.add_argument("--table-only", action="store_true", help="print the table of what has run")
    args = parser.parse_args()
    if args.make_imbalanced:
        make_imbalanced(ROOT.parent / "shared" / "data" / "pollen12", args.make_imbalanced)
        return
    variants = dict(VARIANTS)
    for spec in args.define:
        name, _, body = spec.partition("=")
        variants[name] = [o for o in body.split(";") if o]
    for corpus in args.corpora:
        for variant in args.variants:
            if not args.table_only:
                seconds = train(corpus, variant, variants[variant], args.runs)
                print(f"{corpus}--{variant}: {seconds:.0f} s", flush=True)
    rows = [r for c in args.corpora for v in args.variants if (r := row(c, v, args.runs))]
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200):
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
