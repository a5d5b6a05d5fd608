"""Train here, submit there (issue 21): timm hub and local-folder model names, `foldvision package` and
`foldvision infer` on a relocated, read-only package with no network and no training-only library."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from conftest import Project, make_corpus


def test_a_local_dir_model_trains_and_predicts_without_its_folder(tmp_path, capsys):
    """model.name=local-dir:<folder> (timm.models.save_for_hf's layout) is accepted, its pretrained weights are
    loaded from the folder, and best.pt holds the architecture and pretrained config, so predict rebuilds the
    model after the folder is gone (as an hf-hub: model is rebuilt without the hub)."""
    folder = tmp_path / "hub-model"
    timm.models.save_for_hf(timm.create_model("test_convnext", pretrained=False), folder)
    corpus = make_corpus(tmp_path / "c", {"0": 8, "1": 6})
    p = Project(tmp_path, corpus, model={"name": f"local-dir:{folder}", "pretrained": True, "img_size": 32})
    code, err = p.folds(capsys)
    assert code == 0, err
    code, err = p._stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 0, err
    best = torch.load(p.run / "fold0" / "best.pt", weights_only=True)
    assert best["timm"]["architecture"] == "test_convnext"
    assert best["timm"]["pretrained_cfg"]["architecture"] == "test_convnext"
    assert "file" not in best["timm"]["pretrained_cfg"]  # no path of this machine travels with the weights
    shutil.rmtree(folder)
    code, err = p._stage(capsys, "predict", str(p.run), "--fold", "0")
    assert code == 0, err
    probs = pd.read_csv(p.run / "fold0" / "test.csv").filter(like="prob_").to_numpy()
    assert probs.shape == (6, 2) and np.allclose(probs.sum(axis=1), 1.0)


def test_a_local_dir_name_without_timms_config_is_one_line(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"0": 8, "1": 6})
    p = Project(tmp_path, corpus, model={"name": f"local-dir:{tmp_path / 'nowhere'}", "img_size": 32})
    code, err = p.folds(capsys)
    if code == 0:
        code, err = p._stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 2 and "Traceback" not in err
    assert "config.json not found" in err and "save_for_hf" in err
