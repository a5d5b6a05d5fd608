"""foldvision.learn.fold: what one fold trains with, and the one place its input lives."""

import dataclasses

import pytest
import torch

from foldvision.learn.fold import build_fold
from foldvision.learn.transforms import Preprocessing
from foldvision.run import Run

from conftest import make_corpus, resolved_run


@pytest.fixture
def parts(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"a": 6, "b": 6})
    cfg, run_dir = resolved_run(tmp_path, corpus, model={"name": "test_convnext", "img_size": 32},
                                train={"device": "cpu", "amp": "off", "batch_size": 4, "num_workers": 0,
                                       "finetune_size": 40, "finetune_epochs": 1, "epochs": 2})
    run = Run(run_dir)
    return build_fold(cfg, run.read_split(), 0, run.fold(0), seed=1)


def test_a_fold_starts_at_the_models_input_and_a_size_change_is_a_new_spec(parts):
    model_input = parts.setup.preprocessing
    assert parts.preprocessing == model_input == Preprocessing(32, model_input.interpolation, model_input.mean,
                                                               model_input.std, 3)
    assert next(iter(parts.val_loader))[0].shape[-1] == 32
    larger = model_input.at(40)
    assert parts.use(larger) and parts.preprocessing is larger
    assert next(iter(parts.train_loader))[0].shape[-1] == 40 and next(iter(parts.val_loader))[0].shape[-1] == 40
    assert model_input.size == 32 and parts.setup.preprocessing is model_input  # the model's own input is a value
    with pytest.raises(dataclasses.FrozenInstanceError):
        parts.preprocessing.size = 48
    assert not parts.use(model_input.at(40))  # the same input: nothing changes
    train_at_32 = parts.loaders_at(model_input)[0]
    assert parts.use(model_input) and parts.train_loader is train_at_32  # each input's loaders are built once


def test_the_fold_records_what_last_pt_must_match(parts):
    assert set(parts.train_config) == {"data", "cv", "model", "augment", "train", "loss"}
    assert parts.model_config["dynamic_img_size"]  # one set of weights at both sizes
    assert parts.val_ids and len(parts.val_ids) == len(parts.y_val) == len(parts.val_labels)
    assert isinstance(parts.optimizer, torch.optim.Optimizer) and parts.total_steps > 0
