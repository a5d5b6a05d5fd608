"""Scored experiments without training: a real config, folds and score stage over made-up fold predictions.

The results readers (plots, report, leaderboard, ablate's table) need only the run folder's files, so their
tests take a second instead of a training run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from foldvision.config import load_config
from foldvision.run import save_run_config
from foldvision.folds import run as make_folds
from foldvision.score import run as score_run
from foldvision.tables import oof_frame, read_split

from conftest import write_config


def scored_run(tmp_path: Path, name: str, corpus: Path, skill: float = 2.0, seed: int = 0, epochs: int = 2,
               **sections) -> Path:
    """runs/<name> with config, folds, fold<k>/oof.csv + history.csv and scores.json; `skill` sets how far
    the made-up probabilities lean to the true class."""
    cfg = load_config(str(write_config(tmp_path / "configs", name, corpus, **sections)))
    run_dir = tmp_path / "runs" / name
    save_run_config(cfg, run_dir)
    make_folds(run_dir)
    table, classes = read_split(run_dir)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(table), len(classes))) + skill * np.eye(len(classes))[table["target"]]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for fold in sorted(set(table["fold"])):
        rows = (table["fold"] == fold).to_numpy()
        fold_dir = run_dir / f"fold{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        part = table[rows]
        oof_frame(part["id"].tolist(), fold, part["label"].tolist(), probs[rows], classes).to_csv(
            fold_dir / "oof.csv", index=False)
        epoch = np.arange(1, epochs + 1)
        pd.DataFrame({"epoch": epoch, "train_loss": 1 / epoch, "train_log_loss": 0.9 / epoch,
                      "train_auc": 0.7 + 0.1 * epoch / epochs, "train_accuracy": 0.6 + 0.1 * epoch / epochs,
                      "lr": 1e-3 / epoch, "train_img_s": 100.0, "val_loss": 1.1 / epoch,
                      "val_auc": 0.65 + 0.1 * epoch / epochs, "val_accuracy": 0.6 + 0.05 * epoch,
                      "seconds": 1.5 + fold}).to_csv(fold_dir / "history.csv", index=False)
    score_run(run_dir)
    return run_dir
