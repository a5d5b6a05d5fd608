"""A package (or a trained run) predicts a folder of new images into a submission, offline.

    foldvision infer PACKAGE --images DIR [--sample CSV | --ids CSV] --out submission.csv
                     [--device auto|cpu|cuda] [--batch-size N] [--tta hflip vflip | --tta none] [--max-minutes M]

PACKAGE is a folder `foldvision package` wrote (checked against its manifest first) or a run folder, runs/<exp>
or a blend's (`make predict NAME=<exp> TEST=dir [SAMPLE=csv]`). The test images are DIR's image files, in the
order of the sample submission (its format is copied: `results.submission`, the one writer), of the ids table's
first column, or of their file names. Each fold model predicts them with the package's TTA views
(`stages.predict.fold_test_probs`, as `make predict` does), the folds are averaged, a blend's members are blended
with their fitted weights, and labels come from the package's OOF-fitted decision rule.

Nothing is written but --out and a scratch folder of decoded images (in $TMPDIR), removed at the end; the package
may be read-only. After the first batches the estimated total time is printed; with --max-minutes, TTA views are
dropped from the end of the list (said by name) and the prediction starts again when the estimate would overrun.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.markup import escape

from foldvision.config import TTA_VIEWS, DataConfig
from foldvision.console import console
from foldvision.corpus import TestSet, read_test
from foldvision.errors import UserError
from foldvision.learn.checkpoint import CheckpointError
from foldvision.learn.package import Package, open_package
from foldvision.learn.tta import tta_compose
from foldvision.results.blending import Blend, method_inputs, stacker_from_record
from foldvision.results.decision import DecisionRule
from foldvision.results.submission import Sample, sample_format, write_submission
from foldvision.run import Predictions, submission_csv
from foldvision.stages.predict import fold_test_probs
from foldvision.targets import Task

clock = time.monotonic  # the pace's clock (a test slows it down)
SAFETY = 0.9  # --max-minutes: views are kept only while the estimate stays under this share of the limit


def check_inputs(images: Path, sample: Path | None, ids: Path | None) -> None:
    """The named folder and tables exist (before the package is read and checked)."""
    if not images.is_dir():
        raise UserError(f"--images {images}: no such folder; name the folder of test images")
    for flag, path in (("--sample", sample), ("--ids", ids)):
        if path is not None and not path.is_file():
            raise UserError(f"{flag} {path}: no such file")


def read_images(images: Path, sample: Path | None, ids: Path | None, pkg: Package) -> tuple[TestSet, Sample | None]:
    """The test images of DIR in the sample's (or the ids table's, or the file names') order, and the sample's
    format, checked before any model runs (the corpus reader, with DIR as its test folder)."""
    data = pkg.data
    cfg = DataConfig(dir=str(images), train_csv="none", train_images=".", test_images=".",
                     sample_submission=str(sample.resolve()) if sample else "none",
                     test_csv=str(ids.resolve()) if ids else "none", sample_header=data["sample_header"],
                     encoding=data["encoding"], max_image_pixels=data["max_image_pixels"], cache=False)
    test = read_test(cfg)
    return test, sample_format(test, Task(pkg.task, tuple(pkg.classes)), pkg.metric, pkg.predict["value"])


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


class Overrun(Exception):
    """The estimate would overrun --max-minutes: start again with these views."""

    def __init__(self, views: list[str], message: str):
        super().__init__(message)
        self.views = views


@dataclass
class Pace:
    """The estimated total time, from each model's batches after its first (which pays its warm-up), and the
    --max-minutes check: the views that fit, when the current ones would overrun. The first model's estimate is
    printed; every later model is timed again, so a slower member of a blend is caught when it starts."""

    images: int
    models: int
    views: list[str]
    limit_s: float | None
    start: float = field(default_factory=lambda: clock())
    first: tuple[int, float, int] | None = None  # (model, time, images seen) after that model's first batch
    timed: set[int] = field(default_factory=set)

    def on_batch(self, model: int, seen: int) -> None:
        """Called after each batch of model `model` with the images it has predicted so far."""
        now = clock()
        if model in self.timed:
            return
        if self.first is None or self.first[0] != model:
            self.first = (model, now, seen)
            return
        self.timed.add(model)
        per_image = (now - self.first[1]) / max(1, seen - self.first[2])
        left = self.images - seen + (self.models - 1 - model) * self.images  # at this model's pace
        total = now - self.start + left * per_image
        n_views = len(tta_compose(self.views))
        overrun = self.limit_s is not None and total > self.limit_s
        if model == 0 or overrun:
            console.print(f"infer: estimated {_duration(total)} in all ({self.images} images × {n_views} TTA views "
                          f"× {self.models} models, {1 / max(per_image, 1e-9):.1f} img/s"
                          f"{f' at model {model + 1}' if model else ''})")
        if overrun:
            if not self.views:
                console.print(f"[yellow]warning[/]: the estimate overruns --max-minutes {self.limit_s / 60:g} "
                              "with no TTA view left to drop; use a faster --device or fewer fold models")
                return
            self._drop(now, per_image / n_views, total)

    def _drop(self, now: float, per_view: float, total: float) -> None:
        """Raise Overrun with the longest prefix of the views whose fresh start fits the limit (none: no TTA)."""
        kept = list(self.views)
        while kept:
            kept.pop()
            if now - self.start + self.models * self.images * per_view * len(tta_compose(kept)) \
                    <= SAFETY * self.limit_s:
                break
        dropped = self.views[len(kept):]
        raise Overrun(kept, f"infer: dropping TTA views {', '.join(dropped)} (kept: {', '.join(kept) or 'none'}): "
                            f"the estimated {_duration(total)} would overrun --max-minutes "
                            f"{self.limit_s / 60:g}; starting again")


def blend(pkg: Package, members: list[np.ndarray]) -> np.ndarray:
    """The members' test probabilities blended as `foldvision ensemble` blended theirs (an experiment: itself)."""
    if pkg.kind == "experiment":
        return members[0]
    fitted = Blend(pkg.method, np.array([m.weight for m in pkg.members]), stacker=_stacker(pkg))
    return fitted.apply(method_inputs(pkg.method, members))


def _stacker(pkg: Package):
    """A stack blend's logistic regression, rebuilt from ensemble.json (`blending.stacker_from_record`, beside
    the writer of that record)."""
    record = (pkg.ensemble or {}).get("stacker")
    if pkg.method != "stack":
        return None
    if record is None:
        raise UserError(f"{pkg.name}: a stack blend without its stacker in ensemble.json; blend again")
    return stacker_from_record(record, pkg.classes)


@dataclass(frozen=True)
class Options:
    device: str
    batch_size: int
    workers: int | None
    scratch: Path


def predict_views(pkg: Package, test: TestSet, views: list[str], opts: Options, pace: Pace) -> np.ndarray:
    """Every fold model's TTA probabilities (`fold_test_probs`, as make predict), averaged over each member's
    folds, then blended."""
    paths, n = test.table["path"].to_list(), 0
    runtime = {"device": opts.device, "amp": pkg.predict["amp"], "channels_last": pkg.predict["channels_last"]}
    loader = {"train": False, "num_workers": opts.workers, "channels_last": pkg.predict["channels_last"],
              "cache_dir": str(opts.scratch)}
    members = []
    for member in pkg.members:
        total = 0.0  # the folds' sum, a column per class or tag, or one value (its head: foldvision.learn.heads)
        for fold in member.folds:
            ckpt = fold.checkpoint(pkg.classes)
            try:
                total += fold_test_probs(ckpt, fold.weights, test.image_dir, paths, tta=views,
                                         batch_size=opts.batch_size, runtime=runtime, loader=loader,
                                         description=f"{member.name} fold {fold.fold}",
                                         on_batch=lambda seen, m=n: pace.on_batch(m, seen))
            except CheckpointError as e:
                raise UserError(f"{e}; package the run again") from None
            n += 1
        members.append(total / len(member.folds))
    return blend(pkg, members)


def infer(package: Path, images: Path, out: Path, *, sample: Path | None = None, ids: Path | None = None,
          device: str = "auto", batch_size: int | None = None, tta: list[str] | None = None,
          max_minutes: float | None = None, workers: int | None = None) -> Predictions:
    """Predict `images` with the package into the submission `out`; returns the test probabilities."""
    check_inputs(images, sample, ids)
    pkg, idle = open_package(package).without_idle()  # a blend's run folder may hold members of weight 0
    test, fmt = read_images(images, sample, ids, pkg)
    views = list(pkg.predict["tta"] if tta is None else tta)
    rule = DecisionRule(**pkg.rule) if pkg.rule and fmt is not None and fmt.format.labels_by_rule(
        pkg.predict["decision"]) else None
    ids_, models = test.table["id"].to_list(), len(pkg.models)
    console.print(f"infer: {pkg.kind} {escape(pkg.name)}, {len(ids_)} images × {len(tta_compose(views))} TTA "
                  f"views ({', '.join(views) or 'none'}) × {models} models"
                  + (f" (not run, of weight 0: {escape(', '.join(idle))})" if idle else ""))
    scratch = Path(tempfile.mkdtemp(prefix="foldvision-infer-"))
    limit = None if max_minutes is None else max_minutes * 60
    opts = Options(device, batch_size or pkg.predict["batch_size"], workers, scratch)
    try:
        while True:
            try:
                probs = predict_views(pkg, test, views, opts, Pace(len(ids_), models, views, limit))
                break
            except Overrun as e:
                console.print(str(e))
                views = e.views
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    preds = Predictions(ids_, pkg.classes, probs, kind=pkg.task)
    if rule is not None:
        console.print(f"infer: labels by {rule.describe()}")
    console.print(f"infer: {escape(write_submission(out, preds, fmt, rule))}")
    return preds


def parse_views(words: list[str] | None) -> list[str] | None:
    if words is None:
        return None
    if words == ["none"]:
        return []
    unknown = [w for w in words if w not in TTA_VIEWS]
    if unknown:
        raise UserError(f"--tta {unknown[0]}: use views of {', '.join(TTA_VIEWS)}, or --tta none")
    return words


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision infer", description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path, help="a package folder (foldvision package) or runs/<exp>")
    parser.add_argument("--images", type=Path, required=True, help="the folder of test images")
    order = parser.add_mutually_exclusive_group()
    order.add_argument("--sample", type=Path, help="the sample submission: the ids, their order and the format")
    order.add_argument("--ids", type=Path, help="a table whose first column lists the test ids")
    parser.add_argument("--out", type=Path, help="the submission (default <submissions>/<name>--<images>.csv)")
    parser.add_argument("--submissions", type=Path, default=Path("submissions"), help="where --out defaults to")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1...")
    parser.add_argument("--batch-size", type=int, help="images per forward pass, TTA views included "
                        "(default: the package's predict.batch_size)")
    parser.add_argument("--tta", nargs="+", help=f"TTA views ({', '.join(TTA_VIEWS)}), or none; default the package's")
    parser.add_argument("--max-minutes", type=float, help="drop TTA views when the estimate would overrun this")
    parser.add_argument("--workers", type=int, help="loader processes (default: one per spare core)")
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: give a whole number of images, 1 or more")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise UserError(f"--max-minutes {args.max_minutes}: give the minutes the run may take, e.g. 30")
    out = args.out or submission_csv(args.submissions, f"{args.package.resolve().name}--{args.images.resolve().name}")
    infer(args.package, args.images, out, sample=args.sample, ids=args.ids, device=args.device,
          batch_size=args.batch_size, tta=parse_views(args.tta), max_minutes=args.max_minutes, workers=args.workers)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
