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

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"

ROOT = Path(__file__).resolve().parents[1]

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
    """configs/<name>.yaml: TINY + the data folder + any section overrides."""
    config_dir.mkdir(parents=True, exist_ok=True)
    body = deep_update(deep_update(TINY, {"data": {"dir": str(data_dir)}, "cv": {"n_folds": 2}}), sections)
    path = config_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


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
    from foldvision.demo import build

    out = tmp_path_factory.mktemp("digits") / "digits"
    build(out, limit=60)
    return out


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m foldvision <args>` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "foldvision", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
