import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score

import foldvision.stages.train as train_module
from foldvision.stages.train import fit_fold

from conftest import LEARN, interrupt_second_validation, resolved_run


def test_fold_writes_checkpoint_oof_and_history(tmp_path, multiclass_corpus):
    cfg, run_dir = resolved_run(tmp_path, multiclass_corpus, train={"epochs": 2, "sampler": "imbalanced"})
    result = fit_fold(cfg, run_dir, 1)
    fold_dir = run_dir / "fold1"
    best = torch.load(fold_dir / "best.pt", weights_only=True)  # nothing but tensors and plain values
    assert best["classes"] == ["cat", "dog", "owl"] and best["epoch"] == result["epoch"]
    oof = pd.read_csv(fold_dir / "oof.csv")
    folds = pd.read_csv(run_dir / "folds.csv")
    assert list(oof.columns) == ["id", "fold", "label", "prob_cat", "prob_dog", "prob_owl"]
    assert sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == 1, "id"])
    assert oof.filter(like="prob_").sum(axis=1).to_numpy() == pytest.approx(1.0)
    history = pd.read_csv(fold_dir / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert {"train_loss", "val_loss", "val_auc", "lr", "train_img_s"} <= set(history.columns)
    assert not (fold_dir / "last.pt").exists()


def test_an_interrupted_fold_resumes_after_its_last_epoch(tmp_path, binary_corpus, monkeypatch):
    cfg, run_dir = resolved_run(tmp_path, binary_corpus, train={"epochs": 2})
    resume_scoring = interrupt_second_validation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit_fold(cfg, run_dir, 0)
    assert (run_dir / "fold0" / "last.pt").is_file() and not (run_dir / "fold0" / "oof.csv").exists()
    resume_scoring()
    trained = []
    monkeypatch.setattr(train_module, "train_one_epoch",
                        lambda *a, **k: trained.append(1) or real_train_one_epoch(*a, **k))
    fit_fold(cfg, run_dir, 0)
    assert len(trained) == 1  # only the epoch that was cut off
    assert pd.read_csv(run_dir / "fold0" / "history.csv")["epoch"].tolist() == [1, 2]
    assert (run_dir / "fold0" / "oof.csv").is_file() and not (run_dir / "fold0" / "last.pt").exists()


real_train_one_epoch = train_module.train_one_epoch


def test_early_stopping_after_patience(tmp_path, binary_corpus, monkeypatch):
    cfg, run_dir = resolved_run(tmp_path, binary_corpus, train={"epochs": 5, "patience": 1, "metric": "log_loss"})
    losses = iter([0.5, 0.6, 0.7, 0.8, 0.9])  # best at epoch 1, then never better

    real_score = train_module.score
    monkeypatch.setattr(train_module, "score",
                        lambda y, p, *a: {**real_score(y, p, *a), "log_loss": next(losses)})
    result = fit_fold(cfg, run_dir, 0)
    assert result["epoch"] == 1
    assert len(pd.read_csv(run_dir / "fold0" / "history.csv")) == 2  # epoch 2 was the patience


def test_training_leaves_the_loaded_config_as_it_was(tmp_path, binary_corpus):
    from foldvision.config import to_dict

    cfg, run_dir = resolved_run(tmp_path, binary_corpus)
    before = to_dict(cfg)
    fit_fold(cfg, run_dir, 0)
    assert to_dict(cfg) == before


def test_an_fp16_fold_keeps_its_gradient_scaler_in_last_pt_and_resumes_with_it(tmp_path, binary_corpus,
                                                                                monkeypatch):
    """train.amp=fp16 runs on the CPU too (torch.amp.GradScaler("cpu")): the scaler's state (scale, growth
    tracker) is part of what a cut fold resumes from, or the resumed epochs would restart the loss scale."""
    cfg, run_dir = resolved_run(tmp_path, binary_corpus, train={"epochs": 2, "amp": "fp16", "device": "cpu"})
    resume_scoring = interrupt_second_validation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit_fold(cfg, run_dir, 0)
    saved = torch.load(run_dir / "fold0" / "last.pt", weights_only=True)["scaler"]
    fresh = torch.amp.GradScaler("cpu").state_dict()
    assert saved is not None and saved.keys() == fresh.keys()
    assert saved != fresh, saved  # epoch 1's steps moved the growth tracker (or the scale): not a new scaler's
    resume_scoring()
    at_start = []  # the scaler's state as the resumed epoch begins
    monkeypatch.setattr(train_module, "train_one_epoch",
                        lambda *a, **k: at_start.append(a[5].scaler.state_dict()) or real_train_one_epoch(*a, **k))
    fit_fold(cfg, run_dir, 0)
    assert at_start == [saved]
    assert pd.read_csv(run_dir / "fold0" / "history.csv")["epoch"].tolist() == [1, 2]


def test_a_fold_learns_real_digits_well_above_chance(tmp_path, learnable_digits):
    """The equivalence tests (cache vs decode, DDP vs one process, re-prediction vs OOF) would all pass a bug
    that broke learning on both sides; this one needs the model to learn. 200 of scikit-learn's digits, test_resnet
    at 32 px, 3 epochs: OOF accuracy of both folds measured 0.756 (chance: 0.1)."""
    cfg, run_dir = resolved_run(tmp_path, learnable_digits, **LEARN)
    for fold in (0, 1):
        fit_fold(cfg, run_dir, fold)
    oof = pd.concat([pd.read_csv(run_dir / f"fold{k}" / "oof.csv", dtype={"label": str}) for k in (0, 1)])
    classes = [c.removeprefix("prob_") for c in oof.columns if c.startswith("prob_")]
    predicted = [classes[i] for i in oof.filter(like="prob_").to_numpy().argmax(1)]
    assert len(oof) == 160 and accuracy_score(oof["label"], predicted) > 0.5


# every graph inductor compiles costs seconds of C++ on 2 cores: one batch size (10 rows a fold, one batch) and no
# precise-BN pass (a third graph, BatchNorm in train mode without grad) keep it to the training and the eval graph
LEAN_COMPILE = {"compile": True, "amp": "off", "device": "cpu", "precise_bn": 0, "batch_size": 10}


@pytest.mark.slow  # inductor writes and compiles C++ kernels: ~30 s with its cache warm, minutes cold on 2 cores
def test_a_compiled_fold_trains_and_predicts_like_the_eager_one(tmp_path, binary_corpus, monkeypatch):
    """train.compile=true (torch.compile, inductor; on the CPU it needs a C++ compiler): the fold trains through
    the compiled twin, best.pt holds the plain model's keys (predict loads them uncompiled), and the OOF rows
    are the eager fold's to float tolerance."""
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or real_compile(model, **kw))
    cfg, run_dir = resolved_run(tmp_path, binary_corpus, train=LEAN_COMPILE)
    fit_fold(cfg, run_dir, 0)
    assert len(compiled) == 1
    best = torch.load(run_dir / "fold0" / "best.pt", weights_only=True)
    assert not [k for k in best["model"] if k.startswith("_orig_mod")]
    eager_cfg, eager_dir = resolved_run(tmp_path / "eager", binary_corpus, train={**LEAN_COMPILE, "compile": False})
    fit_fold(eager_cfg, eager_dir, 0)
    assert len(compiled) == 1
    oof, eager = (pd.read_csv(d / "fold0" / "oof.csv").set_index("id") for d in (run_dir, eager_dir))
    assert oof.index.equals(eager.index)
    np.testing.assert_allclose(oof.filter(like="prob_").to_numpy(), eager.filter(like="prob_").to_numpy(),
                               atol=1e-4)
