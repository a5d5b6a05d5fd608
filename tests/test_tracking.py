"""W&B runs written offline and read back with wandb's own reader (`wandb leet inspect`, the Go core's parser
of the .wandb transaction log): what they hold equals the run's history.csv and scores.json.

One tiny binary corpus, 2 folds, 1 epoch; nothing here reaches the network (WANDB_MODE=offline, conftest).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldvision.config import load_config
from foldvision.run import save_run_config
from foldvision.errors import UserError
from foldvision.stages.folds import run as make_folds
from foldvision.stages.predict import main as predict_main
from foldvision.stages.score import run as score_run
from foldvision.results.tracking import NoTracker, create_tracker, wandb_mode
from foldvision.stages.train import fit_fold

from conftest import make_corpus, write_config


def inspect(run_path: Path, *flags: str) -> str:
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run_path)],
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout


def read_offline_run(run_path: Path) -> dict:
    """An offline run as wandb reads it: the run record, history rows, summary, and any logged artifacts."""
    records = [json.loads(line) for line in inspect(run_path).splitlines() if line.startswith("{")]
    summary = json.loads(inspect(run_path, "--summary"))["summary"]
    return {
        "run": next(r["run"] for r in records if r["type"] == "run"),
        "history": [r["history"]["item"] for r in records if r["type"] == "history"],
        "summary": summary,
        "artifacts": [r["artifact"] for r in records if r["type"] == "artifact"],
        "files": run_path / "files",
    }


def logged_table(run: dict, key: str) -> pd.DataFrame:
    """A wandb.Table the run logged under `key`, from the file its summary points to."""
    ref = run["summary"][key]
    assert ref["_type"] == "table-file"
    table = json.loads((run["files"] / ref["path"]).read_text())
    return pd.DataFrame(table["data"], columns=table["columns"])


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wandb")
    corpus = make_corpus(tmp / "bin", {"0": 12, "1": 8})
    path = write_config(tmp / "configs", "tracked", corpus, tracking="wandb", log_submission=True,
                        predict={"tta": []})
    cfg = load_config(str(path))
    run_dir = tmp / "runs" / "tracked"
    save_run_config(cfg, run_dir)
    make_folds(run_dir)
    for fold in (0, 1):
        fit_fold(cfg, run_dir, fold)
    scores = score_run(run_dir)
    for fold in (0, 1):  # what make does: each fold's test probabilities, then their ensemble
        predict_main([str(run_dir), "--fold", str(fold)])
    predict_main([str(run_dir), "--out", str(tmp / "subs" / "tracked.csv")])
    runs = {}
    for run_path in sorted((run_dir / "wandb").glob("offline-run-*")):
        run = read_offline_run(run_path)
        runs[run["run"]["display_name"]] = run
    return run_dir, scores, runs


def test_offline_by_default_and_never_online_in_tests():
    assert os.environ["WANDB_MODE"] == "offline" and wandb_mode() == "offline"
    assert isinstance(create_tracker("none", Path("."), "x", "train", {}), NoTracker)


def test_an_empty_wandb_mode_means_unset_and_an_unknown_one_is_named(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "")
    assert wandb_mode() == "offline" and "WANDB_MODE" not in os.environ  # wandb itself fails on ''
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(UserError, match="WANDB_MODE='ofline' is not a W&B mode"):
        wandb_mode()


def test_one_run_per_fold_then_oof_then_predict(tracked_run):
    run_dir, _, runs = tracked_run
    assert sorted(runs) == ["tracked-fold0", "tracked-fold1", "tracked-oof", "tracked-predict"]
    assert {r["run"]["run_group"] for r in runs.values()} == {"tracked"}
    assert [runs[n]["run"]["job_type"] for n in sorted(runs)] == ["train", "train", "oof", "predict"]
    config = runs["tracked-fold0"]["run"]["config"]["update"]  # the resolved config, every section
    assert config["train"]["epochs"] == 1 and config["model"]["name"] == "test_convnext"
    assert config["data"]["dir"] == str(run_dir.parents[1] / "bin")


def test_fold_history_and_best_score_equal_the_run_files(tracked_run):
    run_dir, scores, runs = tracked_run
    for fold in (0, 1):
        run = runs[f"tracked-fold{fold}"]
        history = pd.read_csv(run_dir / f"fold{fold}" / "history.csv")
        assert len(run["history"]) == len(history) == 1
        logged = run["history"][0]
        for key in ("train_loss", "val_loss", "val_auc", "lr", "train_accuracy"):
            assert logged[key] == pytest.approx(history[key].iloc[0]), key
        assert run["summary"]["best_auc"] == pytest.approx(scores["folds"][fold]["auc"])
        assert run["summary"]["best_epoch"] == 1


def test_oof_run_logs_scores_tables_and_plots(tracked_run):
    _, scores, runs = tracked_run
    oof = runs["tracked-oof"]
    for name, value in scores["oof"].items():
        assert oof["summary"][f"oof_{name}"] == pytest.approx(value), name
    per_class = logged_table(oof, "per_class").set_index("class")
    for name, entry in scores["per_class"].items():
        for stat, value in entry.items():
            assert per_class.at[name, stat] == pytest.approx(value), (name, stat)
    folds = logged_table(oof, "folds")
    assert folds["auc"].to_numpy() == pytest.approx([f["auc"] for f in scores["folds"]])
    # wandb's confusion-matrix plot table: one row per (actual, predicted) cell
    cells = logged_table(oof, "confusion_matrix_table")
    matrix = cells.pivot(index="Actual", columns="Predicted", values="nPredictions")
    classes = scores["classes"]
    assert matrix.loc[classes, classes].to_numpy().tolist() == scores["confusion_matrix"]
    roc = logged_table(oof, "roc_table")
    assert set(roc["class"]) == {classes[1]}  # binary: the positive class's curve
    assert np.all(np.diff(roc["fpr"]) >= 0) and roc["tpr"].iloc[-1] == 1


def test_predict_logs_the_submission_as_an_artifact(tracked_run):
    _, _, runs = tracked_run
    artifacts = runs["tracked-predict"]["artifacts"]
    assert [a["type"] for a in artifacts] == ["submission"]
    assert artifacts[0]["name"] == "tracked-submission"
