"""foldvision.learn.teacher: pseudo-labels and distillation, leak-free.

The teachers here are MARKED: teacher fold j's model ignores its input and answers P(b) = TRAIN_MARK[j] for every
image (a zeroed classifier whose bias holds the mark), and its fold<j>/test.csv answers P(b) = TEST_MARK[j] + a
per-image offset. Whatever a fold-k student is fed from fold j ≠ k shows as another fold's mark.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from foldvision.config import ModelConfig, check_task, load_config
from foldvision.errors import UserError
from foldvision.learn.fold import build_fold
from foldvision.learn.heads import Head
from foldvision.learn.losses import CrossEntropy, TeacherLoss
from foldvision.learn.teacher import load_teacher, pack, select_pseudo, targets
from foldvision.run import Predictions, Run, Split, save_run_config
from foldvision.stages.folds import run as make_folds

from conftest import ROOT, make_corpus, stage, write_config

FOLDS = 3
TRAIN_MARK = [0.10, 0.35, 0.60]  # teacher fold j's P(b) on any image
TEST_MARK = [0.20, 0.45, 0.70]  # teacher fold j's test.csv P(b), plus 0.01 per test row
CPU = {"device": "cpu", "amp": "off", "sampler": "random", "precise_bn": 0}


def resolve(tmp_path, name, corpus, **sections):
    """configs/<name>.yaml on `corpus`, resolved into runs/<name> with its folds made: (config, Run)."""
    sections = {"cv": {"n_folds": FOLDS}, "predict": {"tta": []}, **sections}
    sections["train"] = {**CPU, **sections.get("train", {})}
    cfg = load_config(str(write_config(tmp_path / "configs", name, corpus, **sections)))
    run = Run(tmp_path / "runs" / name)
    save_run_config(cfg, run.root)
    make_folds(run.root)
    return cfg, run


def marked(head: Head, m: float) -> np.ndarray:
    """What a marked teacher answers for mark m: P(b) = m (single), P(tag i) = m + 0.05·i (tags), the value m."""
    if head.link == "softmax":
        return np.array([1 - m, m])
    return m + 0.05 * np.arange(head.outputs) if head.link == "sigmoid" else np.array([m])


def mark_teacher(run: Run, train_mark=TRAIN_MARK, test_mark=TEST_MARK, test_ids=None) -> None:
    """Each fold j: a best.pt whose model answers `marked(train_mark[j])` for every image, and a test.csv that
    answers `marked(test_mark[j] + 0.01·row)`; any task kind (the identity head of a value: shift 0, scale 1)."""
    from foldvision.learn.engine import build_model_for
    from foldvision.learn.models import timm_source
    from foldvision.learn.optim import classifier_names
    from foldvision.learn.checkpoint import save_checkpoint

    model_cfg = ModelConfig(name="test_convnext", img_size=32)
    split = run.read_split()
    head = Head.fit(split.task, "mse", np.zeros(1))
    head = dataclasses.replace(head, shift=0.0, scale=1.0)
    for j in split.folds:
        setup = build_model_for(model_cfg, head.outputs, 3, device="cpu", amp="off", pretrained=False)
        state = setup.model.state_dict()
        out = marked(head, train_mark[j])
        bias = {"softmax": np.log(out), "sigmoid": np.log(out / (1 - out))}.get(head.link, out)
        for name in classifier_names(setup.model):
            is_weight = name.endswith("weight")
            state[name] = torch.zeros_like(state[name]) if is_weight else torch.tensor(bias, dtype=torch.float32)
        run.fold(j).dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(run.fold(j).best_pt, {
            "model": state, "classes": split.classes, "channels": 3, "model_config": dataclasses.asdict(model_cfg),
            "data_config": setup.preprocessing.to_dict(), "timm": timm_source(setup.model), "head": head.to_dict()})
        val = split.fold == j
        run.write_fold_oof(j, Predictions([i for i, v in zip(split.ids, val) if v], split.classes,
                                          np.full((int(val.sum()), len(out)), 0.5), split.fold[val],
                                          [label for label, v in zip(split.labels, val) if v], split.kind))
        if test_ids is not None:
            p = np.array([marked(head, test_mark[j] + 0.01 * i) for i in range(len(test_ids))])
            run.write_test(Predictions(test_ids, split.classes, p, kind=split.kind), j)


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "c", {"a": 9, "b": 9}, n_test=6)


TEST_IDS = [f"t{i:03d}" for i in range(6)]


@pytest.fixture
def teacher(tmp_path, corpus):
    _, run = resolve(tmp_path, "teacher", corpus)
    mark_teacher(run, test_ids=TEST_IDS)
    return run


def student(tmp_path, corpus, teacher_root, **train):
    train = {"teacher": str(teacher_root), "distill": True, "pseudo_labels": "proportion",
             "pseudo_proportion": 1.0, **train}
    return resolve(tmp_path, "student", corpus, train=train)


def fed(parts) -> np.ndarray:
    """Every target row the fold's train loader yields in one epoch: what the student actually learns from."""
    return torch.cat([t for _, t in parts.train_loader]).numpy()


# ---- (a) the audit: a fold-k student is fed teacher fold k's outputs and nothing else -------------------------
def test_a_fold_k_student_is_fed_teacher_fold_k_alone(tmp_path, corpus, teacher):
    cfg, run = student(tmp_path, corpus, teacher.root, batch_size=4)
    split = run.read_split()
    for k in range(FOLDS):
        parts = build_fold(cfg, split, k, run.fold(k), seed=1)
        rows = fed(parts)
        labelled, pseudo = rows[rows[:, 0] >= 0], rows[rows[:, 0] < 0]
        assert len(labelled) and len(pseudo) and (rows[:, 1] == 1).all()
        # distillation targets: teacher fold k's model on the training images, never fold j's
        np.testing.assert_allclose(labelled[:, 3], TRAIN_MARK[k], atol=1e-5)
        # pseudo-label targets: teacher fold k's test.csv, row by row
        own = {round(TEST_MARK[k] + 0.01 * i, 5) for i in range(len(TEST_IDS))}
        assert {round(float(p), 5) for p in pseudo[:, 3]} <= own
        others = {round(TEST_MARK[j] + 0.01 * i, 5) for j in range(FOLDS) if j != k for i in range(len(TEST_IDS))}
        assert not {round(float(p), 5) for p in pseudo[:, 3]} & others
        # the record the fold writes says the same, image by image
        audit = pl.read_csv(run.fold(k).teacher_csv, schema_overrides={"id": pl.String, "label": pl.String})
        train_ids = [i for i, f in zip(split.ids, split.fold) if f != k]
        assert audit["id"].to_list() == train_ids + TEST_IDS
        assert audit["path"].to_list() == parts.train_loader.dataset.paths
        np.testing.assert_allclose(audit["target_b"][:len(train_ids)], TRAIN_MARK[k], atol=1e-5)
        np.testing.assert_allclose(audit["target_b"][len(train_ids):],
                                   [TEST_MARK[k] + 0.01 * i for i in range(len(TEST_IDS))], atol=1e-5)


def test_targets_temper_or_harden_and_select_by_confidence_or_proportion(tmp_path):
    t = load_config(str(write_config(tmp_path / "configs", "e", tmp_path))).train
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    head = Head("single", ("a", "b"))
    np.testing.assert_allclose(targets(probs, t, head), probs)
    warm = targets(probs, dataclasses.replace(t, teacher_temperature=2.0), head)
    np.testing.assert_allclose(warm[0], np.sqrt([0.9, 0.1]) / np.sqrt([0.9, 0.1]).sum())
    np.testing.assert_array_equal(targets(probs, dataclasses.replace(t, teacher_targets="hard"), head),
                                  [[1, 0], [1, 0], [0, 1], [0, 1]])
    conf = dataclasses.replace(t, pseudo_labels="confidence", pseudo_threshold=0.8)
    np.testing.assert_array_equal(select_pseudo(probs, conf), [True, False, True, False])
    share = dataclasses.replace(t, pseudo_labels="proportion", pseudo_proportion=0.5)
    np.testing.assert_array_equal(select_pseudo(probs, share), [True, False, True, False])


def test_the_teacher_loss_mixes_the_true_label_with_the_teachers_target():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-1.0, 1.0]])
    q = torch.tensor([[0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    y = torch.tensor([0, 1, -1])
    ce = CrossEntropy()
    head = Head("single", ("a", "b"))
    rows = torch.from_numpy(pack(head, np.ones(3), q.numpy(), y.numpy()))
    tau, w = 2.0, 0.3
    kl = (q * (q.log() - torch.log_softmax(logits / tau, dim=1))).sum(dim=1) * tau * tau
    expected = ((1 - w) * (ce(logits[:1], y[:1]) + ce(logits[1:2], y[1:2])) + w * kl.sum()) / 3
    torch.testing.assert_close(TeacherLoss(ce, w, tau)(logits, rows), expected)
    untaught = torch.from_numpy(pack(head, np.zeros(2), np.zeros((2, 2)), np.array([0, 1])))
    torch.testing.assert_close(TeacherLoss(ce, w)(logits[:2], untaught), ce(logits[:2], torch.tensor([0, 1])))
    hard = torch.from_numpy(pack(head, np.ones(1), np.array([[0.0, 1.0]])))
    torch.testing.assert_close(TeacherLoss(ce, 1.0)(logits[2:], hard), ce(logits[2:], torch.tensor([1])))


# ---- (b) pseudo-labelled images train, and are never validated nor in the OOF table --------------------------
def test_pseudo_labelled_images_never_reach_validation_or_the_oof_table(tmp_path, corpus, teacher):
    from foldvision.stages.train import fit_fold

    cfg, run = student(tmp_path, corpus, teacher.root, distill=False)
    split = run.read_split()
    for k in range(FOLDS):
        parts = build_fold(cfg, split, k, run.fold(k), seed=1)
        test_paths = {p for p in parts.train_loader.dataset.paths if p.startswith("test")}
        assert len(test_paths) == len(TEST_IDS)  # they train...
        assert not test_paths & set(parts.val_loader.dataset.paths)  # ...and are never validated
        assert parts.val_ids == [i for i, f in zip(split.ids, split.fold) if f == k]
        fit_fold(cfg, run.root, k)
    oof = run.read_fold_oofs(split)  # every training image once, nothing else
    assert sorted(oof.ids) == sorted(split.ids) and not set(oof.ids) & set(TEST_IDS)
    for k in range(FOLDS):
        ids = run.read_fold_oof(k, split.task).ids
        assert ids == [i for i, f in zip(split.ids, split.fold) if f == k]


# ---- (c) a teacher on another split is one line naming both runs ---------------------------------------------
@pytest.mark.parametrize("change", [{"seed": 7}, {"n_folds": 2}])
def test_a_teacher_on_another_split_is_a_one_line_error(tmp_path, corpus, change):
    _, other = resolve(tmp_path, "other", corpus, cv={"n_folds": FOLDS, **change})
    mark_teacher(other, test_ids=TEST_IDS)  # trained and predicted: only the split tells it apart
    cfg, run = student(tmp_path, corpus, other.root)
    with pytest.raises(UserError) as e:
        build_fold(cfg, run.read_split(), 0, run.fold(0), seed=1)
    message = str(e.value)
    assert "\n" not in message and "another split" in message
    assert str(other.root) in message and str(run.root) in message


def test_a_teacher_fold_still_training_is_refused(tmp_path, corpus, teacher):
    teacher.fold(1).oof_csv.unlink()  # best.pt there, oof.csv not yet: the fold is still training
    cfg, run = student(tmp_path, corpus, teacher.root)
    build_fold(cfg, run.read_split(), 0, run.fold(0), seed=1)  # fold 0 needs teacher fold 0 alone
    with pytest.raises(UserError, match="fold 1 is still training or was cut short.*make train"):
        build_fold(cfg, run.read_split(), 1, run.fold(1), seed=1)


def test_a_student_cannot_teach_itself_and_an_untrained_teacher_says_what_to_do(tmp_path, corpus):
    cfg, run = student(tmp_path, corpus, tmp_path / "runs" / "student")
    with pytest.raises(UserError, match="student's own run folder"):
        build_fold(cfg, run.read_split(), 0, run.fold(0), seed=1)
    cfg, run = student(tmp_path, corpus, tmp_path / "runs" / "nothing")
    with pytest.raises(UserError, match="not a run folder.*make train predict"):
        build_fold(cfg, run.read_split(), 0, run.fold(0), seed=1)


# ---- (d) a blend teaches fold k with its members' fold-k outputs and the weights fitted without fold k --------
def blend_members(tmp_path, corpus, good_on: dict[str, list[int]]):
    """Two marked members whose OOF predictions are right on the folds `good_on` names and wrong elsewhere."""
    runs = []
    for n, (name, folds) in enumerate(good_on.items()):
        _, member = resolve(tmp_path, name, corpus)
        mark_teacher(member, [m + 0.05 * n for m in TRAIN_MARK], [m + 0.05 * n for m in TEST_MARK], TEST_IDS)
        split = member.read_split()
        right = np.isin(split.fold, folds)
        p = np.where(right, np.where(split.y == 1, 0.8, 0.2), np.where(split.y == 1, 0.3, 0.7))
        p = p + 0.01 * np.arange(len(p)) / len(p)  # no ties
        member.write_oof(Predictions(split.ids, split.classes, np.column_stack([1 - p, p]), split.fold, split.labels))
        member.write_scores({"oof": {}})
        member.write_test(Predictions(TEST_IDS, split.classes, np.full((len(TEST_IDS), 2), 0.5)))
        runs.append(member)
    return runs


def test_a_blend_teaches_fold_k_with_weights_fitted_without_fold_k(tmp_path, corpus, monkeypatch):
    from foldvision.commands.ensemble import blend
    from foldvision.results.blending import fit_blend, load_members

    monkeypatch.chdir(tmp_path)
    members = blend_members(tmp_path, corpus, {"m1": [0], "m2": [1, 2]})
    blend(tmp_path / "runs" / "blend", [m.root for m in members], "hill_climb", out=tmp_path / "blend.csv")
    record = Run(tmp_path / "runs" / "blend").read_ensemble()
    group = load_members([m.root for m in members])
    y, folds = group.split.y, group.split.fold
    for k in range(FOLDS):  # ensemble.json's fold-k weights are those fitted on the other folds' rows
        without_k = fit_blend("hill_climb", [m.oof[folds != k] for m in group.members], y[folds != k], "auc")
        assert list(record["fold_weights"][str(k)].values()) == pytest.approx(list(without_k.weights))
    assert record["fold_weights"]["0"] != record["fold_weights"]["1"]  # the folds' weights differ here

    cfg, run = student(tmp_path, corpus, tmp_path / "runs" / "blend", batch_size=4)
    split = run.read_split()
    for k in range(FOLDS):
        w = np.array(list(record["fold_weights"][str(k)].values()))
        rows = fed(build_fold(cfg, split, k, run.fold(k), seed=1))
        taught_b = w[0] * TRAIN_MARK[k] + w[1] * (TRAIN_MARK[k] + 0.05)
        np.testing.assert_allclose(rows[rows[:, 0] >= 0, 3], taught_b, atol=1e-5)
        expected = {round(w[0] * (TEST_MARK[k] + 0.01 * i) + w[1] * (TEST_MARK[k] + 0.05 + 0.01 * i), 5)
                    for i in range(len(TEST_IDS))}
        assert {round(float(p), 5) for p in rows[rows[:, 0] < 0, 3]} <= expected


def test_fold_k_weights_ignore_fold_k_rows(tmp_path, corpus, monkeypatch):
    """Re-blend after making fold 0's OOF rows favour the other member: fold 0's weights stay as they were."""
    from foldvision.commands.ensemble import blend

    monkeypatch.chdir(tmp_path)
    weights = []
    for name, good_on in (("b1", {"m1": [0], "m2": [1, 2]}), ("b2", {"m1": [], "m2": [0, 1, 2]})):
        members = blend_members(tmp_path / name, corpus, good_on)
        blend(tmp_path / name / "runs" / "blend", [m.root for m in members], "hill_climb", out=tmp_path / f"{name}.csv")
        weights.append(Run(tmp_path / name / "runs" / "blend").read_ensemble()["fold_weights"])
    assert weights[0]["0"] == weights[1]["0"]
    assert weights[0]["1"] != weights[1]["1"] or weights[0]["2"] != weights[1]["2"]


def test_a_stack_blend_cannot_teach(tmp_path, corpus, monkeypatch):
    from foldvision.commands.ensemble import blend

    monkeypatch.chdir(tmp_path)
    members = blend_members(tmp_path, corpus, {"m1": [0], "m2": [1, 2]})
    blend(tmp_path / "runs" / "blend", [m.root for m in members], "stack", out=tmp_path / "blend.csv")
    cfg, run = student(tmp_path, corpus, tmp_path / "runs" / "blend")
    with pytest.raises(UserError, match="stack blend keeps no stacker"):
        build_fold(cfg, run.read_split(), 0, run.fold(0), seed=1)


# ---- (e) the config's ranges, each a one-line error naming the key -----------------------------------------
@pytest.mark.parametrize("train, key", [
    ({"teacher": "runs/t", "distill": True, "teacher_weight": 0}, "train.teacher_weight"),
    ({"teacher": "runs/t", "distill": True, "teacher_weight": 1.5}, "train.teacher_weight"),
    ({"teacher": "runs/t", "distill": True, "teacher_temperature": 0}, "train.teacher_temperature"),
    ({"teacher": "runs/t", "distill": True, "teacher_temperature": float("nan")}, "train.teacher_temperature"),
    ({"teacher": "runs/t", "distill": True, "teacher_targets": "hard", "teacher_temperature": 2},
     "train.teacher_temperature"),
    ({"teacher": "runs/t", "pseudo_labels": "confidence", "pseudo_threshold": 0}, "train.pseudo_threshold"),
    ({"teacher": "runs/t", "pseudo_labels": "proportion", "pseudo_proportion": 1.2}, "train.pseudo_proportion"),
    ({"teacher": "runs/t", "pseudo_labels": "sometimes"}, "train.pseudo_labels"),
    ({"teacher": "runs/t", "teacher_targets": "medium", "distill": True}, "train.teacher_targets"),
    ({"distill": True}, "train.distill"),
    ({"pseudo_labels": "confidence"}, "train.pseudo_labels"),
    ({"teacher": "runs/t"}, "train.teacher"),
])
def test_teacher_keys_out_of_range_are_one_line_errors(tmp_path, train, key):
    path = write_config(tmp_path / "configs", "e", tmp_path, train=train)
    with pytest.raises(UserError) as e:
        load_config(str(path))
    assert key in str(e.value) and "\n" not in str(e.value)


# ---- make: a student whose teacher changed is stale ---------------------------------------------------------
def test_make_retrains_a_student_whose_teacher_changed(tmp_path, corpus, teacher):
    cfg, run = student(tmp_path, corpus, teacher.root)
    stamp = run.stage_yaml("train").read_text()
    for k in range(FOLDS):  # the student's folds as if trained, after its stamp
        run.fold(k).dir.mkdir(parents=True, exist_ok=True)
        run.fold(k).oof_csv.write_text("id\n")
    now = run.stage_yaml("train").stat().st_mtime
    for path in run.root.glob("stage-*.yaml"):  # stamped a minute ago, trained since
        os.utime(path, (now - 60, now - 60))
    for path in [run.folds_csv] + [run.fold(k).oof_csv for k in range(FOLDS)]:
        os.utime(path, (now - 30, now - 30))

    def up_to_date() -> bool:
        cmd = ["make", "-q", "--no-print-directory", "-C", str(ROOT), str(run.fold(0).oof_csv),
               f"RUNS={run.root.parent}", "NAME=student", "EXP=student", f"PY={sys.executable}"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).returncode == 0

    assert up_to_date()
    save_run_config(cfg, run.root)  # nothing changed: the stamp stays, and so does make's verdict
    assert run.stage_yaml("train").read_text() == stamp and up_to_date()
    mark_teacher(teacher, [0.5] * FOLDS)  # the teacher is trained again
    save_run_config(cfg, run.root)  # what `make train` runs first
    assert run.stage_yaml("train").read_text() != stamp and not up_to_date()


def test_the_teacher_module_imports_no_torch():
    """run.py digests a teacher's files whenever a config is saved: that must not pay torch's imports."""
    code = ("import sys, foldvision.learn.teacher, foldvision.run; "
            "print(sorted(m for m in ('torch', 'timm', 'albumentations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"




# ---- every task kind: soft tags (multilabel) and soft scores (regression, ordinal) -----------------------------
def kind_runs(tmp_path, kind: str, name: str = "exp", **train):
    """A marked teacher and its student on a tiny `kind` corpus (test_targets_learn's): the same 2-fold split
    written into both run folders. Returns (student config, student Run, teacher Run, test ids)."""
    from foldvision.run import load_run_config
    from foldvision.targets import Task
    from test_targets_learn import multilabel_labels, tiny_corpus, tiny_run

    corpus, level = tiny_corpus(tmp_path / "corpus")
    if kind == "multilabel":
        task, labels = multilabel_labels(level)
    else:
        task, labels = Task("regression", ("score",)), [f"{100 + 100 * v:.3f}" for v in level]
    teacher = Run(tiny_run(tmp_path / "t", task, labels, corpus, name, train=CPU))
    test_ids = [f"t{i:03d}" for i in range(4)]
    mark_teacher(teacher, test_ids=test_ids)
    train = {**CPU, "teacher": str(teacher.root), "distill": True, "pseudo_labels": "all", "batch_size": 4, **train}
    student_dir = tiny_run(tmp_path / "s", task, labels, corpus, train=train)
    return load_run_config(student_dir), Run(student_dir), teacher, test_ids


def in_users_units(parts, q: np.ndarray) -> np.ndarray:
    """The fed targets q back to what the teacher said: probabilities as they are, values through the head."""
    return q if parts.head.link == "sigmoid" else q * parts.head.scale + parts.head.shift


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_a_fold_k_student_of_any_kind_is_fed_teacher_fold_k_alone(tmp_path, kind):
    cfg, run, teacher, test_ids = kind_runs(tmp_path, kind)
    split = run.read_split()
    head = Head.fit(split.task, "mse", np.zeros(1))
    for k in split.folds:
        parts = build_fold(cfg, split, k, run.fold(k), seed=1)
        rows, m = fed(parts), parts.head.outputs
        assert rows.shape[1] == 2 + 2 * m and (rows[:, 1] == 1).all()
        labelled, pseudo = rows[rows[:, 0] > 0], rows[rows[:, 0] < 0]
        assert len(labelled) == int((split.fold != k).sum()) and len(pseudo) == len(test_ids)
        got = in_users_units(parts, labelled[:, 2:2 + m])
        np.testing.assert_allclose(got, np.tile(marked(head, TRAIN_MARK[k]), (len(labelled), 1)), atol=1e-4)
        # the true labels ride along, as the head makes them
        np.testing.assert_allclose(np.sort(labelled[:, 2 + m:], axis=0),
                                   np.sort(parts.head.targets(split.y[split.fold != k]), axis=0), atol=1e-5)
        own = {round(float(v), 4) for i in range(len(test_ids)) for v in marked(head, TEST_MARK[k] + 0.01 * i)}
        others = {round(float(v), 4) for j in range(FOLDS) if j != k for i in range(len(test_ids))
                  for v in marked(head, TEST_MARK[j] + 0.01 * i)}
        fed_test = {round(float(v), 4) for v in in_users_units(parts, pseudo[:, 2:2 + m]).ravel()}
        assert fed_test <= own and not fed_test & others
        audit = pl.read_csv(run.fold(k).teacher_csv, schema_overrides={"id": pl.String, "label": pl.String})
        targets_csv = audit.select(pl.col("^target.*$")).to_numpy()
        assert audit["id"].to_list() == [i for i, f in zip(split.ids, split.fold) if f != k] + test_ids
        np.testing.assert_allclose(in_users_units(parts, targets_csv[-len(test_ids):]),
                                   [marked(head, TEST_MARK[k] + 0.01 * i) for i in range(len(test_ids))], atol=1e-4)
        assert audit["label"].to_list()[-1] == "" and audit["path"].to_list() == parts.train_loader.dataset.paths


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_pseudo_labelled_images_of_any_kind_never_reach_validation_or_the_oof_table(tmp_path, kind):
    from foldvision.stages.train import fit_fold

    cfg, run, _, test_ids = kind_runs(tmp_path, kind, distill=False)
    split = run.read_split()
    for k in split.folds:
        parts = build_fold(cfg, split, k, run.fold(k), seed=1)
        test_paths = {p for p in parts.train_loader.dataset.paths if p.startswith("test")}
        assert len(test_paths) == len(test_ids) and not test_paths & set(parts.val_loader.dataset.paths)
        fit_fold(cfg, run.root, k)
        assert run.read_fold_oof(k, split.task).ids == [i for i, f in zip(split.ids, split.fold) if f == k]
    oof = run.read_fold_oofs(split)
    assert sorted(oof.ids) == sorted(split.ids) and not set(oof.ids) & set(test_ids)


def test_a_teacher_of_another_task_is_a_one_line_error_naming_both_runs(tmp_path):
    _, run, teacher, _ = kind_runs(tmp_path, "regression")
    tags, _, _, _ = kind_runs(tmp_path / "tags", "multilabel", teacher=str(teacher.root))
    student = Run(tmp_path / "tags" / "s" / "runs" / "exp")
    with pytest.raises(UserError) as e:
        build_fold(tags, student.read_split(), 0, student.fold(0), seed=1)
    message = str(e.value)
    assert "\n" not in message and "a regression task of ['score']" in message and "multilabel task" in message
    assert str(teacher.root) in message and str(student.root) in message
    renamed = Split(*[getattr(run.read_split(), f) for f in ("ids", "paths", "labels", "groups", "fold")],
                    ["pawpularity"], "regression")  # the same kind, another target: refused too
    with pytest.raises(UserError, match="a regression task of \\['score'\\].*regression task of \\['pawpularity'\\]"):
        load_teacher(str(teacher.root), run.root, renamed)


def test_soft_tags_and_soft_scores_by_hand(tmp_path):
    t = load_config(str(write_config(tmp_path / "configs", "e", tmp_path))).train
    tags = Head("multilabel", ("x", "y"), "sigmoid")
    probs = np.array([[0.9, 0.2], [0.5, 0.7]])
    np.testing.assert_allclose(targets(probs, t, tags), probs)
    logit = np.log(probs / (1 - probs))
    np.testing.assert_allclose(targets(probs, dataclasses.replace(t, teacher_temperature=2.0), tags),
                               1 / (1 + np.exp(-logit / 2)))
    np.testing.assert_array_equal(targets(probs, dataclasses.replace(t, teacher_targets="hard"), tags),
                                  [[1, 0], [1, 1]])
    # confidence of tags: the mean over tags of max(p, 1 − p): 0.725, 0.85 (the top probability would say 0.95, 0.85)
    sure = np.array([[0.95, 0.5], [0.85, 0.15]])
    conf = dataclasses.replace(t, pseudo_labels="confidence", pseudo_threshold=0.8)
    np.testing.assert_array_equal(select_pseudo(sure, conf, "multilabel"), [False, True])
    share = dataclasses.replace(t, pseudo_labels="proportion", pseudo_proportion=0.5)
    np.testing.assert_array_equal(select_pseudo(sure, share, "multilabel"), [False, True])
    np.testing.assert_array_equal(select_pseudo(probs, dataclasses.replace(t, pseudo_labels="all"), "regression"),
                                  [True, True])
    values = np.array([[150.0], [90.0]])  # a regression teacher's values, user units
    standard = Head("regression", ("score",), "identity", 100.0, 20.0)
    np.testing.assert_allclose(targets(values, t, standard)[:, 0], [2.5, -0.5])
    scaled = Head("regression", ("score",), "scaled", 100.0, 40.0)  # 100..140: clipped to 0..1 for BCE
    np.testing.assert_allclose(targets(values, t, scaled)[:, 0], [1.0, 0.0])
    grades = Head("ordinal", ("0", "1", "2", "3"), "cumulative")
    expected = np.array([[1.6], [0.3]])
    np.testing.assert_allclose(targets(expected, t, grades), [[1, 0.6, 0], [0.3, 0, 0]], atol=1e-6)
    assert targets(expected, t, grades).sum(axis=1) == pytest.approx([1.6, 0.3])  # E[grade] is the teacher's
    np.testing.assert_allclose(targets(expected, dataclasses.replace(t, teacher_targets="hard"), grades),
                               [[1, 1, 0], [0, 0, 0]])  # rounded: grade 2, grade 0


def test_the_teacher_loss_for_tags_and_values_by_hand():
    from foldvision.config import LossConfig
    from foldvision.learn.losses import create_loss

    def bce(z, y):
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    def kl(z, q, tau):  # binary KL(q ‖ sigmoid(z/τ))
        p = 1 / (1 + math.exp(-z / tau))
        return sum(a * math.log(a / b) for a, b in ((q, p), (1 - q, 1 - p)) if a > 0)

    tags = Head("multilabel", ("x", "y"), "sigmoid")
    z = [[1.0, -0.5], [0.2, 0.8], [-1.0, 2.0]]
    q = np.array([[0.7, 0.4], [0.9, 0.1], [0.3, 0.6]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    rows = np.concatenate([pack(tags, np.array([1, 0]), np.vstack([q[:1], np.zeros((1, 2))]), y),
                           pack(tags, np.ones(1), q[2:])])  # taught, untaught, a test image
    tau, w = 2.0, 0.3
    fn = TeacherLoss(create_loss(LossConfig(name="bce"), "multilabel"), w, tau, "multilabel")
    by_hand = ((1 - w) * (bce(1.0, 1) + bce(-0.5, 0)) / 2 + w * tau ** 2 * (kl(1.0, 0.7, tau) + kl(-0.5, 0.4, tau)) / 2
               + (bce(0.2, 0) + bce(0.8, 1)) / 2 + w * tau ** 2 * (kl(-1.0, 0.3, tau) + kl(2.0, 0.6, tau)) / 2) / 3
    assert fn(torch.tensor(z), torch.from_numpy(rows)).item() == pytest.approx(by_hand, abs=1e-5)

    value = Head("regression", ("score",), "identity", 100.0, 20.0)
    out, q_value = [[0.5], [-1.0]], np.array([[2.5], [0.0]])
    rows = np.concatenate([pack(value, np.ones(1), q_value[:1], np.array([110.0])),  # labelled: target 0.5
                           pack(value, np.ones(1), q_value[1:])])
    fn = TeacherLoss(create_loss(LossConfig(name="huber", huber_delta=1.0), "regression"), w, 1.0, "regression")
    huber = lambda e: 0.5 * e * e if abs(e) <= 1 else abs(e) - 0.5  # noqa: E731
    by_hand = ((1 - w) * huber(0.5 - 0.5) + w * huber(0.5 - 2.5) + w * huber(-1.0 - 0.0)) / 2
    assert fn(torch.tensor(out), torch.from_numpy(rows)).item() == pytest.approx(by_hand, abs=1e-6)


def test_mixup_mixes_the_losses_of_packed_rows_not_the_rows():
    """A mixed packed row would mix a class index (0.7·1 + 0.3·0 → class 0) or a test image's −1 flag with a
    label: a taught fold under Mixup/CutMix mixes the two rows' losses instead."""
    from foldvision.learn.recipes import mixed_loss

    head = Head("single", ("a", "b"))
    rows = torch.from_numpy(pack(head, np.ones(2), np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([1, 0])))
    logits = torch.tensor([[0.3, 1.0], [1.5, -0.2]])
    fn = TeacherLoss(CrossEntropy(), 0.4, 1.0)
    expected = 0.7 * fn(logits, rows) + 0.3 * fn(logits, rows.flip(0))
    torch.testing.assert_close(mixed_loss(fn, logits, rows, 0.7), expected)


@pytest.mark.parametrize("train, message", [
    ({"pseudo_labels": "confidence"}, "train.pseudo_labels=confidence: {a} {kind} teacher predicts one value"),
    ({"pseudo_labels": "proportion"}, "no confidence to rank test images by; use train.pseudo_labels=all"),
    ({"teacher_temperature": 2.0}, "train.teacher_temperature=2.0: a temperature softens probabilities"),
])
@pytest.mark.parametrize("kind", ["regression", "ordinal"])
def test_what_a_value_teacher_cannot_give_is_a_one_line_error(tmp_path, kind, train, message):
    cfg = load_config(str(write_config(tmp_path / "configs", "e", tmp_path,
                                       train={"teacher": "runs/t", "distill": True, **train})))
    with pytest.raises(UserError) as e:
        check_task(cfg, kind, "data.task=x: ")
    assert message.format(a="an" if kind == "ordinal" else "a", kind=kind) in str(e.value)
    assert "\n" not in str(e.value)
    check_task(cfg, "single")


def test_hard_targets_are_refused_for_a_regression_value_only(tmp_path):
    cfg = load_config(str(write_config(tmp_path / "configs", "e", tmp_path,
                                       train={"teacher": "runs/t", "distill": True, "teacher_targets": "hard"})))
    with pytest.raises(UserError, match="train.teacher_targets=hard: a regression value has no hard form"):
        check_task(cfg, "regression")
    for kind in ("single", "multilabel", "ordinal"):
        check_task(cfg, kind)


def test_a_blend_combines_value_and_tag_columns_with_fold_k_weights(tmp_path):
    from foldvision.learn.teacher import Teacher

    values = [np.array([[100.0], [120.0]]), np.array([[140.0], [80.0]])]
    teacher = Teacher(tmp_path, [], "hill_climb", {0: np.array([0.25, 0.75])}, "regression")
    np.testing.assert_allclose(teacher.combine(0, values), [[130.0], [90.0]])
    tags = Teacher(tmp_path, [], "mean", {0: np.array([0.5, 0.5])}, "multilabel")
    np.testing.assert_allclose(tags.combine(0, [np.array([[0.2, 0.9]]), np.array([[0.4, 0.3]])]), [[0.3, 0.6]])


def test_a_regression_blend_teaches_fold_k_with_its_fold_k_weights(tmp_path, monkeypatch):
    """Two marked regression members, each right on one fold's OOF rows: the blend's fold-k weights (fitted on
    the other fold) differ per fold, and student fold k is fed the members' fold-k values combined with them.
    (A rank blend of values is refused by make ensemble itself: ranks are not in the target's units.)"""
    from foldvision.commands.ensemble import blend

    monkeypatch.chdir(tmp_path)
    members = []
    for n in range(2):
        _, _, member, test_ids = kind_runs(tmp_path / f"m{n}", "regression", f"m{n}")
        mark_teacher(member, [m + 0.05 * n for m in TRAIN_MARK], [m + 0.05 * n for m in TEST_MARK], test_ids)
        split = member.read_split()
        pred = np.where(split.fold == n, split.y, split.y + 30 + np.arange(len(split.y)))
        member.write_oof(Predictions(split.ids, split.classes, pred[:, None], split.fold, split.labels, "regression"))
        member.write_scores({"oof": {}})
        member.write_test(Predictions(test_ids, split.classes, np.full((len(test_ids), 1), 150.0), kind="regression"))
        members.append(member)
    blend(tmp_path / "runs" / "blend", [m.root for m in members], "hill_climb", out=tmp_path / "blend.csv")
    weights = Run(tmp_path / "runs" / "blend").read_ensemble()["fold_weights"]
    assert weights["0"] != weights["1"]
    cfg, run, _, _ = kind_runs(tmp_path / "s", "regression", teacher=str(tmp_path / "runs" / "blend"))
    split = run.read_split()
    for k in split.folds:
        w = list(weights[str(k)].values())
        parts = build_fold(cfg, split, k, run.fold(k), seed=1)
        rows = fed(parts)
        got = in_users_units(parts, rows[rows[:, 0] > 0, 2])
        np.testing.assert_allclose(got, w[0] * TRAIN_MARK[k] + w[1] * (TRAIN_MARK[k] + 0.05), atol=1e-4)


def test_the_train_scores_of_a_taught_value_fold_count_its_labelled_rows_only():
    """The epoch's train_<score> reads the true labels out of the packed rows ([±1, taught, q, t]), never the flags
    nor a test image's teacher target."""
    from foldvision.learn.engine import _Tally

    head = Head("regression", ("score",), "identity", 100.0, 20.0)
    rows = np.concatenate([pack(head, np.ones(1), np.array([[2.0]]), np.array([110.0])),
                           pack(head, np.ones(1), np.array([[1.0]]))])
    tally = _Tally(None, "train", 1, head)
    tally.add(torch.tensor(0.0), torch.tensor([[0.5], [1.0]]), torch.from_numpy(rows), 2)
    scores = tally.close(0.1)
    assert scores["train_rmse"] == pytest.approx(0.0, abs=1e-6)  # 0.5·20 + 100 = 110, the labelled row's label


def test_the_imbalanced_draw_balances_a_taught_rows_rarest_tag_and_leaves_values_alone():
    from foldvision.learn.teacher import sampling_labels

    tags = Head("multilabel", ("x", "y", "z"), "sigmoid")
    y = np.array([[1.0, 0, 0], [1.0, 0, 0]])
    rows = np.concatenate([pack(tags, np.ones(2), np.tile([0.1, 0.9, 0.9], (2, 1)), y),  # its true tags, not q
                           pack(tags, np.ones(1), np.array([[0.2, 0.9, 0.1]]))])  # a test image: targets ≥ 0.5
    assert sampling_labels(rows, tags).tolist() == [0, 0, 1]  # tag counts 2, 1, 0: each row's rarest
    value = Head("regression", ("score",), "identity")
    assert sampling_labels(pack(value, np.ones(1), np.array([[0.3]])), value) is None


@pytest.mark.parametrize("kind", ["multilabel", "ordinal"])
def test_a_trained_teacher_teaches_a_student_through_the_train_stage(tmp_path, capsys, kind):
    """End to end, as `make train` runs it: a teacher trained and predicted by the stages, then a student with
    distillation, all test images pseudo-labelled and Mixup (an ordinal student on cumulative logits, with hard
    targets: the teacher's rounded grade)."""
    from foldvision.targets import Task
    from test_targets_learn import multilabel_labels, tiny_corpus, tiny_run, train_and_predict

    corpus, level = tiny_corpus(tmp_path / "corpus")
    if kind == "multilabel":
        (task, labels), student_loss, targets_kind = multilabel_labels(level), {}, "soft"
    else:
        task, labels = Task("ordinal", ("0", "1", "2", "3")), [str(int(v * 3.99)) for v in level]
        student_loss, targets_kind = {"name": "cumulative"}, "hard"
    teacher = tiny_run(tmp_path / "t", task, labels, corpus, "teacher", train=CPU)
    train_and_predict(capsys, teacher)
    train = {**CPU, "teacher": str(teacher), "distill": True, "pseudo_labels": "all", "teacher_targets": targets_kind}
    student = tiny_run(tmp_path / "s", task, labels, corpus, "student", train=train, loss=student_loss,
                       augment={"mixup": 0.4})
    code, err = stage(capsys, "train", str(student), "--fold", "0", "1")
    assert code == 0, err
    assert "4 of 4 test images join training" in err
    run = Run(student)
    oof = run.read_fold_oofs(run.read_split())
    assert sorted(oof.ids) == sorted(run.read_split().ids)
    audit = pl.read_csv(run.fold(0).teacher_csv)
    targets_csv = [c for c in audit.columns if c.startswith("target")]  # 3 tags, or K − 1 = 3 cumulative targets
    assert targets_csv == (["target_dark", "target_light", "target_mid"] if kind == "multilabel"
                           else ["target_gt0", "target_gt1", "target_gt2"]) and len(audit) == 12 + 4
    if kind == "ordinal":  # hard: whole grades, P(grade > k) in {0, 1}
        assert set(audit.select(pl.col("^target.*$")).to_numpy().ravel().tolist()) <= {0.0, 1.0}
