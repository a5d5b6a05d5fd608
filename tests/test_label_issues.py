"""`foldvision label-issues` ranks training rows by how little their OOF prediction backs the given label
(cleanlab); `data.exclude` drops or relabels training rows only, leaving the split and the validation rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import Project, make_corpus, stage
from foldvision.errors import UserError
from foldvision.run import Predictions, Run
from foldvision.splits import read_exclude

CLASSES = ["a", "b", "c"]


def constructed_run(root, mislabelled: str = "r07") -> Run:
    """A scored run whose OOF table we write: confident and right everywhere, except `mislabelled` (labelled b,
    predicted a at 0.92) and r13 (unsure: 0.5 on its label)."""
    rng = np.random.default_rng(0)
    ids = [f"r{i:02d}" for i in range(30)]
    labels = [CLASSES[i % 3] for i in range(30)]
    probs = np.full((30, 3), 0.1) + rng.uniform(0, 0.02, (30, 3))
    for i, label in enumerate(labels):
        probs[i, CLASSES.index(label)] = 0.8
    row = ids.index(mislabelled)
    labels[row] = "b"
    probs[row] = [0.92, 0.04, 0.04]
    probs[13] = 0.25
    probs[13, CLASSES.index(labels[13])] = 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    run = Run(root / "runs" / "constructed")
    run.root.mkdir(parents=True)
    run.classes_json.write_text(json.dumps(CLASSES), encoding="utf-8")
    run.write_oof(Predictions(ids, CLASSES, probs, np.arange(30) % 2, labels))
    return run


def test_a_mislabelled_row_ranks_first_and_is_flagged(tmp_path, capsys):
    run = constructed_run(tmp_path)
    code, out = stage(capsys, "label-issues", str(run.root), "--top", "3", stdout=True)
    assert code == 0, out
    table = pd.read_csv(run.label_issues_csv, dtype={"id": str})
    assert list(table.columns) == ["id", "given_label", "predicted_label", "self_confidence", "quality", "rank",
                                   "flagged"]
    first = table.iloc[0]
    assert (first["id"], first["given_label"], first["predicted_label"], first["rank"]) == ("r07", "b", "a", 1)
    assert first["flagged"] and first["self_confidence"] == pytest.approx(0.04, abs=0.01)
    assert table.iloc[1]["id"] == "r13"  # the unsure row next
    assert table["flagged"].sum() == 1  # confident learning flags only the contradicted label
    assert sorted(table["rank"]) == list(range(1, 31))
    assert "1 of 30 training images flagged" in out and "r07" in out


def test_label_issues_without_a_scored_run_is_a_one_line_error(tmp_path, capsys):
    code, err = stage(capsys, "label-issues", str(tmp_path / "runs" / "nothing"))
    assert code == 2 and "oof.csv not found: score the run first" in err and err.count("\n") == 1


def test_label_issues_of_a_multilabel_run_is_a_one_line_refusal(tmp_path, capsys):
    from foldvision.targets import Task

    run = Run(tmp_path / "runs" / "tags")
    run.root.mkdir(parents=True)
    run.classes_json.write_text(json.dumps(Task("multilabel", ("sea", "sun")).to_json()), encoding="utf-8")
    run.write_oof(Predictions(["a", "b"], ["sea", "sun"], np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]),
                              ["sea", "sun"], "multilabel"))
    code, err = stage(capsys, "label-issues", str(run.root))
    assert code == 2 and err.count("\n") == 1 and "a multilabel run; label-issues ranks single-label" in err
    assert not run.label_issues_csv.exists()


def fake_fold_oofs(run: Run) -> None:
    """Each fold's OOF table, as the train stage would write it (uniform probabilities)."""
    split = run.read_split()
    for k in split.folds:
        rows = np.flatnonzero(split.fold == k)
        probs = np.full((len(rows), len(split.classes)), 1 / len(split.classes))
        run.write_fold_oof(k, Predictions([split.ids[i] for i in rows], split.classes, probs, split.fold[rows],
                                          [split.labels[i] for i in rows]))


def test_exclude_drops_and_relabels_training_rows_only_and_leaves_the_split(tmp_path, capsys):
    p = Project(tmp_path, make_corpus(tmp_path / "c", {"0": 6, "1": 6}, n_test=2))
    code, err = p.folds(capsys)
    assert code == 0, err
    folds_csv, folds_stamp = (p.run / "folds.csv").read_bytes(), (p.run / "stage-folds.yaml").read_bytes()
    train_stamp = (p.run / "stage-train.yaml").read_text()
    split = Run(p.run).read_split()
    fold0 = [i for i, k in zip(split.ids, split.fold) if k == 0]
    fold1 = [i for i, k in zip(split.ids, split.fold) if k == 1]
    label = dict(zip(split.ids, split.labels))
    exclude = tmp_path / "exclude.csv"
    relabel = fold1[1]
    new = "1" if label[relabel] == "0" else "0"
    pd.DataFrame({"id": [fold1[0], relabel, fold0[0], fold1[2]], "new_label": ["", new, "", ""],
                  "flagged": ["true", "true", "true", "false"]}).to_csv(exclude, index=False)
    code, err = p.folds(capsys, f"data.exclude={exclude}")
    assert code == 0, err
    assert (p.run / "folds.csv").read_bytes() == folds_csv  # the split stays the corpus's
    assert (p.run / "stage-folds.yaml").read_bytes() == folds_stamp  # ...and is not even remade
    stamp = yaml.safe_load((p.run / "stage-train.yaml").read_text())
    assert "exclude" not in yaml.safe_load(train_stamp)["inputs"] and len(stamp["inputs"]["exclude"]) == 16
    exclude.write_text(exclude.read_text() + f"{fold0[1]},,true\n")  # another row: the train stage is stale
    code, err = p.config(capsys, f"data.exclude={exclude}")
    assert yaml.safe_load((p.run / "stage-train.yaml").read_text())["inputs"]["exclude"] != stamp["inputs"]["exclude"]
    exclude.write_text(exclude.read_text().rsplit(fold0[1], 1)[0].rstrip("\n") + "\n")

    from foldvision.learn.fold import build_fold

    cfg = Run(p.run).load_config()
    parts = build_fold(cfg, split, 0, Run(p.run).fold(0), seed=0)
    train = dict(zip(parts.train_loader.dataset.paths, parts.train_loader.dataset.targets.tolist()))
    path = dict(zip(split.ids, split.paths))
    assert set(train) == {path[i] for i in fold1} - {path[fold1[0]]}  # fold 1 trains fold 0, less the dropped row
    assert train[path[relabel]] == split.classes.index(new)  # relabelled for training
    assert parts.val_ids == fold0  # every fold-0 row validated, the excluded one too

    fake_fold_oofs(Run(p.run))
    code, err = stage(capsys, "score", str(p.run))
    assert code == 0, err
    scores = json.loads((p.run / "scores.json").read_text())
    assert scores["excluded"] == {"file": str(exclude), "dropped": 2, "relabelled": 1}
    assert scores["n"] == 12  # every row is still scored


@pytest.mark.parametrize("body, message", [
    (None, "data.exclude={path}: no such file"),
    ("name,label\nx,0\n", "{path}: no 'id' column (columns: name, label)"),
    ("id\n0_000\nnope\n", "{path} row 3: id 'nope' is not a training image of this corpus"),
    ("id,new_label\n0_000,2\n", "{path} row 2: new_label '2' is not a class (0, 1)"),
    ("id,flagged\n0_000,maybe\n", "{path} row 2: flagged 'maybe' is not true or false"),
    ("id\n0_000\n1_001\n0_000\n", "{path} row 4: id '0_000' is already on row 2"),
])
def test_a_missing_or_ill_formed_exclude_file_is_a_one_line_error_naming_file_and_row(tmp_path, body, message):
    path = tmp_path / "exclude.csv"
    if body is not None:
        path.write_text(body, encoding="utf-8")
    ids = ["0_000", "0_001", "1_000", "1_001"]
    with pytest.raises(UserError) as e:
        read_exclude(str(path), ids, np.array([0, 0, 1, 1]), ["0", "1"])
    assert message.format(path=path) in str(e.value) and "\n" not in str(e.value)


def test_the_train_stage_refuses_a_bad_exclude_file_before_any_work(tmp_path, capsys):
    p = Project(tmp_path, make_corpus(tmp_path / "c", {"0": 4, "1": 4}, n_test=2))
    code, err = p.folds(capsys, f"data.exclude={tmp_path / 'missing.csv'}")
    assert code == 0, err
    code, err = stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 2 and f"error: data.exclude={tmp_path / 'missing.csv'}: no such file" in err
    assert not (p.run / "fold0" / "oof.csv").exists()
