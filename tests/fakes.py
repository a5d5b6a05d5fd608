"""Scored experiments without training: a real config, folds and score stage over made-up fold predictions.

The results readers (plots, report, leaderboard, ablate's table) need only the run folder's files, so their
tests take a second instead of a training run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foldvision.config import load_config
from foldvision.stages.folds import run as make_folds
from foldvision.run import Predictions, Run
from foldvision.stages.score import run as score_run

from conftest import write_config


def scored_run(tmp_path: Path, name: str, corpus: Path, skill: float = 2.0, seed: int = 0, epochs: int = 2,
               **sections) -> Path:
    """runs/<name> with config, folds, fold<k>/oof.csv + history.csv and scores.json; `skill` sets how far
    the made-up probabilities lean to the true class."""
    cfg = load_config(str(write_config(tmp_path / "configs", name, corpus, **sections)))
    run = Run(tmp_path / "runs" / name)
    run.save_config(cfg)
    make_folds(run.root)
    split = run.read_split()
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(split.ids), len(split.classes))) + skill * np.eye(len(split.classes))[split.y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    oof = Predictions(split.ids, split.classes, probs, split.fold, split.labels)
    for fold in split.folds:
        run.write_fold_oof(fold, oof.take(split.fold == fold))
        epoch = np.arange(1, epochs + 1)
        run.write_history(fold, [
            {"epoch": int(e), "train_loss": 1 / e, "train_log_loss": 0.9 / e, "train_auc": 0.7 + 0.1 * e / epochs,
             "train_accuracy": 0.6 + 0.1 * e / epochs, "lr": 1e-3 / e, "train_img_s": 100.0, "val_loss": 1.1 / e,
             "val_auc": 0.65 + 0.1 * e / epochs, "val_accuracy": 0.6 + 0.05 * e, "seconds": 1.5 + fold}
            for e in epoch])
    score_run(run.root)
    return run.root
