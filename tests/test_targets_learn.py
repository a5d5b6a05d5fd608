"""Training and predicting every task kind (issue 20): the losses by hand, the heads' targets and their map back
to the user's units, Mixup on float targets, the sampler and prior correction for tags, the refusals of
single-label-only switches, and a 1-epoch train + predict of a tiny multi-label and a tiny regression run.

The run folders are written directly (`Run.write_split`), so these tests need nothing of the corpus reader.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from PIL import Image

from foldvision.config import LOSS_NAMES, LossConfig, load_config, loss_name, validate
from foldvision.errors import UserError
from foldvision.learn.heads import Head
from foldvision.learn.losses import create_loss
from foldvision.learn.recipes import mixed_loss, rarest_tags, tag_prior_shift
from foldvision.run import Run, load_run_config, save_run_config
from foldvision.targets import TAG_SEP, Task

from conftest import stage, write_config


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


LOGITS = [[0.5, -1.0, 2.0], [-0.3, 1.2, 0.0]]
TAGS = [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


def elementwise(f) -> float:
    """The mean of f(logit, target) over LOGITS x TAGS: every loss here averages its elements."""
    values = [f(z, y) for row_z, row_y in zip(LOGITS, TAGS) for z, y in zip(row_z, row_y)]
    return sum(values) / len(values)


def bce(z: float, y: float) -> float:
    p = sigmoid(z)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def loss_of(name: str, kind: str = "multilabel", logits=LOGITS, targets=TAGS, **cfg) -> float:
    fn = create_loss(LossConfig(name=name, **cfg), kind)
    return fn(torch.tensor(logits), torch.tensor(targets)).item()


# ---- each loss against a hand computation ----------------------------------------------------------------

def test_bce_matches_the_formula_by_hand():
    assert loss_of("bce") == pytest.approx(elementwise(bce), abs=1e-6)


def test_focal_bce_matches_the_formula_by_hand():
    def focal(z, y, gamma=1.5):
        p_t = sigmoid(z) if y else 1 - sigmoid(z)
        return -((1 - p_t) ** gamma) * math.log(p_t)

    assert loss_of("focal_bce", focal_gamma=1.5) == pytest.approx(elementwise(focal), abs=1e-6)


def test_asl_matches_the_paper_by_hand():
    """Ridnik et al. 2021: −y (1−p)^γ+ log p − (1−y) p_m^γ− log(1−p_m), p_m = max(p − m, 0)."""
    def asl(z, y, gamma_neg=3.0, gamma_pos=1.0, clip=0.1):
        p = sigmoid(z)
        if y:
            return -((1 - p) ** gamma_pos) * math.log(p)
        p_m = max(p - clip, 0.0)
        return -(p_m ** gamma_neg) * math.log(1 - p_m)

    got = loss_of("asl", asl_gamma_neg=3.0, asl_gamma_pos=1.0, asl_clip=0.1)
    assert got == pytest.approx(elementwise(asl), abs=1e-6)
    assert got < loss_of("bce")  # easy negatives are discounted


def test_mse_and_huber_on_standardised_values_by_hand():
    out, target = [[0.5], [-2.0], [1.0]], [[0.0], [0.5], [3.0]]
    errors = [0.5, -2.5, -2.0]
    assert loss_of("mse", "regression", out, target) == pytest.approx(sum(e * e for e in errors) / 3)
    huber = [0.5 * e * e if abs(e) <= 1.5 else 1.5 * (abs(e) - 0.75) for e in errors]
    assert loss_of("huber", "regression", out, target, huber_delta=1.5) == pytest.approx(sum(huber) / 3)


def test_scaled_bce_is_bce_on_the_target_scaled_by_the_training_range():
    y_train = np.array([20.0, 40.0, 100.0])
    head = Head.fit(Task("regression", ("score",)), "scaled_bce", y_train)
    targets = head.targets(np.array([20.0, 60.0]))  # (y − 20) / 80
    assert targets[:, 0].tolist() == pytest.approx([0.0, 0.5])
    logits = [[0.3], [-1.0]]
    by_hand = (bce(0.3, 0.0) + bce(-1.0, 0.5)) / 2
    assert loss_of("scaled_bce", "regression", logits, targets.tolist()) == pytest.approx(by_hand, abs=1e-6)
    assert head.values(torch.tensor([[0.0]])).item() == pytest.approx(60.0)  # sigmoid(0) of the range


def test_cumulative_logits_targets_loss_and_expected_grade_by_hand():
    head = Head.fit(Task("ordinal", ("0", "1", "2", "3")), "cumulative", np.array([0, 3]))
    assert head.outputs == 3
    assert head.targets(np.array([0, 2, 3])).tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]  # [grade > k]
    logits = [[2.0, 0.0, -1.0]]
    by_hand = (bce(2.0, 1) + bce(0.0, 1) + bce(-1.0, 0)) / 3  # grade 2
    assert loss_of("cumulative", "ordinal", logits, [[1.0, 1.0, 0.0]]) == pytest.approx(by_hand, abs=1e-6)
    expected = sigmoid(2.0) + sigmoid(0.0) + sigmoid(-1.0)  # E[grade] = Σ_k P(grade > k)
    assert head.values(torch.tensor(logits)).item() == pytest.approx(expected, abs=1e-6)


def test_auto_picks_each_kinds_default_and_single_keeps_cce():
    assert LossConfig().name == "auto"
    assert {k: loss_name(LossConfig(), k) for k in LOSS_NAMES} == {
        "single": "cce", "multilabel": "bce", "regression": "mse", "ordinal": "mse"}
    assert type(create_loss(LossConfig())).__name__ == "ComplementCrossEntropy"


# ---- heads: targets, values, and the way back to the user's units ----------------------------------------

def test_regression_targets_are_standardised_and_mapped_back_to_the_users_units():
    y = np.array([10.0, 30.0, 50.0, 70.0])
    head = Head.fit(Task("regression", ("score",)), "mse", y)
    assert (head.shift, head.scale) == pytest.approx((40.0, np.std(y)))
    targets = head.targets(y)
    assert targets.shape == (4, 1)
    assert targets.mean() == pytest.approx(0.0, abs=1e-6) and targets.std() == pytest.approx(1.0)
    assert head.values(torch.from_numpy(targets)).numpy()[:, 0] == pytest.approx(y, rel=1e-6)  # round trip
    assert head.truth(torch.from_numpy(targets)) == pytest.approx(y, rel=1e-6)
    again = Head.from_dict(head.to_dict(), ["score"])  # what best.pt records
    assert again == head


def test_an_ordinal_grade_trained_as_a_value_comes_back_as_a_grade():
    head = Head.fit(Task("ordinal", ("0", "1", "2")), "mse", np.array([0, 1, 1, 2]))
    assert head.outputs == 1
    assert head.truth(torch.from_numpy(head.targets(np.array([2, 0])))).tolist() == [2, 0]


def test_multilabel_values_are_sigmoids_per_tag_not_normalised():
    head = Head.fit(Task("multilabel", ("a", "b", "c")), "bce", np.array(TAGS))
    probs = head.values(torch.tensor(LOGITS)).numpy()
    assert probs[0].tolist() == pytest.approx([sigmoid(0.5), sigmoid(-1.0), sigmoid(2.0)], abs=1e-6)
    assert not np.allclose(probs.sum(axis=1), 1.0)


def test_a_checkpoint_without_a_head_is_a_single_label_model():
    assert Head.from_dict(None, ["cat", "dog"]) == Head("single", ("cat", "dog"), "softmax")


# ---- Mixup / CutMix on float targets ---------------------------------------------------------------------

def test_mixup_mixes_float_targets_and_keeps_loss_mixing_for_classes():
    out = torch.tensor([[1.0], [2.0], [0.0]])
    values = torch.tensor([[0.0], [1.0], [4.0]])
    lam = 0.7
    mixed_target = lam * values + (1 - lam) * values.flip(0)  # rows mixed with the batch reversed
    by_hand = ((1.0 - (0.7 * 0 + 0.3 * 4)) ** 2 + (2.0 - 1.0) ** 2 + (0.0 - (0.7 * 4 + 0.3 * 0)) ** 2) / 3
    huber = create_loss(LossConfig(name="huber", huber_delta=100.0), "regression")  # quadratic here: 0.5·MSE
    assert mixed_loss(huber, out, values, lam).item() == pytest.approx(0.5 * by_hand)
    assert torch.allclose(mixed_target[:, 0], torch.tensor([1.2, 1.0, 2.8]))
    tags = torch.tensor(TAGS)
    bce_fn = create_loss(LossConfig(name="bce"), "multilabel")
    expected = bce_fn(torch.tensor(LOGITS), lam * tags + (1 - lam) * tags.flip(0))
    assert mixed_loss(bce_fn, torch.tensor(LOGITS), tags, lam).item() == pytest.approx(expected.item())


# ---- the imbalanced sampler and prior correction for tags ------------------------------------------------

def test_each_row_is_balanced_by_its_rarest_tag_and_the_prior_shift_undoes_the_draw():
    y = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=float)
    balance = rarest_tags(y)  # tag counts 4, 1, 1: a row's rarest tag; 3 for no tag
    assert balance.tolist() == [0, 0, 0, 1, 2, 3]
    shift = tag_prior_shift(y, balance).numpy()
    # groups 0 (3 rows), 1, 2, 3 (1 row each) are drawn alike: row weights 1/3, 1/3, 1/3, 1, 1, 1 (sum 4)
    drawn = np.array([(1 + 1) / 4, 1 / 4, 1 / 4])
    true = np.array([4 / 6, 1 / 6, 1 / 6])
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    assert shift == pytest.approx(logit(true) - logit(drawn), abs=1e-6)


# ---- tiny run folders of each kind -----------------------------------------------------------------------

def tiny_corpus(root: Path, n: int = 24, n_test: int = 4, seed: int = 0) -> tuple[Path, np.ndarray]:
    """train/ and test/ images whose brightness is a hidden value in 0..1 (no sample submission)."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0, 1, n + n_test)
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    for i, value in enumerate(level):
        folder, name = ("train", f"im{i:03d}") if i < n else ("test", f"t{i - n:03d}")
        pixels = np.clip(value * 255 + rng.normal(0, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / folder / f"{name}.png")
    pd.DataFrame({"image_id": [f"im{i:03d}" for i in range(n)], "label": "x"}).to_csv(root / "train.csv", index=False)
    return root, level[:n]


def tiny_run(tmp_path: Path, task: Task, labels: list[str], corpus: Path, name: str = "exp", **sections) -> Path:
    """runs/<name>: config.yaml (TINY + `sections`) and a 2-fold split of `labels` over the corpus's train/."""
    cfg = load_config(str(write_config(tmp_path / "configs", name, corpus, **sections)))
    run_dir = tmp_path / "runs" / name
    save_run_config(cfg, run_dir)
    n = len(labels)
    table = pl.DataFrame({"id": [f"im{i:03d}" for i in range(n)], "path": [f"train/im{i:03d}.png" for i in range(n)],
                          "label": labels, "fold": [i % 2 for i in range(n)]})
    Run(run_dir).write_split(table, task)
    return run_dir


def train_and_predict(capsys, run_dir: Path) -> str:
    code, err = stage(capsys, "train", str(run_dir), "--fold", "0", "1")
    assert code == 0, err
    for fold in ("0", "1"):
        code, more = stage(capsys, "predict", str(run_dir), "--fold", fold)
        assert code == 0, more
        err += more
    return err


def multilabel_labels(level: np.ndarray) -> tuple[Task, list[str]]:
    task = Task("multilabel", ("dark", "light", "mid"))
    tags = [[t for t, on in (("dark", v < 0.4), ("light", v > 0.6), ("mid", 0.3 < v < 0.7)) if on] for v in level]
    return task, [task.join(t) for t in tags]


def test_a_multilabel_run_trains_and_predicts_a_sigmoid_per_tag(tmp_path, capsys):
    corpus, level = tiny_corpus(tmp_path / "tags")
    task, labels = multilabel_labels(level)
    run_dir = tiny_run(tmp_path, task, labels, corpus, augment={"mixup": 0.4})
    err = train_and_predict(capsys, run_dir)
    run = Run(run_dir)
    best = torch.load(run_dir / "fold0" / "best.pt", weights_only=True)
    assert best["head"]["kind"] == "multilabel" and best["head"]["link"] == "sigmoid"
    oof = run.read_fold_oofs(run.read_split())
    assert oof.kind == "multilabel" and oof.probs.shape == (24, 3)
    assert ((oof.probs > 0) & (oof.probs < 1)).all()
    assert not np.allclose(oof.probs.sum(axis=1), 1.0)  # sigmoids, never normalised per row
    assert oof.labels == labels and TAG_SEP in "".join(labels)
    frame = pd.read_csv(run_dir / "fold0" / "oof.csv", keep_default_na=False)
    assert list(frame.columns) == ["id", "fold", "label", "prob_dark", "prob_light", "prob_mid"]
    test = run.read_test(task, 1)
    assert test.kind == "multilabel" and test.probs.shape == (4, 3) and ((test.probs > 0) & (test.probs < 1)).all()
    history = pd.read_csv(run_dir / "fold0" / "history.csv")
    assert {"train_loss", "val_loss", "val_map", "train_map"} <= set(history.columns)
    assert "fold 0 epoch 1/1" in err


def test_a_regression_run_predicts_in_the_users_units(tmp_path, capsys):
    """Scores 100..200 (brightness): a 1-epoch model predicts near the training mean, in the user's units,
    with test_resnet's BatchNorm re-estimated (precise-BN) before validation and TTA averaging values."""
    corpus, level = tiny_corpus(tmp_path / "scores")
    scores = np.round(100 + 100 * level, 3)
    run_dir = tiny_run(tmp_path, Task("regression", ("score",)), [f"{s:.3f}" for s in scores], corpus,
                       model={"name": "test_resnet", "img_size": 32}, augment={"mixup": 0.4},
                       predict={"decision": "argmax"})
    err = train_and_predict(capsys, run_dir)
    assert "score standardised: mean" in err and "its training rows are shuffled" in err
    run = Run(run_dir)
    oof = run.read_fold_oofs(run.read_split())
    assert oof.kind == "regression" and oof.probs.shape == (24, 1)
    assert oof.y == pytest.approx(scores, abs=1e-3)
    assert 50 < oof.probs.mean() < 250  # in the user's units (standardised outputs would sit near 0)
    frame = pd.read_csv(run_dir / "fold1" / "oof.csv")
    assert list(frame.columns) == ["id", "fold", "label", "pred"]
    test = pd.read_csv(run_dir / "fold0" / "test.csv")
    assert list(test.columns) == ["id", "pred"] and (test["pred"].between(50, 250)).all()
    best = torch.load(run_dir / "fold0" / "best.pt", weights_only=True)
    fold1 = np.arange(24) % 2 == 1  # fold 0's model trains on fold 1
    assert best["head"]["shift"] == pytest.approx(scores[fold1].mean(), rel=1e-6)
    from foldvision.stages.predict import fold_mean

    mean = fold_mean(run, [0, 1], run.read_task(), test["id"].tolist(), run_dir)
    assert mean.shape == (4, 1)
    # the inference package carries the head: `foldvision infer` maps the outputs as predict did
    from foldvision.learn.package import from_run
    from foldvision.stages.predict import fold_test_probs

    fold = from_run(run_dir).models[0]
    again = fold_test_probs(fold.checkpoint(["score"]), fold.weights, corpus / "test",
                            [f"{i}.png" for i in test["id"]], tta=["hflip", "vflip", "rot90"], batch_size=16,
                            runtime={"device": "cpu", "amp": "auto", "channels_last": True},
                            loader={"train": False, "num_workers": 0})
    assert again[:, 0] == pytest.approx(test["pred"].to_numpy(), rel=1e-4)


def test_a_regression_run_learns_better_than_the_training_mean(tmp_path):
    """The issue's textbook MSE loop did worse than the training mean; the defaults (standardised targets,
    precise-BN) must not. 96 images whose score is their brightness, test_resnet, 5 epochs: OOF RMSE measured
    19.8 against 30.1 for each fold's training mean (without standardisation: 157)."""
    from foldvision.stages.train import fit_fold
    corpus, level = tiny_corpus(tmp_path / "scores", n=96)
    scores = np.round(100 + 100 * level, 3)
    run_dir = tiny_run(tmp_path, Task("regression", ("score",)), [f"{s:.3f}" for s in scores], corpus,
                       model={"name": "test_resnet", "img_size": 32}, augment={"train": []}, predict={"tta": []},
                       train={"epochs": 5, "batch_size": 16, "lr": 1e-2, "patience": 10, "amp": "off"})
    cfg = load_run_config(run_dir)
    for fold in (0, 1):
        fit_fold(cfg, run_dir, fold)
    run = Run(run_dir)
    oof = run.read_fold_oofs(run.read_split())
    rmse = math.sqrt(((oof.probs[:, 0] - oof.y) ** 2).mean())
    mean_of_the_other_fold = np.where(oof.fold == 0, oof.y[oof.fold == 1].mean(), oof.y[oof.fold == 0].mean())
    baseline = math.sqrt(((mean_of_the_other_fold - oof.y) ** 2).mean())
    assert rmse < 0.8 * baseline, (rmse, baseline)


def test_an_ordinal_run_with_cumulative_logits_predicts_the_expected_grade(tmp_path, capsys):
    corpus, level = tiny_corpus(tmp_path / "grades")
    grades = [str(int(v * 3.99)) for v in level]
    run_dir = tiny_run(tmp_path, Task("ordinal", ("0", "1", "2", "3")), grades, corpus, loss={"name": "cumulative"})
    train_and_predict(capsys, run_dir)
    best = torch.load(run_dir / "fold1" / "best.pt", weights_only=True)
    assert best["head"]["link"] == "cumulative" and best["model"]["head.fc.weight"].shape[0] == 3  # K − 1 logits
    run = Run(run_dir)
    oof = run.read_fold_oofs(run.read_split())
    assert oof.kind == "ordinal" and oof.y.tolist() == [int(g) for g in grades]
    assert oof.probs.shape == (24, 1) and ((oof.probs >= 0) & (oof.probs <= 3)).all()
    assert list(pd.read_csv(run_dir / "fold1" / "test.csv").columns) == ["id", "pred"]


# ---- refusals of single-label-only switches --------------------------------------------------------------

def with_task(cfg, task: str):
    """The config with data.task set."""
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, task=task))


@pytest.mark.parametrize("task,name,allowed", [
    ("multilabel", "cce", "bce, focal_bce, asl"),
    ("regression", "label_smoothing", "mse, huber, scaled_bce"),
    ("single", "asl", "cce, ce, label_smoothing, focal"),
    ("regression", "cumulative", "mse, huber, scaled_bce"),
])
def test_a_loss_of_another_task_kind_is_refused_when_the_config_is_resolved(tmp_path, task, name, allowed):
    cfg = load_config(str(write_config(tmp_path / "configs", "exp", tmp_path, loss={"name": name})))
    with pytest.raises(UserError) as e:
        validate(with_task(cfg, task))
    message = str(e.value)
    assert "\n" not in message and f"loss.name={name}" in message and allowed in message
    assert message.startswith(f"data.task={task}: ")
    validate(with_task(dataclasses.replace(cfg, loss=LossConfig()), task))  # auto serves every kind


def test_a_single_label_loss_on_an_auto_read_multilabel_split_is_refused_by_the_train_stage(tmp_path, capsys):
    corpus, level = tiny_corpus(tmp_path / "tags")
    task, labels = multilabel_labels(level)
    run_dir = tiny_run(tmp_path, task, labels, corpus, loss={"name": "focal"})
    code, err = stage(capsys, "train", str(run_dir), "--fold", "0")
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "loss.name=focal is for single-label targets; a multilabel task trains with bce" in lines[0]
    assert not (run_dir / "fold0" / "best.pt").exists()


def test_data_exclude_relabels_and_drops_multilabel_training_rows_only(tmp_path, capsys):
    """Fold 0 trains on the odd rows: im001 trains with the tags it was not given, im003 not at all; every
    even row is still validated. The line counts im001 once, though three of its tags changed."""
    from foldvision.learn.fold import build_fold

    corpus, level = tiny_corpus(tmp_path / "tags")
    task, labels = multilabel_labels(level)
    given = set(labels[1].split(TAG_SEP)) - {""}
    new = [t for t in task.names if t not in given]
    exclude = tmp_path / "exclude.csv"
    exclude.write_text(f"id,new_label\nim001,{TAG_SEP.join(reversed(new))}\nim003,\n", encoding="utf-8")
    run_dir = tiny_run(tmp_path, task, labels, corpus, data={"exclude": str(exclude)})
    run = Run(run_dir)
    split = run.read_split()
    capsys.readouterr()
    parts = build_fold(load_run_config(run_dir), split, 0, run.fold(0), seed=0)
    printed = capsys.readouterr()
    assert f"fold 0: data.exclude drops 1 training images and relabels 1 ({exclude})" in printed.out + printed.err
    train = dict(zip(parts.train_loader.dataset.paths, parts.train_loader.dataset.targets.tolist()))
    assert set(train) == {f"train/im{i:03d}.png" for i in range(1, 24, 2)} - {"train/im003.png"}
    assert train["train/im001.png"] == [float(t in new) for t in task.names]
    assert train["train/im005.png"] == task.encode([labels[5]])[0].tolist()
    assert parts.val_ids == [f"im{i:03d}" for i in range(0, 24, 2)]
