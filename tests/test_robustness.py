"""No tracebacks at run time: a broken checkpoint, cache or folds file, a killed write, a diverging model.

Each case breaks one thing the way a user's machine does (a kill mid-write, a full disk, a model that
diverges, a folds file from another tool) and checks that the stage either recovers with one printed line
or stops with one `error:` line that names the file and says what to do; never a torch, miniz or
scikit-learn traceback, never NaN probabilities in a table.
"""

from __future__ import annotations

import json
import os
import shutil

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import PIL
import pytest
import torch
from PIL import Image

import foldvision.learn.cache as cache_module
from foldvision import cli
from foldvision.learn.cache import cache_folder, open_images
from foldvision.files import atomic_path, remove_partial_writes
from foldvision.learn.transforms import Preprocessing

from conftest import Project, interrupt_second_validation, make_corpus, stage


def one_line(code: int, err: str, *fragments: str) -> str:
    """The single `error:` line of a failed stage, holding every fragment."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def printed(err: str, *fragments: str) -> str:
    """The one printed line holding every fragment (a recovery note, not an error)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if all(f in line for f in fragments)]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def corpus(tmp_path):
    return make_corpus(tmp_path / "c", {"cat": 6, "dog": 6}, sample="label")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained two-fold project (made once); tests copy its run folder before breaking it."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = make_corpus(tmp / "c", {"cat": 6, "dog": 6}, sample="label")
    p = Project(tmp, corpus, predict={"tta": []})
    for argv in (("config", "exp", "--configs", str(p.configs), "--run-dir", str(p.run)),
                 ("folds", str(p.run)), ("train", str(p.run), "--fold", "0", "1")):
        cli.main(list(argv))  # a failure exits (SystemExit): the fixture errors with the stage's message
    return p


@pytest.fixture
def project(trained, tmp_path):
    """A copy of the trained project's run folder, free to break."""
    p = Project(tmp_path, trained.corpus, predict={"tta": []})
    shutil.copytree(trained.run, p.run)
    return p


# ---- 1. a corrupt or foreign last.pt: named, set aside, the fold starts from scratch -------------------

def interrupted_fold(p: Project, capsys, monkeypatch) -> None:
    """Fold 0 of a two-epoch run stopped after its first epoch: a real last.pt, no oof.csv."""
    assert p.folds(capsys, "train.epochs=2")[0] == 0
    resume_scoring = interrupt_second_validation(monkeypatch)
    code, err = stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 130, err
    resume_scoring()
    assert (p.run / "fold0" / "last.pt").is_file() and not (p.run / "fold0" / "oof.csv").exists()


def cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BROKEN = {
    "cut short": cut_short,
    "empty": lambda path: path.write_bytes(b""),
    "random bytes": lambda path: path.write_bytes(np.random.default_rng(0).bytes(4096)),
    "a foreign dict": lambda path: torch.save({"state_dict": {"w": torch.zeros(2)}}, path),
    "a bare tensor": lambda path: torch.save(torch.zeros(3), path),
}


@pytest.mark.parametrize("breakage", list(BROKEN))
def test_a_broken_last_pt_is_set_aside_and_the_fold_starts_over(tmp_path, corpus, capsys, monkeypatch, breakage):
    p = Project(tmp_path, corpus)
    interrupted_fold(p, capsys, monkeypatch)
    last = p.run / "fold0" / "last.pt"
    BROKEN[breakage](last)
    code, err = stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 0, err
    printed(err, str(last), "set aside as last.pt.corrupt", "starting fold 0 from scratch")
    assert (p.run / "fold0" / "last.pt.corrupt").is_file() and not last.exists()
    assert pd.read_csv(p.run / "fold0" / "history.csv")["epoch"].tolist() == [1, 2]  # both epochs trained
    assert (p.run / "fold0" / "oof.csv").is_file()


# ---- 2. temporary files left by a kill during an atomic write ------------------------------------------

def test_temporary_files_of_a_killed_write_are_removed_when_the_fold_runs_again(tmp_path, corpus, capsys):
    p = Project(tmp_path, corpus)
    assert p.folds(capsys)[0] == 0
    fold_dir = p.run / "fold0"
    fold_dir.mkdir()
    left = [fold_dir / ".last.pt.k2j_x9ab.tmp", fold_dir / ".best.pt.0a1b2c3d.tmp"]
    for path in left:
        path.write_bytes(b"half a checkpoint")
    keep = fold_dir / "notes.tmp"  # not foldvision's pattern: left alone
    keep.write_text("mine")
    code, err = stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 0, err
    printed(err, "fold 0: removed 2 files left by an interrupted write")
    assert not any(path.exists() for path in left) and keep.exists()


def test_any_stage_removes_the_leftovers_of_the_file_it_writes(tmp_path, corpus, capsys):
    p = Project(tmp_path, corpus)
    assert p.config(capsys)[0] == 0
    left = p.run / ".folds.csv.ab12cd34.tmp"
    left.write_text("id,fold\n")
    assert p.folds(capsys)[0] == 0
    assert not left.exists() and (p.run / "folds.csv").is_file()


def test_a_write_in_progress_is_never_taken_for_a_leftover(tmp_path):
    target = tmp_path / "scores.json"
    with atomic_path(target) as tmp:
        tmp.write_text("{}")
        assert remove_partial_writes(tmp_path) == [] and tmp.exists()  # another process may be writing it
        with atomic_path(target) as second:  # a second writer of the same file leaves the first one's alone
            second.write_text("{}")
        assert tmp.exists()
    assert target.read_text() == "{}" and os.listdir(tmp_path) == ["scores.json"]


# ---- 3. a diverging model: one line with fold, epoch, step and what to try ---------------------------

def test_a_nan_loss_stops_the_fold_with_one_line(tmp_path, corpus, capsys, monkeypatch):
    p = Project(tmp_path, corpus)
    assert p.folds(capsys, "train.amp=bf16")[0] == 0  # mixed precision on: the line suggests turning it off
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda logits, target, **k: logits.sum() * np.nan)
    line = one_line(*stage(capsys, "train", str(p.run), "--fold", "0"), "fold 0 epoch 1/1", "step 1",
                    "loss is nan", "train.lr", "train.amp=off")
    assert "train.lr=0.001" in line  # the value in use, so the user knows what lower means
    assert not (p.run / "fold0" / "oof.csv").exists() and not (p.run / "fold0" / "best.pt").exists()


def test_non_finite_validation_probabilities_stop_the_fold_with_one_line(tmp_path, corpus, capsys, monkeypatch):
    from timm.models.convnext import ConvNeXt

    p = Project(tmp_path, corpus)
    assert p.folds(capsys)[0] == 0
    real_forward = ConvNeXt.forward
    monkeypatch.setattr(ConvNeXt, "forward",
                        lambda self, x: real_forward(self, x) * (1.0 if self.training else np.nan))
    one_line(*stage(capsys, "train", str(p.run), "--fold", "0"), "fold 0 epoch 1/1 validate",
             "not finite", "train.lr")
    assert not (p.run / "fold0" / "oof.csv").exists() and not (p.run / "fold0" / "best.pt").exists()


# ---- 4. a best.pt that is cut short or not foldvision's, at predict time -----------------------------

BROKEN_BEST = {
    "cut short": cut_short,
    "random bytes": BROKEN["random bytes"],
    "missing keys": lambda path: torch.save({"model": torch.load(path, weights_only=True)["model"]}, path),
    "other weights": lambda path: torch.save({**torch.load(path, weights_only=True), "model": {"w": torch.zeros(1)}},
                                             path),
}


@pytest.mark.parametrize("breakage", list(BROKEN_BEST))
def test_a_broken_best_pt_at_predict_time_says_which_fold_to_retrain(project, capsys, breakage):
    best = project.run / "fold1" / "best.pt"
    BROKEN_BEST[breakage](best)
    for argv in predict_commands(project):
        code, err = stage(capsys, *argv)
        if code != 0:
            break
    one_line(code, err, str(best), f"delete {project.run / 'fold1'}", "re-train fold 1")
    assert not (project.run / "fold1" / "test.csv").exists() and not project.submission.exists()


def predict_commands(p: Project) -> list[tuple[str, ...]]:
    """The predict stage as make runs it: each fold's test.csv, then their ensemble."""
    return [("predict", str(p.run), "--fold", "0"), ("predict", str(p.run), "--fold", "1"),
            ("predict", str(p.run), "--out", str(p.submission))]


# ---- 5. a corrupt cache index: named, set aside, rebuilt -------------------------------------------

PREP = Preprocessing(size=12, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, channels=3)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (20, 16, 3), dtype=np.uint8)).save(root / "train" / f"{i}.png")
    return root, sorted(f"train/{i}.png" for i in range(4))


BAD_INDEX = {
    "not JSON": "{\"shape\": [12, 12, 3], \"files\": {\"train/0.p",
    "a list": "[1, 2, 3]",
    "files not a table": json.dumps({"shape": [12, 12, 3], "files": 3}),
    "entries not records": json.dumps({"shape": [12, 12, 3], "files": {"train/0.png": "x"}}),
    "another shape": json.dumps({"shape": [8, 8, 3], "files": {}}),
}


@pytest.mark.parametrize("breakage", list(BAD_INDEX))
def test_a_corrupt_cache_index_is_set_aside_and_rebuilt(tmp_path, images, capsys, breakage):
    root, rels = images
    cfg = str(tmp_path / "cache")  # open_images' cache_dir
    first = open_images(cfg, root, rels, PREP, workers=0)
    expected = {rel: first[rel] for rel in rels}
    index = cache_folder(cfg, root, PREP) / "index.json"
    index.write_text(BAD_INDEX[breakage])
    capsys.readouterr()
    again = open_images(cfg, root, rels, PREP, workers=0)
    err = capsys.readouterr().err
    printed(err, str(index), "set aside as index.json.corrupt", "rebuilding")
    assert (index.parent / "index.json.corrupt").read_text() == BAD_INDEX[breakage]
    for rel in rels:
        np.testing.assert_array_equal(again[rel], expected[rel])


def test_a_cut_short_pixels_file_is_named_and_rebuilt(tmp_path, images, capsys):
    root, rels = images
    cfg = str(tmp_path / "cache")  # open_images' cache_dir
    first = open_images(cfg, root, rels, PREP, workers=0)
    expected = {rel: first[rel] for rel in rels}
    pixels = cache_folder(cfg, root, PREP) / "pixels.u8"
    os.truncate(pixels, pixels.stat().st_size // 2)
    capsys.readouterr()
    again = open_images(cfg, root, rels, PREP, workers=0)
    printed(capsys.readouterr().err, str(pixels), "shorter than its index", "rebuilding")
    for rel in rels:
        np.testing.assert_array_equal(again[rel], expected[rel])


# ---- 6. the cache key holds the versions of the decoder and the resizer -----------------------------

@pytest.mark.parametrize("module", [PIL, cv2, A], ids=["pillow", "opencv", "albumentations"])
def test_a_cache_made_by_another_library_version_is_rebuilt(tmp_path, images, monkeypatch, module):
    root, rels = images
    cfg = str(tmp_path / "cache")  # open_images' cache_dir
    open_images(cfg, root, rels, PREP, workers=0)
    before = cache_folder(cfg, root, PREP)
    decoded = []
    real = cache_module.load_image
    monkeypatch.setattr(cache_module, "load_image", lambda path, channels: decoded.append(path) or real(path, channels))
    monkeypatch.setattr(module, "__version__", "0.0.1")
    assert cache_folder(cfg, root, PREP) != before
    open_images(cfg, root, rels, PREP, workers=0)
    assert len(decoded) == len(rels)  # nothing reused from the other version's pixels
    index = json.loads((cache_folder(cfg, root, PREP) / "index.json").read_text())
    assert "0.0.1" in index["versions"].values()  # what made the pixels, for whoever opens the folder


# ---- 7. a user-supplied folds file, checked against cv.n_folds -------------------------------------

def folds_file(tmp_path, corpus, folds=None, ids=None):
    """A folds file over the corpus's rows (id, label, fold), with fold 0/1 alternating unless given."""
    table = pd.read_csv(corpus / "train.csv", dtype=str)
    ids = ids if ids is not None else table["image_id"].tolist()
    labels = dict(zip(table["image_id"], table["label"]))
    folds = folds if folds is not None else [i % 2 for i in range(len(ids))]
    path = tmp_path / "my_folds.csv"
    pd.DataFrame({"id": ids, "label": [labels[i] for i in ids], "fold": folds}).to_csv(path, index=False)
    return path


def test_a_valid_folds_file_is_used_as_given(tmp_path, corpus, capsys):
    path = folds_file(tmp_path, corpus)
    p = Project(tmp_path, corpus, data={"folds_file": str(path)})
    code, err = p.folds(capsys)
    assert code == 0, err
    assert pd.read_csv(p.run / "folds.csv")["fold"].tolist() == [i % 2 for i in range(12)]


@pytest.mark.parametrize("folds,fragments", [
    ([0] * 11 + [2], ["row 13", "fold 2 is outside 0..1", "cv.n_folds=2"]),
    ([0] * 11 + [-1], ["row 13", "fold -1 is outside 0..1"]),
    (["x"] + [0, 1] * 5 + [1], ["row 2", "fold 'x' is not a whole number"]),
    ([0.5] + [0, 1] * 5 + [1], ["row 2", "fold '0.5' is not a whole number"]),
    ([0] * 12, ["no rows in fold 1", "cv.n_folds=2"]),
])
def test_a_folds_file_with_bad_folds_is_one_line(tmp_path, corpus, capsys, folds, fragments):
    path = folds_file(tmp_path, corpus, folds=folds)
    p = Project(tmp_path, corpus, data={"folds_file": str(path)})
    one_line(*p.folds(capsys), str(path), *fragments)
    assert not (p.run / "folds.csv").exists()


def test_a_folds_file_naming_an_id_twice_names_its_rows(tmp_path, corpus, capsys):
    ids = pd.read_csv(corpus / "train.csv", dtype=str)["image_id"].tolist()
    path = folds_file(tmp_path, corpus, ids=ids + [ids[3]], folds=[i % 2 for i in range(13)])
    p = Project(tmp_path, corpus, data={"folds_file": str(path)})
    one_line(*p.folds(capsys), str(path), f"id '{ids[3]}' appears on rows [5, 14]", "once")


def test_whole_number_folds_written_as_floats_are_read(tmp_path, corpus, capsys):
    path = folds_file(tmp_path, corpus, folds=[float(i % 2) for i in range(12)])
    p = Project(tmp_path, corpus, data={"folds_file": str(path)})
    code, err = p.folds(capsys)
    assert code == 0, err
    assert pd.read_csv(p.run / "folds.csv")["fold"].tolist() == [i % 2 for i in range(12)]
