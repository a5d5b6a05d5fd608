"""The predict stage in make's two steps: `--fold K` always runs fold K's model into fold<K>/test.csv and writes
nothing else; `--out` runs no model and averages the fold files, joined by id, into test.csv and the submission."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import foldvision.stages.predict as predict_module
from foldvision import cli

from conftest import Project, make_corpus, stage


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained two-fold project with a probability sample submission (made once; tests copy its run)."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = make_corpus(tmp / "c", {"0": 8, "1": 6})
    p = Project(tmp, corpus, predict={"tta": ["hflip"]})
    for argv in (("config", "exp", "--configs", str(p.configs), "--run-dir", str(p.run)),
                 ("folds", str(p.run)), ("train", str(p.run), "--fold", "0", "1")):
        cli.main(list(argv))
    return p


@pytest.fixture
def project(trained, tmp_path):
    p = Project(tmp_path, trained.corpus, predict={"tta": ["hflip"]})
    shutil.copytree(trained.run, p.run)
    return p


def test_fold_writes_only_its_test_csv_and_predicts_every_time(project, capsys, monkeypatch):
    runs = []
    real = predict_module.fold_test_probs
    monkeypatch.setattr(predict_module, "fold_test_probs", lambda *a, **k: runs.append(1) or real(*a, **k))
    before = {p.relative_to(project.run) for p in project.run.rglob("*")}
    code, err = stage(capsys, "predict", str(project.run), "--fold", "0")
    assert code == 0, err
    after = {p.relative_to(project.run) for p in project.run.rglob("*")}
    assert {str(p) for p in after - before} == {"fold0/test.csv"}
    assert not project.submission.exists()
    frame = pd.read_csv(project.run / "fold0" / "test.csv", dtype={"id": str})
    assert list(frame.columns) == ["id", "prob_0", "prob_1"] and len(frame) == 6
    assert frame[["prob_0", "prob_1"]].sum(axis=1).to_numpy() == pytest.approx(1.0)
    assert stage(capsys, "predict", str(project.run), "--fold", "0")[0] == 0
    assert len(runs) == 2  # no freshness check in Python: make decides what is stale


def test_out_averages_the_fold_files_by_id_and_runs_no_model(project, capsys, monkeypatch):
    for fold in ("0", "1"):
        assert stage(capsys, "predict", str(project.run), "--fold", fold)[0] == 0
    folds = [pd.read_csv(project.run / f"fold{k}" / "test.csv", dtype={"id": str}).set_index("id") for k in (0, 1)]
    folds[1].sample(frac=1, random_state=0).reset_index().to_csv(project.run / "fold1" / "test.csv", index=False)

    def no_model(*args, **kwargs):
        raise AssertionError("--out ran a model")

    import foldvision.learn.engine as engine  # where predict finds it: the torch side is imported when a model runs

    monkeypatch.setattr(engine, "build_model_for", no_model)
    code, err = stage(capsys, "predict", str(project.run), "--out", str(project.submission))
    assert code == 0, err
    mean = pd.read_csv(project.run / "test.csv", dtype={"id": str}).set_index("id")
    expected = (folds[0] + folds[1].loc[folds[0].index]) / 2
    np.testing.assert_allclose(mean.loc[expected.index].to_numpy(), expected.to_numpy())
    submission = pd.read_csv(project.submission, dtype={"image_id": str}).set_index("image_id")
    np.testing.assert_allclose(submission.loc[expected.index, "target"], expected["prob_1"])


def test_out_names_a_missing_fold_file_and_make_predict(project, capsys):
    assert stage(capsys, "predict", str(project.run), "--fold", "0")[0] == 0
    code, err = stage(capsys, "predict", str(project.run), "--out", str(project.submission))
    assert code == 2 and "Traceback" not in err
    line, = [line for line in err.splitlines() if line.startswith("error: ")]
    assert str(project.run / "fold1" / "test.csv") in line and "make predict" in line
    assert not project.submission.exists() and not (project.run / "test.csv").exists()


def test_a_fold_file_of_other_test_images_is_one_line(project, capsys):
    for fold in ("0", "1"):
        assert stage(capsys, "predict", str(project.run), "--fold", fold)[0] == 0
    stale = pd.read_csv(project.run / "fold1" / "test.csv", dtype={"id": str})
    stale.iloc[1:].to_csv(project.run / "fold1" / "test.csv", index=False)  # one test image since added
    code, err = stage(capsys, "predict", str(project.run), "--out", str(project.submission))
    assert code == 2 and "Traceback" not in err
    assert "fold1/test.csv predicts other test images than" in err and "make predict" in err
    assert not project.submission.exists()


# The modules predict must not import: the other stages (make's), the commands and the campaign launchers.
# Named here and checked to exist, so a move of the package cannot leave this list checking nothing.
OTHER_MODULES = [f"foldvision.stages.{m}" for m in ("folds", "cache", "train", "score")] + [
    f"foldvision.commands.{m}" for m in ("check", "demo_data", "ensemble", "evaluate", "ablate", "leaderboard",
                                         "label_issues", "report", "plots", "package", "infer", "wheelhouse",
                                         "notebook")] + [
    f"foldvision.campaign.{m}" for m in ("launch", "slot", "torchrun")]


def test_predict_imports_no_other_stage():
    missing = [name for name in OTHER_MODULES if importlib.util.find_spec(name) is None]
    assert not missing, f"moved or renamed: {missing}; name the modules where they are now"
    for wing in ("stages", "commands", "campaign"):  # a module added to a wing later is checked too
        package = importlib.import_module(f"foldvision.{wing}")
        found = {f"foldvision.{wing}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
        assert found - {"foldvision.stages.predict"} <= set(OTHER_MODULES), found - set(OTHER_MODULES)
    code = ("import sys, foldvision.stages.predict; "
            f"print(sorted(m for m in sys.modules if m in {OTHER_MODULES}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
