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

The other target kinds (issue 20) have corpora of their own, the demo canvases (800 train, 200 held-back test
images each), built with `make inputs/digits_<kind>/train.csv` when missing, 4 epochs (a 5-fold x 8-epoch tags
run takes ~4 min on this machine):

    digits_tags              configs/digits_tags, multilabel (BCE)
    digits_count             configs/digits_count, ordinal grades 0..4 (MSE on the grade)
    digits_count_regression  configs/digits_count_regression, the same folder read as a regression target

    .venv/bin/python benchmarks/defaults_table.py --corpora digits_tags digits_count digits_count_regression \\
        --variants now plain

(name them: --corpora's default is the four single-label corpora, the table as it was). Their variants are
`now` (the config's recipe: Ranger21 and its schedule, precise BN; for tags the rarest-tag sampler and its
prior correction) and `plain`, the textbook loop at the same epochs and the config's lr: the kind's default loss
(BCE or MSE), AdamW at a constant lr, shuffled batches, no precise BN, prior correction or EMA. The single-label variants name a single-label loss or sampler and are
skipped for these corpora, as `plain` is for the single-label ones. After training, each run is predicted
(`make predict`, its submission in <runs>/submissions/<corpus>--<variant>.csv) and the submission scored on the
held-back test labels (`foldvision evaluate --task <kind> --json <run>/evaluate.json`). One table per kind holds
its OOF scores (multilabel: map, samples_f1, macro_auc; ordinal: qwk, accuracy, mae; regression: rmse, mae, r2),
the decision's OOF scores for the metric it is fitted for (the plain decision, the rule fitted on all OOF rows,
the rule judged nested, and whether it is used) and that metric on the test set (a submission holds decisions:
tags, grades or values, so multilabel's test score is samples_f1, not map).

--set k=v ... goes to every run last (after its sizing and variant): `--set train.epochs=1 cv.n_folds=2` with a
--runs folder of its own is a smoke run of the whole path.
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
    "digits_tags": ("digits_tags", "inputs/digits_tags", ["train.epochs=4"]),
    "digits_count": ("digits_count", "inputs/digits_count", ["train.epochs=4"]),
    "digits_count_regression": ("digits_count_regression", "inputs/digits_count", ["train.epochs=4"]),
}
# make runs the stages with this script's python, as the tests do: a .venv older than pyproject.toml is not
# reinstalled in the middle of a benchmark
PY = f"PY={sys.executable}"
# the corpora of the other task kinds (foldvision.targets); every other corpus is single-label
KIND = {"digits_tags": "multilabel", "digits_count": "ordinal", "digits_count_regression": "regression"}
# the OOF scores each kind's table shows, its task metric first
KIND_SCORES = {"multilabel": ("map", "samples_f1", "macro_auc"), "ordinal": ("qwk", "accuracy", "mae"),
               "regression": ("rmse", "mae", "r2")}
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
    # the textbook loop for the other kinds: BCE or MSE (the kind's auto loss), AdamW at a constant lr, shuffled
    # batches, no precise BN, prior correction or EMA. The config's lr (3e-3), not textbook's 3e-4: these nets
    # learn from scratch in ~40 steps a fold (3e-4 is a fine-tuning rate), so the row compares the recipes
    # rather than their learning rates
    "plain": ["loss.name=auto", "train.optimizer=adamw", "train.sampler=random", "train.precise_bn=0",
              "train.prior_correction=false", "train.ema_decay=null"],
}
# variants that only fit one side: the single-label ones name a single-label loss (or the class sampler)
SINGLE_ONLY = {"before", "no-lookahead", "no-lookahead+pbn", "textbook", "textbook+pbn"}
OTHER_KINDS_ONLY = {"plain"}


def make_imbalanced(source: Path, out: Path) -> None:
    """Classes in name order keep 35, 35, 35, 35, 12, 12, 12, 12, 5, 5, 5, 5 images (or fewer when they have fewer)."""
    keep = [35] * 4 + [12] * 4 + [5] * 4
    for k, folder in zip(keep, sorted(p for p in source.iterdir() if p.is_dir())):
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:k]:
            shutil.copy(image, out / folder.name / image.name)


def applies(variant: str, corpus: str) -> bool:
    """Whether a variant fits a corpus's task kind (a --define'd one fits every kind)."""
    return variant not in (OTHER_KINDS_ONLY if corpus not in KIND else SINGLE_ONLY)


def make(goal: str, corpus: str, variant: str, overrides: list[str], runs: Path) -> subprocess.CompletedProcess:
    """`make -j2 <goal>` for one (corpus, variant) run: the same ARGS for every goal, so predict finds the
    trained run's config unchanged."""
    exp, data, sizing = CORPORA[corpus]
    args = " ".join(shlex.quote(a) for a in [*sizing, *overrides, "tracking=none", "train.amp=off"])
    # -j2: two folds side by side, each on one thread (what OMP_NUM_THREADS=1 gives a single job too)
    cmd = ["make", "--no-print-directory", "-j2", goal, f"EXP={exp}", f"DATA={data}", f"NAME={corpus}--{variant}",
           f"RUNS={runs}", f"SUBMISSIONS={runs / 'submissions'}", f"ARGS={args}", PY]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        sys.exit(f"{corpus}--{variant} ({goal}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def train(corpus: str, variant: str, overrides: list[str], runs: Path) -> float:
    start = time.perf_counter()
    make("train", corpus, variant, overrides, runs)
    return time.perf_counter() - start


def build_demo(corpus: str) -> None:
    """A demo corpus (inputs/...) is built by its make target when its label table is missing."""
    data = CORPORA[corpus][1]
    if data.startswith("inputs/") and not (ROOT / data / "train.csv").is_file():
        done = subprocess.run(["make", "--no-print-directory", f"{data}/train.csv", PY], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"building {data} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def predict_and_evaluate(corpus: str, variant: str, overrides: list[str], runs: Path) -> None:
    """The run's submission (`make predict`), scored on the corpus's held-back labels into <run>/evaluate.json."""
    make("predict", corpus, variant, overrides, runs)
    name = f"{corpus}--{variant}"
    cmd = [sys.executable, "-m", "foldvision", "evaluate", str(runs / "submissions" / f"{name}.csv"),
           str(ROOT / CORPORA[corpus][1] / "test_labels.csv"), "--task", KIND[corpus],
           "--json", str(runs / name / "evaluate.json")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name} (evaluate) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def fold_histories(run: Path) -> dict:
    """The first epoch's validation loss (mean over folds) and the training seconds (sum over folds). Regression
    and ordinal histories have no val_loss (their validation is scored by the task's metrics alone): None."""
    histories = [pl.read_csv(p) for p in sorted(run.glob("fold*/history.csv"))]
    losses = [h["val_loss"][0] for h in histories if "val_loss" in h.columns]
    first = sum(losses) / len(losses) if len(losses) == len(histories) else None
    return {"epoch1_val_loss": first, "train_s": sum(float(h["seconds"].sum()) for h in histories)}


def row(corpus: str, variant: str, runs: Path) -> dict | None:
    run = runs / f"{corpus}--{variant}"
    if not (run / "scores.json").is_file():
        return None
    oof = json.loads((run / "scores.json").read_text())["oof"]
    return {"corpus": corpus, "variant": variant, "macro_f1": oof["macro_f1"], "accuracy": oof["accuracy"],
            "log_loss": oof["log_loss"], "auc": oof["auc"], **fold_histories(run)}


def kind_row(corpus: str, variant: str, runs: Path) -> dict | None:
    """A multilabel, ordinal or regression run: its OOF scores, its decision's and its held-back test score."""
    run = runs / f"{corpus}--{variant}"
    if not (run / "scores.json").is_file():
        return None
    scores = json.loads((run / "scores.json").read_text())
    decision = scores["decision"]
    tested = run / "evaluate.json"
    test = json.loads(tested.read_text())["all"].get(decision["metric"]) if tested.is_file() else None
    return {"corpus": corpus, "variant": variant, **{m: scores["oof"][m] for m in KIND_SCORES[KIND[corpus]]},
            "decided": decision["metric"], "plain": decision["oof_before"], "fit_all": decision["oof_after"],
            "nested": decision["oof_nested"], "used": decision["used"], "test": test, **fold_histories(run)}


def print_tables(corpora: list[str], variants: list[str], runs: Path) -> None:
    """The single-label table as before, then one table per other task kind (their columns differ)."""
    pairs = [(c, v) for c in corpora for v in variants if applies(v, c)]
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_width_chars=200):
        if any(c not in KIND for c in corpora):
            print(pl.DataFrame([r for c, v in pairs if c not in KIND and (r := row(c, v, runs))]))
        for kind in KIND_SCORES:
            rows = [r for c, v in pairs if KIND.get(c) == kind and (r := kind_row(c, v, runs))]
            if rows:
                print(f"{kind}: OOF scores; the decision's OOF '{rows[0]['decided']}' (plain, fitted on all rows, "
                      "nested, used) and on the held-back test set")
                print(pl.DataFrame(rows))


def run_all(corpora: list[str], variants: list[str], overrides: dict[str, list[str]], runs: Path) -> None:
    """Train each (corpus, variant) that fits; a multilabel, ordinal or regression run is also predicted and its
    submission scored on the held-back labels."""
    for corpus in corpora:
        build_demo(corpus)
        for variant in variants:
            if not applies(variant, corpus):
                side = "single-label" if variant in SINGLE_ONLY else "multilabel, ordinal and regression"
                print(f"{corpus}--{variant}: skipped ({variant} is for {side} corpora)", flush=True)
                continue
            seconds = train(corpus, variant, overrides[variant], runs)
            print(f"{corpus}--{variant}: {seconds:.0f} s", flush=True)
            if corpus in KIND:
                predict_and_evaluate(corpus, variant, overrides[variant], runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # the default is the single-label corpora (the table as it was); name the other kinds' corpora to run them
    parser.add_argument("--corpora", nargs="+", default=[c for c in CORPORA if c not in KIND], choices=list(CORPORA))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--define", nargs="*", default=[], metavar="NAME=k=v;k=v",
                        help="extra variants, e.g. 'r21-warm5=train.warmup_frac=0.05'")
    parser.add_argument("--set", nargs="*", default=[], metavar="k=v",
                        help="overrides for every run, after sizing and variant (smoke: train.epochs=1 cv.n_folds=2)")
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
    if not args.table_only:
        run_all(args.corpora, args.variants, {v: [*variants[v], *args.set] for v in args.variants}, args.runs)
    print_tables(args.corpora, args.variants, args.runs)



if __name__ == "__main__":
    main()
