"""The run folder's contract (foldvision.run): what make may read, what may overwrite a run, what is stale.

Issue 10's classes of failure: a config value reaching make's syntax, stale results presented as fresh, a run
folder silently rewritten for another corpus.
"""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import ROOT, Project, make_corpus, stage, write_config
from foldvision.config import load_config
from foldvision.errors import UserError
from foldvision.run import Predictions, Run, check_name, input_digests, stamps_json
from foldvision.targets import Task


def make(tmp_path: Path, *targets: str, ok: bool = True, **variables) -> subprocess.CompletedProcess:
    args = {"CONFIGS": tmp_path / "configs", "RUNS": tmp_path / "runs", "SUBMISSIONS": tmp_path / "subs",
            "PY": sys.executable, **variables}
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), *targets, *(f"{k}={v}" for k, v in args.items())]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# ---- 0. no config value reaches make's syntax ------------------------------------------------------------
def test_config_mk_holds_only_numbers(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4})
    (corpus / "train.csv").rename(corpus / "labels $(shell touch PWNED).csv")
    p = Project(tmp_path, corpus, data={"train_csv": "labels $(shell touch PWNED).csv"})
    code, err = p.config(capsys)
    assert code == 0, err
    assert (p.run / "config.mk").read_text() == "N_FOLDS := 2\n"


@pytest.mark.slow
def test_make_runs_no_shell_command_from_a_config_value_and_takes_paths_with_spaces(tmp_path):
    corpus = make_corpus(tmp_path / "my corpus", {"a": 4, "b": 4})
    hostile = "labels$(shell touch PWNED).csv"
    (corpus / "train.csv").rename(corpus / hostile)
    write_config(tmp_path / "configs", "x", corpus, data={"train_csv": hostile})
    make(tmp_path, "folds", EXP="x", DATA=str(corpus))  # DATA with a space: one argument
    assert not list(ROOT.glob("PWNED")) and not list(tmp_path.rglob("PWNED"))
    assert (tmp_path / "runs" / "x" / "folds.csv").is_file()
    bad = make(tmp_path, "folds", ok=False, EXP="x", NAME="a b")
    assert bad.returncode != 0 and "NAME='a b' has spaces" in bad.stderr


@pytest.mark.parametrize("name", ["a$(shell id)", "x:y", "a#b", "50%", "a=b", "", "a;b"])
def test_run_names_that_make_or_the_shell_would_read_are_refused(name):
    with pytest.raises(UserError, match="run name"):
        check_name(name)


# ---- 2. one run folder, one corpus ---------------------------------------------------------------------
def test_a_run_folder_with_results_refuses_another_corpus_or_split(tmp_path, capsys):
    one = make_corpus(tmp_path / "one", {"a": 4, "b": 4})
    other = make_corpus(tmp_path / "other", {"a": 4, "b": 4}, seed=1)
    p = Project(tmp_path, one)
    code, err = p.folds(capsys)
    assert code == 0, err
    before = {f: f.read_bytes() for f in p.run.rglob("*") if f.is_file()}
    for override in (f"data.dir={other}", "cv.n_folds=3", "cv.seed=7", "data.group_col=label"):
        code, err = p.config(capsys, override)
        assert code == 2, override
        line = err.strip().splitlines()
        assert len(line) == 1 and "holds results for" in line[0] and "NAME=" in line[0] and "clean-run" in line[0]
    assert {f: f.read_bytes() for f in p.run.rglob("*") if f.is_file()} == before  # nothing rewritten
    code, err = p.config(capsys, "train.epochs=2")  # another setting of the same experiment is fine
    assert code == 0, err


def test_check_writes_nothing_into_a_run_folder(tmp_path, capsys):
    one = make_corpus(tmp_path / "one", {"a": 4, "b": 4})
    other = make_corpus(tmp_path / "other", {"a": 5, "b": 5}, seed=1)
    p = Project(tmp_path, one)
    code, err = p.folds(capsys)
    assert code == 0, err
    before = {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in p.run.rglob("*") if f.is_file()}
    code, report = p.check(capsys, f"data.dir={other}")
    assert code == 0, report
    assert {f: (f.stat().st_mtime_ns, f.read_bytes()) for f in p.run.rglob("*") if f.is_file()} == before


def test_a_fresh_folder_without_results_may_change_corpus(tmp_path, capsys):
    one = make_corpus(tmp_path / "one", {"a": 4, "b": 4})
    other = make_corpus(tmp_path / "other", {"a": 4, "b": 4}, seed=1)
    p = Project(tmp_path, one)
    assert p.config(capsys)[0] == 0
    code, err = p.config(capsys, f"data.dir={other}")  # a mistyped DATA, corrected before any result
    assert code == 0, err


# ---- 1. every output depends on every input -----------------------------------------------------------
def _stamps(run: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(run.glob("stage-*.yaml"))}


def test_stage_stamps_follow_the_inputs(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4})
    p = Project(tmp_path, corpus)
    assert p.config(capsys)[0] == 0
    first = _stamps(p.run)

    # a test image replaced under the same name: only predict is stale
    image = corpus / "test" / "t000.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    assert p.config(capsys)[0] == 0
    second = _stamps(p.run)
    assert second["stage-folds.yaml"] == first["stage-folds.yaml"]
    assert second["stage-train.yaml"] == first["stage-train.yaml"]
    assert second["stage-predict.yaml"] != first["stage-predict.yaml"]

    # the sample submission edited: predict again
    sample = corpus / "sample_submission.csv"
    sample.write_text(sample.read_text().replace("0.5", "0.25"))
    assert p.config(capsys)[0] == 0
    third = _stamps(p.run)
    assert third["stage-predict.yaml"] != second["stage-predict.yaml"]
    assert third["stage-train.yaml"] == first["stage-train.yaml"]

    # a training image replaced: train and predict, not the split
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(corpus / "train" / "a_000.png")
    assert p.config(capsys)[0] == 0
    fourth = _stamps(p.run)
    assert fourth["stage-folds.yaml"] == first["stage-folds.yaml"]
    assert fourth["stage-train.yaml"] != third["stage-train.yaml"]

    # the label table edited: everything
    table = pd.read_csv(corpus / "train.csv", dtype=str)
    table.loc[0, "label"] = "b"
    table.to_csv(corpus / "train.csv", index=False)
    assert p.config(capsys)[0] == 0
    assert _stamps(p.run)["stage-folds.yaml"] != first["stage-folds.yaml"]


@pytest.mark.parametrize("how", ["in place (cp -p)", "renamed over (rsync -a)"])
def test_a_same_size_replacement_with_its_old_mtime_is_stale(tmp_path, capsys, how):
    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4}, ext=".bmp")  # BMP: same pixels count, same bytes
    p = Project(tmp_path, corpus)
    assert p.config(capsys)[0] == 0
    first = _stamps(p.run)
    image, other = corpus / "train" / "a_000.bmp", corpus / "train" / "b_000.bmp"
    old = image.stat()
    assert other.stat().st_size == old.st_size and other.read_bytes() != image.read_bytes()
    if how.startswith("in place"):
        with open(image, "r+b") as f:  # what cp -p does: the same inode rewritten, then its times set back
            f.write(other.read_bytes())
    else:
        (corpus / "new.tmp").write_bytes(other.read_bytes())
        (corpus / "new.tmp").rename(image)
    os.utime(image, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (image.stat().st_size, image.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    assert p.config(capsys)[0] == 0
    second = _stamps(p.run)
    assert second["stage-train.yaml"] != first["stage-train.yaml"]
    assert second["stage-folds.yaml"] == first["stage-folds.yaml"]  # the labels did not change


def test_restamping_an_unchanged_corpus_reads_no_image(tmp_path, capsys, monkeypatch):
    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4})
    p = Project(tmp_path, corpus)
    assert p.config(capsys)[0] == 0
    cfg = load_config("exp", [], p.configs)
    assert stamps_json(cfg).is_file() and stamps_json(cfg).parent.parent == tmp_path / "cache"
    read = []
    real_digest = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, name: read.append(f.name) or real_digest(f, name))
    before = input_digests(cfg)
    assert read == []  # every hash came from stamps.json
    (corpus / "train" / "a_001.png").touch()  # touched, not changed: hashed again, and still the same content
    assert input_digests(cfg) == before and read == [str(corpus / "train" / "a_001.png")]


def test_digests_ignore_nothing_a_stage_reads(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4})
    cfg = load_config(str(write_config(tmp_path / "configs", "e", corpus)))
    before = input_digests(cfg)
    (corpus / "test" / "t001.png").unlink()  # a test image removed
    after = input_digests(cfg)
    assert after["predict"]["test_images"] != before["predict"]["test_images"]
    assert after["train"] == before["train"]


# ---- the contract's readers and writers --------------------------------------------------------------
def test_predictions_round_trip_keeps_ids_as_strings(tmp_path):
    run = Run(tmp_path / "r")
    oof = Predictions(["007", "10", "é"], ["0", "1"], np.array([[0.25, 0.75], [1.0, 0.0], [0.5, 0.5]]),
                      np.array([0, 1, 1]), ["1", "0", "1"])
    run.fold(0).dir.mkdir(parents=True)
    run.write_fold_oof(0, oof)
    back = run.read_fold_oof(0, Task("single", ("0", "1")))
    assert back.ids == ["007", "10", "é"] and back.labels == ["1", "0", "1"]
    assert back.probs.tolist() == oof.probs.tolist() and back.fold.tolist() == [0, 1, 1]
    assert back.y.tolist() == [1, 0, 1]


def test_a_damaged_run_table_is_one_line(tmp_path):
    run = Run(tmp_path / "r")
    run.fold(0).dir.mkdir(parents=True)
    run.fold(0).oof_csv.write_text("id,fold,label,prob_0,prob_1\na,0,0,x,0.5\n")
    with pytest.raises(UserError, match="not a number.*re-run"):
        run.read_fold_oof(0, Task("single", ("0", "1")))
    run.fold(0).oof_csv.write_text("id,label\na,0\n")
    with pytest.raises(UserError, match="no column"):
        run.read_fold_oof(0, Task("single", ("0", "1")))


def test_saved_config_reads_back_with_yaml_1_2_numbers(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4})
    p = Project(tmp_path, corpus)
    assert p.config(capsys, "train.lr=3e-5", "train.weight_decay=1E-2")[0] == 0
    saved = Run(p.run).load_config()
    assert saved.train.lr == 3e-5 and saved.train.weight_decay == 0.01
    assert yaml.safe_load((p.run / "config.yaml").read_text())["train"]["lr"] == 3e-5  # written as a float


@pytest.mark.slow
def test_make_predict_redoes_the_submission_when_a_checkpoint_test_images_or_the_sample_change(tmp_path):
    """What a submission is made from: each fold's best.pt, the test images, the sample. Replacing any of them
    predicts again, and only what it touches (one training, for the suite's time)."""
    corpus = make_corpus(tmp_path / "c", {"a": 6, "b": 6}, n_test=4)
    write_config(tmp_path / "configs", "x", corpus, predict={"tta": []})
    make(tmp_path, "folds", "train", "predict", EXP="x")
    submission = tmp_path / "subs" / "x.csv"
    first = submission.read_text()
    assert "foldvision predict" not in make(tmp_path, "predict", EXP="x").stdout  # up to date

    # fold<k>/test.csv is made from fold<k>/best.pt: a checkpoint replaced after training (another fold's, a
    # re-trained one copied in) must not leave its old predictions in the next submission
    run = Run(tmp_path / "runs" / "x")
    fold0 = run.fold(0).test_csv.read_text()
    run.fold(0).best_pt.write_bytes(run.fold(1).best_pt.read_bytes())  # fold 1's model in fold 0's place
    redo = make(tmp_path, "predict", EXP="x").stdout
    assert "--fold 0" in redo and "--fold 0 1" not in redo, redo
    assert run.fold(0).test_csv.read_text() != fold0
    first = submission.read_text()

    # the test images replaced under the same names: predicted again, and the submission changes
    for i in range(4):
        Image.fromarray(np.full((20, 20, 3), 255 * (i % 2), np.uint8)).save(corpus / "test" / f"t{i:03d}.png")
    redo = make(tmp_path, "predict", EXP="x")
    assert "predict" in redo.stdout and "--fold 0 1" in redo.stdout
    assert submission.read_text() != first

    # the sample submission re-ordered: the submission follows it
    sample = pd.read_csv(corpus / "sample_submission.csv", dtype=str)
    sample.iloc[::-1].to_csv(corpus / "sample_submission.csv", index=False)
    make(tmp_path, "predict", EXP="x")
    assert pd.read_csv(submission, dtype=str)["image_id"].tolist() == sample["image_id"].tolist()[::-1]

    # a deleted submission is rebuilt from fold files made from the current images, not reused stale ones
    submission.unlink()
    make(tmp_path, "predict", EXP="x")
    assert submission.is_file()


def test_hints_name_the_experiment_and_the_run_an_ablation_variant_was_made_from(tmp_path, capsys, binary_corpus):
    """A variant runs/<exp>--loss-ce is made by `make ... EXP=<exp> NAME=<exp>--loss-ce`: a hint that says
    EXP=<exp>--loss-ce names a config that does not exist."""
    configs = tmp_path / "configs"
    write_config(configs, "exp", binary_corpus)
    runs = tmp_path / "runs"
    code, err = stage(capsys, "config", "exp", "loss.name=ce", "--configs", str(configs),
                      "--run-dir", str(runs / "exp--loss-ce"))
    assert code == 0, err
    variant = Run(runs / "exp--loss-ce")
    assert variant.make_args == f"EXP=exp NAME=exp--loss-ce RUNS={runs}"
    with pytest.raises(UserError, match=f"make train EXP=exp NAME=exp--loss-ce RUNS={runs}"):
        variant.read_scores()
    assert Run(tmp_path / "elsewhere" / "old").make_args == f"EXP=old RUNS={tmp_path / 'elsewhere'}"
