"""Shared fixtures: tiny corpora the tests make, and a tiny experiment config.

Nothing here reaches a network: W&B runs offline, the HF hub is offline, albumentations skips its update check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from foldvision import cli

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmark harness lives beside the package

# The smallest settings that still exercise every part: a tiny timm CNN, tiny images, one epoch, no workers.
TINY = {
    "model": {"name": "test_convnext", "img_size": 32},
    "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "lr": 1.0e-3},
    "predict": {"batch_size": 16},
    "tracking": "none",
}


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_config(config_dir: Path, name: str, data_dir: Path, **sections) -> Path:
    """configs/<name>.yaml: TINY + the data folder (its image cache beside the configs) + any section overrides."""
    config_dir.mkdir(parents=True, exist_ok=True)
    data = {"dir": str(data_dir), "cache_dir": str(config_dir.parent / "cache"),
            "folds_dir": str(config_dir.parent / "folds")}
    body = deep_update(deep_update(TINY, {"data": data, "cv": {"n_folds": 2}}), sections)
    path = config_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def resolved_run(tmp_path: Path, corpus: Path, **sections):
    """configs/exp.yaml on `corpus`, resolved into runs/exp with its folds made: (config, run folder)."""
    from foldvision.config import load_config
    from foldvision.run import save_run_config
    from foldvision.stages.folds import run as make_folds

    cfg = load_config(str(write_config(tmp_path / "configs", "exp", corpus, **sections)))
    run_dir = tmp_path / "runs" / "exp"
    save_run_config(cfg, run_dir)
    make_folds(run_dir)
    return cfg, run_dir


def interrupt_second_validation(monkeypatch):
    """A Ctrl-C during a fold's second validation (after epoch 1's last.pt is written): the train stage's
    `score` raises KeyboardInterrupt on its second call. Returns what puts the real `score` back."""
    import foldvision.stages.train as train_module

    real_score, calls = train_module.score, []

    def score(y, probs, kind="single", num_grades=None):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_score(y, probs, kind, num_grades)

    monkeypatch.setattr(train_module, "score", score)
    return lambda: monkeypatch.setattr(train_module, "score", real_score)


def make_corpus(root: Path, counts: dict[str, int], n_test: int = 6, size: int = 20, ext: str = ".png",
                sample: str = "probability", seed: int = 0) -> Path:
    """A labelled corpus whose classes differ in colour, so a model can learn them in a few steps.

    sample: "probability" (one column, binary), "classes" (a column per class) or "label" (class names).
    """
    rng = np.random.default_rng(seed)
    names = sorted(counts)
    colours = {c: rng.integers(0, 256, 3) for c in names}
    rows = []
    for split, per_class in (("train", counts), ("test", {c: 0 for c in names})):
        (root / split).mkdir(parents=True, exist_ok=True)
    for c in names:
        for i in range(counts[c]):
            image_id = f"{c}_{i:03d}"
            pixels = np.clip(colours[c] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "train" / f"{image_id}{ext}")
            rows.append((image_id, c))
    pd.DataFrame(rows, columns=["image_id", "label"]).to_csv(root / "train.csv", index=False)
    test_ids = [f"t{i:03d}" for i in range(n_test)]
    for i, image_id in enumerate(test_ids):
        c = names[i % len(names)]
        pixels = np.clip(colours[c] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "test" / f"{image_id}{ext}")
    pd.DataFrame({"image_id": test_ids, "label": [names[i % len(names)] for i in range(n_test)]}).to_csv(
        root / "test_labels.csv", index=False)
    if sample == "probability":
        frame = pd.DataFrame({"image_id": test_ids, "target": 0.5})
    elif sample == "classes":
        frame = pd.DataFrame({"image_id": test_ids, **{c: 0.0 for c in names}})
    else:
        frame = pd.DataFrame({"image_id": test_ids, "label": names[0]})
    frame.to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture
def binary_corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "binary", {"0": 12, "1": 8})


@pytest.fixture
def multiclass_corpus(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "multi", {"cat": 8, "dog": 6, "owl": 6}, sample="label")


@pytest.fixture(scope="session")
def digits_corpus(tmp_path_factory) -> Path:
    """A few dozen real handwritten digits (scikit-learn's), in the demo corpus layout."""
    from foldvision.commands.demo_data import build

    out = tmp_path_factory.mktemp("digits") / "digits"
    build(out, limit=60)
    return out


@pytest.fixture(scope="session")
def learnable_digits(tmp_path_factory) -> Path:
    """200 real handwritten digits (160 train, 40 test): enough for a tiny model to learn them in a few
    seconds (LEARN: 3 epochs of test_resnet at 32 px, OOF accuracy ~0.75 where chance is 0.1)."""
    from foldvision.commands.demo_data import build

    out = tmp_path_factory.mktemp("learnable") / "digits"
    build(out, limit=200)
    return out


# The digits config (configs/digits.yaml) shrunk: a tiny timm CNN with BatchNorm (so train.precise_bn runs),
# grayscale, no flips (a mirrored 2 is not a 2), a few epochs at a high lr.
LEARN = {"model": {"name": "test_resnet", "img_size": 32}, "data": {"channels": 1}, "augment": {"train": []},
         "predict": {"tta": []},
         "train": {"epochs": 3, "batch_size": 16, "lr": 1.0e-2, "metric": "accuracy", "patience": 10, "amp": "off"}}


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m foldvision <args>` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "foldvision", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def stage(capsys, *argv: str, stdout: bool = False) -> tuple[int, str]:
    """Run `foldvision <argv>`; return (exit status, stderr, or stdout + stderr)."""
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, (captured.out if stdout else "") + captured.err


class Project:
    """A corpus plus an experiment on it, in a temporary folder; each method runs the stages up to its own."""

    def __init__(self, tmp_path, corpus, **sections):
        self.tmp, self.corpus = tmp_path, corpus
        self.configs = tmp_path / "configs"
        self.run = tmp_path / "runs" / "exp"
        self.log = ""  # stderr of every stage run so far
        write_config(self.configs, "exp", corpus, **sections)

    def _stage(self, capsys, *argv):
        code, err = stage(capsys, *argv)
        self.log += err
        return code, err

    def config(self, capsys, *overrides):
        return self._stage(capsys, "config", "exp", *overrides, "--configs", str(self.configs),
                           "--run-dir", str(self.run))

    def check(self, capsys, *overrides):
        """`foldvision check`: resolves the config in memory, writes nothing."""
        return stage(capsys, "check", "exp", *overrides, "--configs", str(self.configs), stdout=True)

    def folds(self, capsys, *overrides):
        code, err = self.config(capsys, *overrides)
        assert code == 0, err
        return self._stage(capsys, "folds", str(self.run))

    def train(self, capsys, *overrides):
        code, err = self.folds(capsys, *overrides)
        assert code == 0, err
        return self._stage(capsys, "train", str(self.run), "--fold", "0", "1")

    def predict(self, capsys, *overrides):
        code, err = self.train(capsys, *overrides)
        assert code == 0, err
        for fold in ("0", "1"):  # what make does: each fold's test.csv, then their ensemble
            code, err = self._stage(capsys, "predict", str(self.run), "--fold", fold)
            if code != 0:
                return code, err
        return self._stage(capsys, "predict", str(self.run), "--out", str(self.submission))

    @property
    def submission(self):
        return self.tmp / "subs" / "exp.csv"

    def nothing_written(self, after: str) -> None:
        """No output of `after` or later stages looks finished."""
        later = {"folds": ["folds.csv", "classes.json", "fold0/oof.csv", "fold0/best.pt"],
                 "train": ["fold0/oof.csv", "fold1/oof.csv", "fold0/best.pt", "oof.csv"],
                 "predict": ["test.csv"]}[after]
        for name in later:
            assert not (self.run / name).exists(), name
        if after == "folds":
            assert not list(self.corpus.glob("folds*.csv"))
        assert not self.submission.exists()
        assert not list(self.run.rglob("*.tmp")) if self.run.exists() else True
