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
from foldvision.targets import Task

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


def written_run(root, name: str, task, labels: list[str], probs: np.ndarray, decision: dict | None = None) -> Run:
    """runs/<name> holding only classes.json and oof.csv (ids r00.., two folds), and scores.json's decision
    when given: what label-issues reads."""
    run = Run(root / "runs" / name)
    run.root.mkdir(parents=True)
    run.classes_json.write_text(json.dumps(task.to_json()), encoding="utf-8")
    n = len(labels)
    run.write_oof(Predictions([f"r{i:02d}" for i in range(n)], list(task.names), probs, np.arange(n) % 2, labels,
                              task.kind))
    if decision is not None:
        run.write_scores({"decision": decision})
    return run


TAGS = ("sea", "sun", "sky", "all")


def flipped_tags_run(root) -> tuple[Run, list[str]]:
    """40 rows whose OOF backs each given tag state (P 0.6-0.95 on, 0.05-0.4 off), a tag 'all' on every row,
    and two corrupted rows: r05 given 'sea' that the OOF puts at 0.02, r17 not given 'sky' that it puts at 0.97."""
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(40, 4)) < 0.4).astype(int)
    y[:, 3] = 1
    probs = np.where(y == 1, rng.uniform(0.6, 0.95, y.shape), rng.uniform(0.05, 0.4, y.shape))
    y[5, 0], probs[5, 0] = 1, 0.02
    y[17, 2], probs[17, 2] = 0, 0.97
    task = Task("multilabel", TAGS)
    labels = [task.join(t for t, on in zip(TAGS, row) if on) for row in y]
    return written_run(root, "tags", task, labels, probs), labels


def test_flipped_tags_rank_first_and_are_the_only_flagged_rows(tmp_path, capsys):
    run, labels = flipped_tags_run(tmp_path)
    code, out = stage(capsys, "label-issues", str(run.root), "--top", "3", stdout=True)
    assert code == 0, out
    table = pd.read_csv(run.label_issues_csv, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["id", "given_label", "predicted_label", "self_confidence", "suspect_tag",
                                   "quality", "rank", "flagged"]
    assert set(table["id"][:2]) == {"r05", "r17"} and set(table["id"][table["flagged"] == "true"]) == {"r05", "r17"}
    row = table.set_index("id")
    assert row.loc["r05", "suspect_tag"] == "sea" and float(row.loc["r05", "self_confidence"]) == pytest.approx(0.02)
    assert row.loc["r17", "suspect_tag"] == "sky" and float(row.loc["r17", "self_confidence"]) == pytest.approx(0.03)
    assert row.loc["r05", "given_label"] == labels[5] and "sea" in labels[5].split("|")  # as folds.csv writes it
    assert "sea" not in row.loc["r05", "predicted_label"].split("|")  # tags at 0.5: the run records no rule
    assert "sky" in row.loc["r17", "predicted_label"].split("|")
    assert "2 of 40 training images flagged by confident learning (per tag)" in out, out


def corrupted_values_run(root, kind: str) -> Run:
    """60 rows whose OOF value is near the truth, but for two corrupted given labels: r07 far above (+60 on a
    0-100 target; grade 4 for an image of grade 0) and r33 far below (-45; grade 0 for 4). An ordinal run
    records cut-points fitted below the rounding (0.2, 1.2, 2.2, 3.2): its predicted grade follows them."""
    rng = np.random.default_rng(1)
    if kind == "regression":
        truth = rng.uniform(0, 100, 60)
        given, pred = truth.copy(), truth + rng.normal(0, 5, 60)
        given[7], given[33] = truth[7] + 60, truth[33] - 45
        return written_run(root, kind, Task(kind, ("score",)), [f"{v:.3f}" for v in given], pred[:, None])
    truth = rng.integers(0, 5, 60)
    truth[7], truth[33] = 0, 4
    pred = np.clip(truth + rng.normal(0, 0.25, 60), 0, 4)
    given = truth.copy()
    given[7], given[33] = 4, 0
    rule = {"metric": "qwk", "kind": "cuts", "value": 0.0, "prior": [], "oof_before": 0.9, "oof_after": 0.95,
            "oof_nested": 0.94, "values": [0.2, 1.2, 2.2, 3.2], "used": True}
    return written_run(root, kind, Task(kind, tuple("01234")), [str(g) for g in given], pred[:, None], rule)


@pytest.mark.parametrize("kind", ["regression", "ordinal"])
def test_corrupted_values_rank_first_and_are_the_only_flagged_rows(tmp_path, capsys, kind):
    run = corrupted_values_run(tmp_path, kind)
    code, out = stage(capsys, "label-issues", str(run.root), stdout=True)
    assert code == 0, out
    table = pd.read_csv(run.label_issues_csv, dtype={"id": str, "given_label": str, "predicted_label": str})
    assert list(table.columns) == ["id", "given_label", "predicted_label", "residual", "quality", "rank", "flagged"]
    assert set(table["id"][:2]) == {"r07", "r33"} and set(table["id"][table["flagged"]]) == {"r07", "r33"}
    oof = run.read_oof()
    row = table.set_index("id")
    assert row.loc["r07", "residual"] == pytest.approx(oof.y[7] - oof.probs[7, 0]) and row.loc["r07", "residual"] > 0
    assert row.loc["r33", "residual"] < 0
    assert "2 of 60 training images flagged with a residual more than 3.5 robust SDs" in out
    if kind == "regression":
        assert float(row.loc["r07", "predicted_label"]) == pytest.approx(oof.probs[7, 0], rel=1e-5)
    else:  # the run's cut-points, not the rounding: an expected grade of 0.2 or more is grade 1
        from foldvision.results.decision import grades_of

        assert table.set_index("id").loc[oof.ids, "predicted_label"].astype(int).tolist() == \
            grades_of(oof.probs, [0.2, 1.2, 2.2, 3.2]).tolist() != grades_of(oof.probs, [0.5, 1.5, 2.5, 3.5]).tolist()
        assert "grades) from the median residual" in out
    code, out = stage(capsys, "label-issues", str(run.root), "--cut", "100", stdout=True)
    assert code == 0 and "0 of 60 training images flagged" in out  # --cut decides what is an outlier


@pytest.mark.parametrize("kind, args, message", [
    ("multilabel", ["--method", "outre"], "--method outre does not rank a multilabel run's labels; use one of "
                                          "self_confidence, normalized_margin, confidence_weighted_entropy"),
    ("regression", ["--method", "normalized_margin"], "use one of residual, outre"),
    ("regression", ["--cut", "0"], "--cut 0.0: give a number of robust standard deviations above 0"),
])
def test_a_method_of_another_kind_or_a_bad_cut_is_a_one_line_error(tmp_path, capsys, kind, args, message):
    run = flipped_tags_run(tmp_path)[0] if kind == "multilabel" else corrupted_values_run(tmp_path, kind)
    code, err = stage(capsys, "label-issues", str(run.root), *args)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not run.label_issues_csv.exists()


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_on_a_scored_run_the_tags_are_the_runs_decision_and_the_report_draws_them(tmp_path, capsys, kind):
    """The score stage's run of each kind (test_targets_results): predicted tags by the rule scores.json records
    (per-tag thresholds that beat 0.5 nested), and the report's thumbnails read the CSV's columns."""
    from test_targets_results import scored

    from foldvision.results.decision import DecisionRule
    from foldvision.results.figures import label_issue_images

    root, scores, _ = scored(tmp_path, kind)
    code, out = stage(capsys, "label-issues", str(root), stdout=True)
    assert code == 0, out
    run, oof = Run(root), Run(root).read_oof()
    table = pd.read_csv(run.label_issues_csv, dtype=str, keep_default_na=False).set_index("id").loc[oof.ids]
    if kind == "multilabel":
        rule = DecisionRule(**scores["decision"])
        assert rule.used and (rule.fitted(oof.probs) != rule.plain(oof.probs)).any()  # the rule changes some tags
        assert table["predicted_label"].tolist() == ["|".join(t for t, on in zip(oof.classes, row) if on)
                                                     for row in rule.fitted(oof.probs)]
    figure = label_issue_images(run, oof, lambda ids: [None] * len(ids))
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    top = pd.read_csv(run.label_issues_csv, dtype=str, keep_default_na=False).head(12)
    measure = top["self_confidence" if kind == "multilabel" else "residual"].astype(float)
    assert titles == [f"true {given or 'no tag'} · pred {pred or 'no tag'} ({m:.2f})\n{i}"
                      for i, given, pred, m in zip(top["id"], top["given_label"], top["predicted_label"], measure)]
    assert kind != "multilabel" or any("no tag" in title for title in titles)  # an empty tag set is named


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
        read_exclude(str(path), ids, np.array([0, 0, 1, 1]), Task("single", ("0", "1")))
    assert message.format(path=path) in str(e.value) and "\n" not in str(e.value)


KIND_TASKS = {"multilabel": Task("multilabel", ("sea", "sun", "partly cloudy")),
              "regression": Task("regression", ("score",)),
              "ordinal": Task("ordinal", ("0", "1", "2", "3"))}
KIND_LABELS = {"multilabel": ["sea", "sun", "", "sea|partly cloudy"], "regression": ["1.5", "2", "3", "4"],
               "ordinal": ["0", "1", "2", "3"]}


def exclude_of_kind(tmp_path, kind: str, new_labels: list[str]):
    """read_exclude of a file naming rows a..d with `new_labels`, against a split of `kind`: (exclusion, y)."""
    path = tmp_path / "exclude.csv"
    pd.DataFrame({"id": list("abcd")[:len(new_labels)], "new_label": new_labels}).to_csv(path, index=False)
    task = KIND_TASKS[kind]
    y = task.encode(KIND_LABELS[kind])
    return read_exclude(str(path), list("abcd"), y, task), y


@pytest.mark.parametrize("kind, new_labels, expected", [
    # '|' as label_issues.csv writes tags, in any order; a table's own delimiter; a tag holding a space stays whole
    ("multilabel", ["sun|sea", "partly cloudy", "sea sun", ""], [[1, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]]),
    ("multilabel", ["sun;partly cloudy"], [[0, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 1]]),
    ("regression", ["12.5", "-3", "1e2", ""], [12.5, -3.0, 100.0, 4.0]),
    ("ordinal", ["3", "2.0", "2", ""], [3, 2, 2, 3]),
])
def test_new_label_relabels_the_training_target_of_each_kind(tmp_path, kind, new_labels, expected):
    exclusion, y = exclude_of_kind(tmp_path, kind, new_labels)
    assert exclusion.y_train.tolist() == expected and exclusion.y_train.dtype == y.dtype
    named = new_labels + [None] * (4 - len(new_labels))  # rows the file does not name are left alone
    assert exclusion.dropped.tolist() == [label == "" for label in named]  # an empty new_label drops the row
    assert exclusion.relabelled == sum(bool(label) for label in named)
    assert y.tolist() == KIND_TASKS[kind].encode(KIND_LABELS[kind]).tolist()  # the split's targets are kept
    # a row of tags counts once, however many of its tags changed
    assert exclusion.changed(y).tolist() == [got != was for got, was in zip(expected, y.tolist())]


@pytest.mark.parametrize("kind, new_label, message", [
    ("multilabel", "sea|moon", "{path} row 2: new_label 'sea|moon' holds 'moon', not a tag of this run (tags: sea, "
                               "sun, partly cloudy); join tags with '|'"),
    ("multilabel", "sea sunn", "{path} row 2: new_label 'sea sunn' holds 'sunn', not a tag of this run "
                               "(did you mean sun?)"),
    ("regression", "high", "{path} row 2: new_label 'high' is not a number (the regression target 'score')"),
    ("regression", "nan", "{path} row 2: new_label 'nan' is not a number"),
    ("ordinal", "4", "{path} row 2: new_label '4' is not a grade of this run (a whole number 0..3)"),
    ("ordinal", "1.5", "{path} row 2: new_label '1.5' is not a grade of this run"),
    ("ordinal", "-1", "{path} row 2: new_label '-1' is not a grade of this run"),
])
def test_a_bad_new_label_of_each_kind_is_a_one_line_error_naming_file_and_row(tmp_path, kind, new_label, message):
    with pytest.raises(UserError) as e:
        exclude_of_kind(tmp_path, kind, [new_label])
    assert message.format(path=tmp_path / "exclude.csv") in str(e.value) and "\n" not in str(e.value)


def test_the_train_stage_refuses_a_bad_exclude_file_before_any_work(tmp_path, capsys):
    p = Project(tmp_path, make_corpus(tmp_path / "c", {"0": 4, "1": 4}, n_test=2))
    code, err = p.folds(capsys, f"data.exclude={tmp_path / 'missing.csv'}")
    assert code == 0, err
    code, err = stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 2 and f"error: data.exclude={tmp_path / 'missing.csv'}: no such file" in err
    assert not (p.run / "fold0" / "oof.csv").exists()
