"""Stage 4: every fold model predicts the test images with TTA; probabilities are averaged over folds.

    python -m foldvision.predict runs/<exp> --out submissions/<exp>.csv

Writes `fold<k>/test.csv` per fold (id + one probability column per class; reused while newer than the fold's
checkpoint and the predict settings, so re-ensembling needs no new inference), their mean `test.csv`, and the
submission in exactly the sample submission's format.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from foldvision.config import ModelConfig, to_dict
from foldvision.run import load_run_config
from foldvision.corpus import read_test
from foldvision.console import console
from foldvision.engine import Amp, predict, progress_bar, resolve_device
from foldvision.decision import DecisionRule, fit_rule
from foldvision.errors import UserError, write_atomic, write_text_atomic
from foldvision.metrics import resolve_metric
from foldvision.models import CheckpointError, create_model, load_weights, read_checkpoint
from foldvision.score import read_fold_oofs
from foldvision.submission import build, infer_format, write
from foldvision.tracking import create_tracker
from foldvision.loader import create_loader
from foldvision.tables import prob_columns, read_split
from foldvision.tta import tta_compose, tta_forward


CHECKPOINT_KEYS = ("model", "classes", "channels", "model_config", "data_config")  # what predict reads of best.pt


def retrain(error: CheckpointError, fold: int) -> UserError:
    """A damaged fold checkpoint, with what to do: the fold is trained again from scratch."""
    fold_dir = error.path.parent
    return UserError(f"{error}; delete {fold_dir} and re-train fold {fold} (make train EXP={fold_dir.parent.name} "
                     f"FOLDS={fold}, then make predict)")


def read_fold_checkpoint(path: Path, fold: int) -> dict:
    """best.pt of fold `fold`, or a one-line error naming it and what to do."""
    try:
        return read_checkpoint(path, CHECKPOINT_KEYS)
    except CheckpointError as e:
        raise retrain(e, fold) from None


def fold_model(ckpt: dict, path: Path, fold: int) -> torch.nn.Module:
    """The fold's model with its best weights (on the CPU)."""
    try:
        model_cfg = ModelConfig(**ckpt["model_config"])
        model = create_model(model_cfg, len(ckpt["classes"]), ckpt["channels"], pretrained=False)
        load_weights(model, ckpt["model"], path)
    except TypeError as e:  # model_config with keys this foldvision does not know
        raise retrain(CheckpointError(path, f"not a foldvision checkpoint ({e})"), fold) from None
    except CheckpointError as e:
        raise retrain(e, fold) from None
    return model


def fold_test_probs(run_dir: Path, fold: int, test: pd.DataFrame, test_dir: Path, cfg, device, amp) -> np.ndarray:
    """One fold model's TTA probabilities for the test table, from fold<k>/test.csv when it is current."""
    fold_dir = run_dir / f"fold{fold}"
    best, cached = fold_dir / "best.pt", fold_dir / "test.csv"
    if not best.is_file():
        raise UserError(f"{best} not found: train fold {fold} first (make train EXP={run_dir.name})")
    ckpt = read_fold_checkpoint(best, fold)
    columns = prob_columns(ckpt["classes"])
    stamp = run_dir / "stage-predict.yaml"
    newest_input = max(best.stat().st_mtime, stamp.stat().st_mtime if stamp.is_file() else 0)
    if cached.is_file() and cached.stat().st_mtime > newest_input:
        frame = pd.read_csv(cached, dtype={"id": str}, keep_default_na=False)
        if frame["id"].tolist() == test["id"].tolist():
            console.print(f"fold {fold}: reusing {cached}")
            return frame[columns].to_numpy(dtype=np.float64)
    model = fold_model(ckpt, best, fold).to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)  # the loader's batches come in channels_last
    with progress_bar() as progress:  # the first fold decodes the test images into the cache, the others read it
        # every view of a batch goes through one forward pass of predict.batch_size images: the memory of a
        # pass does not grow with the number of views
        views = len(tta_compose(cfg.predict.tta))
        loader = create_loader(cfg, ckpt["data_config"], device, test_dir, test["path"], None, train=False,
                               batch_size=max(1, cfg.predict.batch_size // views), progress=progress)
        probs = predict(model, loader, amp, device, forward=tta_forward(cfg.predict.tta), progress=progress,
                        description=f"fold {fold} test")
    frame = pd.concat([test[["id"]], pd.DataFrame(probs, columns=columns)], axis=1)
    write_atomic(cached, lambda tmp: frame.to_csv(tmp, index=False))
    return probs


def label_rule(run_dir: Path, folds: list[int], classes: list[str], metric: str) -> DecisionRule:
    """The argmax-or-better decision rule, fitted on the OOF predictions and saved in decision.json."""
    oof = read_fold_oofs(run_dir, folds)
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    rule = fit_rule(y, oof[prob_columns(classes)].to_numpy(dtype=np.float64), metric)
    write_text_atomic(run_dir / "decision.json", json.dumps(rule.to_dict(), indent=2) + "\n")
    console.print(f"predict: labels by {rule.describe()}")
    return rule


def run(run_dir: Path, out: Path) -> pd.DataFrame | None:
    cfg = load_run_config(run_dir)
    table, classes = read_split(run_dir)
    test = read_test(cfg.data)
    if test is None:
        console.print(f"predict: {cfg.data.dir} has no test set (no test folder, test table or sample "
                      f"submission): nothing to predict; the OOF scores are in {run_dir / 'scores.json'}")
        return None
    device = resolve_device(cfg.train.device)
    metric = resolve_metric(cfg.train.metric)
    fmt = None  # the sample's format is checked before minutes of inference, not after
    if test.sample is not None:
        fmt = infer_format(test.sample, test.sample_path, classes, metric, cfg.predict.value, test.sample_header)
    amp = Amp(cfg.train.amp, device)
    folds = sorted(set(table["fold"]))
    console.print(f"predict: {len(test.table)} test images × {len(tta_compose(cfg.predict.tta))} TTA views "
                  f"× {len(folds)} folds")
    probs = np.mean([fold_test_probs(run_dir, k, test.table, test.image_dir, cfg, device, amp) for k in folds],
                    axis=0)
    ensemble = pd.concat([test.table[["id"]], pd.DataFrame(probs, columns=prob_columns(classes))], axis=1)
    write_atomic(run_dir / "test.csv", lambda tmp: ensemble.to_csv(tmp, index=False))
    if fmt is None:
        write_atomic(out, lambda tmp: ensemble.to_csv(tmp, index=False))
        console.print(f"predict: wrote {out} (no sample submission: id + class probabilities)")
        return ensemble
    rule = label_rule(run_dir, folds, classes, metric) if fmt.kind == "label" and cfg.predict.decision == "oof" else None
    submission = build(test.sample, fmt, test.table["id"].tolist(), probs, classes, rule)
    write(submission, out, fmt)
    console.print(f"predict: wrote {out} ({len(submission)} rows, {fmt.kind} in {', '.join(fmt.columns)}"
                  f"{'' if fmt.header else ', no header'})")
    return submission


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
    parser.add_argument("run_dir", type=Path, help="runs/<exp> with every fold<k>/best.pt")
    parser.add_argument("--out", type=Path, help="submission path (default submissions/<exp>.csv)")
    args = parser.parse_args(argv)
    out = args.out or Path("submissions") / f"{args.run_dir.name}.csv"
    if run(args.run_dir, out) is not None:
        track_submission(args.run_dir, out)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
