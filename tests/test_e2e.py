"""The make chain end to end, as a user runs it: `make folds train predict` on a tiny real corpus.

A few dozen of scikit-learn's handwritten digits, a tiny timm CNN, 1 epoch, 2 folds.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from conftest import ROOT, make_corpus, write_config

pytestmark = pytest.mark.slow


def make(tmp_path: Path, *targets: str, **variables: str) -> subprocess.CompletedProcess:
    args = {"CONFIGS": tmp_path / "configs", "RUNS": tmp_path / "runs", "SUBMISSIONS": tmp_path / "subs",
            "PY": sys.executable, **variables}
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), *targets, *(f"{k}={v}" for k, v in args.items())]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_make_chain_on_digits(tmp_path, digits_corpus):
    write_config(tmp_path / "configs", "tiny", digits_corpus, data={"channels": 1},
                 augment={"train": []}, predict={"tta": []})
    # `make -j2 folds train predict`: the goals recurse into make, so run side by side each of them would build
    # the folds' files in a make of its own (two processes training fold 0 at once). The goals run one after
    # another; the folds inside each fan out.
    result = make(tmp_path, "-j2", "folds", "train", "predict", EXP="tiny")
    commands = [line.split(" -m foldvision ", 1)[1].strip() for line in result.stdout.splitlines()
                if " -m foldvision " in line]
    for fold in (0, 1):
        assert sum(c.startswith("train ") and c.endswith(f"--fold {fold}") for c in commands) == 1, commands
        assert sum(c.startswith("predict ") and c.endswith(f"--fold {fold}") for c in commands) == 1, commands
    assert sum(c.startswith("folds ") for c in commands) == 1, commands
    run = tmp_path / "runs" / "tiny"
    for name in ("config.yaml", "folds.csv", "classes.json", "oof.csv", "scores.json", "test.csv",
                 "fold0/best.pt", "fold0/oof.csv", "fold0/history.csv", "fold1/oof.csv", "fold1/test.csv"):
        assert (run / name).is_file(), name
    assert list((tmp_path / "folds").glob("digits-*/folds_k2_seed42.csv"))  # the corpus split, kept once
    assert not list(digits_corpus.glob("folds*"))  # nothing written inside the corpus

    # scores.json is what scikit-learn computes from oof.csv
    oof = pd.read_csv(run / "oof.csv", dtype={"label": str})
    classes = json.loads((run / "classes.json").read_text())
    scores = json.loads((run / "scores.json").read_text())
    probs = oof[[f"prob_{c}" for c in classes]].to_numpy()
    y = oof["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    assert len(oof) == len(pd.read_csv(digits_corpus / "train.csv"))
    assert scores["task"] == "multiclass" and scores["metric"] == "auc"
    assert scores["oof"]["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert scores["oof"]["accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert [f["fold"] for f in scores["folds"]] == [0, 1]

    # the submission copies the sample: columns, id order, a digit label per row
    sample = pd.read_csv(digits_corpus / "sample_submission.csv")
    sub = pd.read_csv(tmp_path / "subs" / "tiny.csv")
    assert list(sub.columns) == list(sample.columns)
    assert sub["image_id"].tolist() == sample["image_id"].tolist()
    assert set(sub["label"]) <= set(range(10))

    # a second run does nothing; a lost fold is the only one trained again
    again = make(tmp_path, "folds", "train", "predict", EXP="tiny")
    assert "foldvision train" not in again.stdout and "foldvision predict" not in again.stdout
    (run / "fold1" / "oof.csv").unlink()
    redo = make(tmp_path, "train", EXP="tiny")
    assert "--fold 1" in redo.stdout and "--fold 0" not in redo.stdout and "foldvision score" in redo.stdout

    # a predict-only change re-predicts without re-training
    tta = make(tmp_path, "predict", EXP="tiny", ARGS="predict.batch_size=4")
    assert "foldvision predict" in tta.stdout and "foldvision train" not in tta.stdout


def test_make_chain_binary_probability_with_tta_and_groups(tmp_path):
    corpus = make_corpus(tmp_path / "bin", {"0": 10, "1": 8})
    table = pd.read_csv(corpus / "train.csv", dtype=str)
    table["patient"] = [f"p{i // 2}" for i in range(len(table))]  # two images per patient
    table.to_csv(corpus / "train.csv", index=False)
    write_config(tmp_path / "configs", "bin", corpus, data={"group_col": "patient"},
                 predict={"tta": ["hflip", "vflip"]})
    make(tmp_path, "folds", "train", "predict", EXP="bin", FOLDS="")
    folds = pd.read_csv(tmp_path / "runs" / "bin" / "folds.csv", dtype=str)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    sub = pd.read_csv(tmp_path / "subs" / "bin.csv", dtype={"image_id": str})
    sample = pd.read_csv(corpus / "sample_submission.csv", dtype={"image_id": str})
    assert list(sub.columns) == ["image_id", "target"] and sub["image_id"].tolist() == sample["image_id"].tolist()
    assert ((sub["target"] >= 0) & (sub["target"] <= 1)).all() and sub["target"].nunique() > 1
    test = pd.read_csv(tmp_path / "runs" / "bin" / "test.csv", dtype={"id": str})
    folds_mean = np.mean([pd.read_csv(tmp_path / "runs" / "bin" / f"fold{k}" / "test.csv")["prob_1"] for k in (0, 1)],
                         axis=0)
    assert test["prob_1"].to_numpy() == pytest.approx(folds_mean)  # the fold ensemble is a plain mean
    assert sub["target"].to_numpy() == pytest.approx(test.set_index("id").loc[sub["image_id"], "prob_1"].to_numpy())


@pytest.mark.parametrize("kind,task,metric", [
    ("tags", "multilabel", "map"),
    ("count", "ordinal", "qwk"),
])
def test_make_chain_on_each_demo_target_kind(tmp_path, kind, task, metric):
    """`make folds train predict` and `foldvision evaluate` on a tiny cut of each demo kind's corpus: the split,
    OOF table, scores and submission in the task's shape, as a user runs it (the corpus as demo-data builds it,
    the task read as `auto` reads it for tags, named for the count's integers). The count as a regression target
    trains the same head and loss as its grades; its stages are run in test_targets_learn (the values in the
    user's units) and its decision and writer in test_targets_results, so CI's time goes to the two corpora."""
    corpus = tmp_path / kind
    subprocess.run([sys.executable, "-m", "foldvision", "demo-data", str(corpus), "--kind", kind, "--limit", "48"],
                   check=True, capture_output=True)
    write_config(tmp_path / "configs", "tiny", corpus, data={"channels": 1, "task": "auto" if kind == "tags" else task},
                 augment={"train": []}, predict={"tta": []})
    result = make(tmp_path, "folds", "train", "predict", EXP="tiny")
    if kind == "tags":
        assert "column 'tags' holds 10 tags (space-separated), up to 3 per image: multi-label" in result.stdout + result.stderr
    run = tmp_path / "runs" / "tiny"
    scores = json.loads((run / "scores.json").read_text())
    assert scores["kind"] == task and scores["metric"] == metric and np.isfinite(scores["oof"][metric])
    decision = scores["decision"]  # fitted on all OOF rows, scored nested beside the plain decision
    assert decision["oof_nested"] is not None and isinstance(decision["used"], bool)
    oof = pd.read_csv(run / "oof.csv", dtype={"label": str}, keep_default_na=False)
    train = pd.read_csv(corpus / "train.csv", dtype=str, keep_default_na=False)
    assert sorted(oof["id"]) == sorted(train.iloc[:, 0])  # every training image once, validated once
    value_columns = [c for c in oof.columns if c.startswith(("prob_", "pred"))]
    assert value_columns == ([f"prob_{t}" for t in json.loads((run / "classes.json").read_text())["names"]]
                             if task == "multilabel" else ["pred"])

    sample = pd.read_csv(corpus / "sample_submission.csv", dtype=str, keep_default_na=False)
    sub = pd.read_csv(tmp_path / "subs" / "tiny.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == list(sample.columns) and sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    values = sub.iloc[:, 1]
    if task == "multilabel":
        names = set(json.loads((run / "classes.json").read_text())["names"])
        assert all(set(v.split()) <= names for v in values)  # space-joined tags, as the sample writes them
    elif task == "ordinal":
        assert set(values) <= {"0", "1", "2", "3", "4"}  # one integer grade
    else:
        assert all(float(v) == float(v) for v in values) and values.nunique() > 5  # one number, not a class

    evaluate = subprocess.run([sys.executable, "-m", "foldvision", "evaluate", str(tmp_path / "subs" / "tiny.csv"),
                               str(corpus / "test_labels.csv"), "--task", task],
                              capture_output=True, text=True)
    assert evaluate.returncode == 0, evaluate.stderr
    expected = {"multilabel": "samples_f1", "ordinal": "qwk", "regression": "rmse"}[task]
    assert f"all: n {len(sample)}  {expected} " in evaluate.stdout
