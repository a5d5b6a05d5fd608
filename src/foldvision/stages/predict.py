"""Stage 4: each fold model predicts the test images with TTA; the submission is their mean over folds.

    python -m foldvision.stages.predict runs/<exp> --fold K                   fold<K>/test.csv: fold K's TTA probabilities
    python -m foldvision.stages.predict runs/<exp> --out submissions/<exp>.csv   their mean: test.csv and the submission

`--fold` always runs the model; `--out` never does: `average_folds` averages the existing `fold<k>/test.csv`
files (id + one probability column per class or tag, or one value in the user's units: `foldvision.targets`) into `test.csv` and writes the submission in exactly the sample
submission's format, joined by id, through the one submission writer (`results.submission.write_submission`).
Make decides what is stale (the `fold%/test.csv` rule), so re-ensembling or re-labelling needs no new inference.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.markup import escape

from foldvision.config import Config, ModelConfig, to_dict
from foldvision.console import console
from foldvision.corpus import TestSet, read_test
from foldvision.errors import UserError
from foldvision.results.decision import DECIDES, DecisionRule, fit_nested
from foldvision.results.metrics import resolve_metric
from foldvision.results.submission import Sample, sample_format, write_submission
from foldvision.results.tracking import create_tracker
from foldvision.run import Predictions, Run, load_run_config, submission_csv
from foldvision.targets import Task

if TYPE_CHECKING:
    from foldvision.learn.checkpoint import CheckpointError

# The torch side (foldvision.learn: torch, timm, albumentations, ~5 s of imports) is imported where a fold model
# predicts, so `predict --out` (the fold mean into the submission, once per `make predict`) starts in a second.

CHECKPOINT_KEYS = ("model", "classes", "channels", "model_config", "data_config")  # what predict reads of best.pt


def retrain(error: CheckpointError, fold: int) -> UserError:
    """A damaged fold checkpoint, with what to do: the fold is trained again from scratch."""
    fold_dir = error.path.parent
    return UserError(f"{error}; delete {fold_dir} and re-train fold {fold} (make train {Run(fold_dir.parent).make_args} "
                     f"FOLDS={fold}, then make predict)")


def read_fold_checkpoint(path: Path, fold: int) -> dict:
    """best.pt of fold `fold`, or a one-line error naming it and what to do."""
    if not path.is_file():
        raise UserError(f"{path} not found: train fold {fold} first (make train {Run(path.parent.parent).make_args})")
    from foldvision.learn.checkpoint import CheckpointError, read_checkpoint  # noqa: PLC0415 - the torch side

    try:
        return read_checkpoint(path, CHECKPOINT_KEYS)
    except CheckpointError as e:
        raise retrain(e, fold) from None


def fold_test_probs(ckpt: dict, ckpt_path: Path, image_dir: Path, paths: list[str], *, tta: list[str],
                    batch_size: int, runtime: dict, loader: dict, description: str = "test",
                    on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """One fold model's TTA probabilities of `paths` (relative to `image_dir`), one row per path, in order: per
    class or tag, or one value in the user's units (the checkpoint's head maps the outputs as validation did).

    Args:
        ckpt: the fold's best.pt (`read_fold_checkpoint`); the model is rebuilt from it alone.
        ckpt_path: its file, named when its weights do not fit.
        tta: predict.tta view names. `batch_size`: images per forward pass, TTA views included, so the memory
            of a pass does not grow with the number of views.
        runtime: `engine.runtime_kwargs` (device, amp, channels_last); the model runs uncompiled.
        loader: `loader.loader_kwargs(cfg, train=False)` (cache, workers).
        on_batch: called with the images predicted so far after each batch (`engine.predict`).
    """
    from foldvision.learn.checkpoint import (CheckpointError, read_head,  # noqa: PLC0415 - the torch side
                                             read_preprocessing)
    from foldvision.learn.engine import build_model_for, predict, progress_bar  # noqa: PLC0415
    from foldvision.learn.loader import create_loader  # noqa: PLC0415
    from foldvision.learn.tta import tta_compose, tta_forward  # noqa: PLC0415

    try:
        model_cfg = ModelConfig(**ckpt["model_config"])
    except TypeError as e:  # model_config with keys this foldvision does not know
        raise CheckpointError(ckpt_path, f"not a foldvision checkpoint ({e})") from None
    head = read_head(ckpt, ckpt_path)
    setup = build_model_for(model_cfg, head.outputs, ckpt["channels"], **{**runtime, "compile": False},
                            pretrained=False, weights=ckpt["model"], weights_path=ckpt_path,
                            preprocessing=read_preprocessing(ckpt, ckpt_path), source=ckpt.get("timm"))
    views = len(tta_compose(tta))
    with progress_bar() as progress:  # the first fold decodes the test images into the cache, the others read it
        batches = create_loader(image_dir, paths, None, setup.preprocessing, setup.device,
                                **{**loader, "batch_size": max(1, batch_size // views)},
                                progress=progress)
        return predict(setup.net, batches, setup.amp, setup.device, forward=tta_forward(tta, head=head),
                       progress=progress, description=description, on_batch=on_batch, head=head)


def test_set(cfg: Config, run: Run, task: Task, verify: bool = True) -> tuple[TestSet | None, Sample | None]:
    """The test images and the sample submission with its format, checked before minutes of inference;
    (None, None) and one printed line when the corpus has no test set."""
    test = read_test(cfg.data, verify=verify)
    if test is None:
        console.print(f"predict: {cfg.data.dir} has no test set (no test folder, test table or sample "
                      f"submission): nothing to predict; the OOF scores are in {run.scores_json}")
        return None, None
    return test, sample_format(test, task, resolve_metric(cfg.train.metric, task.kind), cfg.predict.value)


def predict_fold(run_dir: Path, fold: int) -> Predictions | None:
    """fold<k>/test.csv: fold `fold`'s TTA probabilities of every test image (always computed: make decides
    whether it is stale)."""
    from foldvision.learn.checkpoint import CheckpointError, read_head  # noqa: PLC0415 - the torch side
    from foldvision.learn.engine import runtime_kwargs  # noqa: PLC0415
    from foldvision.learn.loader import loader_kwargs  # noqa: PLC0415
    from foldvision.learn.tta import tta_compose  # noqa: PLC0415

    cfg, run = load_run_config(run_dir), Run(run_dir)
    task = run.read_task()
    classes = list(task.names)
    test, _ = test_set(cfg, run, task)
    if test is None:
        return None
    files = run.fold(fold)
    ckpt = read_fold_checkpoint(files.best_pt, fold)
    if list(ckpt["classes"]) != classes:
        raise retrain(CheckpointError(files.best_pt, f"its classes are not those of {run.classes_json}"), fold)
    if read_head(ckpt, files.best_pt).kind != task.kind:
        raise retrain(CheckpointError(files.best_pt, f"it predicts another task kind than {run.classes_json}'s "
                                                     f"{task.kind}"), fold)
    ids, paths = test.table["id"].to_list(), test.table["path"].to_list()
    console.print(f"fold {fold}: {len(ids)} test images × {len(tta_compose(cfg.predict.tta))} TTA views")
    try:
        probs = fold_test_probs(ckpt, files.best_pt, test.image_dir, paths, tta=cfg.predict.tta,
                                batch_size=cfg.predict.batch_size, runtime=runtime_kwargs(cfg.train),
                                loader=loader_kwargs(cfg, train=False), description=f"fold {fold} test")
    except CheckpointError as e:
        raise retrain(e, fold) from None
    out = Predictions(ids, classes, probs, kind=task.kind)
    run.write_test(out, fold)
    console.print(f"fold {fold}: wrote {files.test_csv}")
    return out


def fold_mean(run: Run, folds: list[int], task: Task, ids: list[str], where: Path) -> np.ndarray:
    """The mean of the folds' test probabilities (or values), row by row in `ids` order (joined by id, never by
    position)."""
    total = None
    for k in folds:
        part = run.read_test(task, k)  # a missing one: one line naming it and `make predict`
        row_of = {i: n for n, i in enumerate(part.ids)}
        missing = [i for i in ids if i not in row_of]
        if missing or len(row_of) != len(ids):
            raise UserError(f"{run.fold(k).test_csv} predicts other test images than {where} lists "
                            f"({len(missing)} missing, e.g. '{missing[0] if missing else part.ids[0]}'); "
                            f"predict them again (make predict {run.make_args})")
        rows = part.probs[[row_of[i] for i in ids]]
        total = rows if total is None else total + rows
    return total / len(folds)


def label_rule(run: Run, classes: list[str], metric: str, min_tags: int = 0) -> DecisionRule:
    """The decision rule fitted on the OOF predictions, used where its nested score beats the plain decision
    (argmax, tags at 0.5, rounding, no clipping), saved in decision.json."""
    oof = run.read_fold_oofs(run.read_split())
    rule = fit_nested(oof.y, oof.probs, oof.fold, metric, oof.kind, min_tags, len(classes))
    run.write_decision(rule.to_dict())
    console.print(f"predict: {DECIDES[oof.kind]} by {rule.describe()}")
    return rule


def average_folds(run_dir: Path, out: Path) -> Predictions | None:
    """test.csv (the mean of every fold<k>/test.csv) and the submission `out`; runs no model. Returns the mean,
    or None when the corpus has no test set."""
    cfg, run = load_run_config(run_dir), Run(run_dir)
    split = run.read_split()
    test, sample = test_set(cfg, run, split.task, verify=False)  # no image is opened
    if test is None:
        return None
    ids = test.table["id"].to_list()
    probs = fold_mean(run, split.folds, split.task, ids, test.sample_path or test.image_dir)
    mean = Predictions(ids, split.classes, probs, kind=split.kind)
    run.write_test(mean)
    console.print(f"predict: {len(ids)} test images, the mean of {len(split.folds)} folds")
    use_rule = sample is not None and sample.format.labels_by_rule(cfg.predict.decision)
    metric = resolve_metric(cfg.train.metric, split.kind)
    rule = label_rule(run, split.classes, metric, cfg.predict.min_tags) if use_rule else None
    console.print(f"predict: {escape(write_submission(out, mean, sample, rule))}")
    return mean


def track_submission(run_dir: Path, out: Path) -> None:
    """With `log_submission: true`, the submission becomes a W&B artifact in the experiment's group."""
    cfg = load_run_config(run_dir)
    if not cfg.log_submission:
        return
    tracker = create_tracker(cfg.tracking, run_dir, f"{cfg.name}-predict", "predict", to_dict(cfg))
    try:
        tracker.log_artifact(out, f"{cfg.name}-submission", "submission")
    finally:
        tracker.finish()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> with fold<k>/best.pt (--fold) or fold<k>/test.csv")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--fold", type=int, nargs="+", help="write these folds' fold<k>/test.csv (runs the model)")
    what.add_argument("--out", type=Path, help="average every fold<k>/test.csv into test.csv and this submission "
                                               "(default submissions/<exp>.csv; runs no model)")
    args = parser.parse_args(argv)
    if args.fold is not None:
        for fold in args.fold:
            predict_fold(args.run_dir, fold)
        return
    out = args.out or submission_csv("submissions", args.run_dir.name)
    if average_folds(args.run_dir, out) is not None:
        track_submission(args.run_dir, out)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
