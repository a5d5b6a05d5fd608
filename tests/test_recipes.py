"""The fine-tuning recipes (foldvision.learn.recipes and the keys that switch them on): each one's mechanics against a
value computed by hand, and the make chain with all of them on at a tiny size."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from foldvision.config import AugmentConfig, TrainConfig, load_config
from foldvision.learn.engine import Amp, train_one_epoch
from foldvision.errors import UserError
from foldvision.learn.losses import ComplementCrossEntropy, FocalLoss
from foldvision.learn.optim import create_optimizer, create_scheduler, current_lr, epoch_end, lr_scales, per_step
from foldvision.learn.recipes import (LossMix, WeightEma, average_weights, keep_frozen_norms, log_prior, mixed_loss,
                                      pool_bn_stats, precise_bn, set_trainable, top_k, with_prior)
from foldvision.stages.train import fit_fold

from conftest import ROOT, interrupt_second_validation, make_corpus, resolved_run, write_config

CPU = torch.device("cpu")


# ---- EMA --------------------------------------------------------------------------------------------------

def weights_sequence(n: int) -> list[torch.Tensor]:
    return [torch.full((2, 3), float(k)) + torch.arange(6.0).view(2, 3) * k for k in range(1, n + 1)]


def test_ema_equals_the_closed_form_after_n_steps():
    """Without warm-up: step 1 copies (timm's decay is 0 on the first step), then ema = d·ema + (1−d)·w, so
    after n steps ema = d^(n−1)·w_1 + Σ_{k=2..n} (1−d)·d^(n−k)·w_k."""
    model, d, ws = nn.Linear(3, 2, bias=False), 0.9, weights_sequence(5)
    ema = WeightEma(model, d, warmup=False)
    for w in ws:
        model.weight.data.copy_(w)
        ema.update()
    n = len(ws)
    expected = d ** (n - 1) * ws[0] + sum((1 - d) * d ** (n - k) * ws[k - 1] for k in range(2, n + 1))
    assert ema.step == n
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)


def test_ema_warmup_follows_the_step_count():
    """With warm-up the decay of step s is min(1 − s'^(−2/3), d) with s' = s (timm counts from the step after
    the first): the average leans on recent weights early in a short run."""
    model, d, ws = nn.Linear(3, 2, bias=False), 0.999, weights_sequence(6)
    ema = WeightEma(model, d, warmup=True)
    expected = None
    for step, w in enumerate(ws, start=1):
        model.weight.data.copy_(w)
        ema.update()
        decay = 0.0 if step == 1 else min(1 - (1 + (step - 1)) ** (-2 / 3), d)
        expected = w.clone() if expected is None else decay * expected + (1 - decay) * w
    assert torch.allclose(ema.module.weight, expected, atol=1e-6)


def test_ema_state_continues_exactly_after_a_reload():
    model, ws = nn.Linear(3, 2, bias=False), weights_sequence(6)
    straight = WeightEma(model, 0.99)
    resumed = WeightEma(model, 0.99)
    for i, w in enumerate(ws):
        model.weight.data.copy_(w)
        straight.update()
        if i < 3:
            resumed.update()
        if i == 2:  # what last.pt holds, loaded into a fresh EMA of a fresh process
            saved = resumed.state_dict()
            resumed = WeightEma(nn.Linear(3, 2, bias=False), 0.99)
            resumed.source = model
            resumed.load_state_dict(saved)
        elif i > 2:
            resumed.update()
    assert resumed.step == straight.step == 6
    assert torch.equal(resumed.module.weight, straight.module.weight)


def test_ema_weights_are_validated_kept_and_resumed(tmp_path, multiclass_corpus, monkeypatch):
    """best.pt holds the EMA weights; last.pt holds the EMA and its step; a fold cut after its first epoch
    and resumed ends with the same EMA weights as one that ran through."""
    sections = {"train": {"epochs": 2, "ema_decay": 0.9, "metric": "log_loss", "patience": 5}}
    cfg, run_dir = resolved_run(tmp_path / "a", multiclass_corpus, **sections)
    fit_fold(cfg, run_dir, 0)
    straight = torch.load(run_dir / "fold0" / "best.pt", weights_only=True)

    cfg, run_dir = resolved_run(tmp_path / "b", multiclass_corpus, **sections)
    resume_scoring = interrupt_second_validation(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        fit_fold(cfg, run_dir, 0)
    last = torch.load(run_dir / "fold0" / "last.pt", weights_only=True)
    assert last["ema"]["step"] == 1 and set(last["ema"]["weights"]) == set(last["model"])
    resume_scoring()
    fit_fold(cfg, run_dir, 0)
    resumed = torch.load(run_dir / "fold0" / "best.pt", weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 2
    for key, value in straight["model"].items():
        assert torch.allclose(value.float(), resumed["model"][key].float(), atol=1e-5), key


# ---- Mixup / CutMix as loss mixing ------------------------------------------------------------------------

@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), ComplementCrossEntropy(1.0), FocalLoss(2.0)])
def test_loss_mixing_equals_the_hand_computed_value_on_an_odd_batch(loss_fn):
    np.random.seed(3)
    x = torch.randn(5, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 1, 0])
    mix = LossMix(AugmentConfig(mixup=0.4), num_classes=3)
    mixed = x.clone()
    lam = mix(mixed)
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.flip(0), atol=1e-6)  # each image with its mirror
    assert torch.allclose(mixed[2], x[2], atol=1e-6)  # the odd batch's middle image is mixed with itself
    logits = torch.randn(5, 3)
    by_hand = lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y.flip(0))
    assert torch.allclose(mixed_loss(loss_fn, logits, y, lam), by_hand)
    if isinstance(loss_fn, nn.CrossEntropyLoss):  # and, written out: λ·(−log p_ya) + (1−λ)·(−log p_yb)
        log_p = F.log_softmax(logits, dim=1)
        ce = -(lam * log_p[range(5), y] + (1 - lam) * log_p[range(5), y.flip(0)]).mean()
        assert torch.allclose(mixed_loss(loss_fn, logits, y, lam), ce)


def test_cutmix_pastes_a_box_and_lambda_is_its_complement():
    np.random.seed(0)
    x = torch.arange(4 * 1 * 10 * 10, dtype=torch.float32).view(4, 1, 10, 10)
    mixed = x.clone()
    lam = LossMix(AugmentConfig(cutmix=1.0), num_classes=2)(mixed)
    pasted = (mixed != x)[0, 0]
    assert pasted.any()
    assert lam == pytest.approx(1 - pasted.float().mean().item())  # timm's corrected λ: the kept area
    assert torch.equal(mixed[0][:, pasted], x.flip(0)[0][:, pasted])


def test_mixing_stops_at_mix_off_epoch_and_never_without_probability():
    mix = LossMix(AugmentConfig(mixup=1.0, mix_off_epoch=3), num_classes=2)
    assert mix.active(1) and mix.active(2) and not mix.active(3)
    np.random.seed(0)
    x = torch.randn(4, 3, 4, 4)
    assert LossMix(AugmentConfig(mixup=1.0, mix_prob=0.0), 2)(x.clone()) == 1.0


# ---- learning rates per group -----------------------------------------------------------------------------

def test_layer_decay_groups_get_the_expected_lr_ratios():
    model = timm.create_model("test_vit", num_classes=3)  # 6 blocks: layers 0 (embeddings) .. 7 (head)
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, layer_decay=0.5, head_lr_scale=10.0)
    optimizer = create_optimizer(model, cfg, 10)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params["head.weight"])] == pytest.approx(1e-3 * 10)  # top layer × head multiplier
    assert lr_of[id(params["blocks.5.attn.qkv.weight"])] == pytest.approx(1e-3 * 0.5)  # one layer down
    assert lr_of[id(params["blocks.0.attn.qkv.weight"])] == pytest.approx(1e-3 * 0.5 ** 6)
    assert lr_of[id(params["pos_embed"])] == pytest.approx(1e-3 * 0.5 ** 7)  # the stem: the lowest
    assert current_lr(optimizer) == pytest.approx(1e-3)  # history's lr is train.lr as scheduled
    # weight decay stays pytorch-optimizer's: none on biases
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert wd_of[id(params["head.bias"])] == 0 and wd_of[id(params["head.weight"])] == cfg.weight_decay


def test_a_schedule_keeps_the_groups_ratios():
    model = timm.create_model("test_vit", num_classes=3)
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, layer_decay=0.5, scheduler="cosine", epochs=1)
    optimizer = create_optimizer(model, cfg, 10)
    scheduler = create_scheduler(optimizer, cfg, 10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert {round(g["lr"] / g["lr_scale"], 12) for g in optimizer.param_groups} == {round(current_lr(optimizer), 12)}


def test_ranger21_with_per_group_rates_needs_its_schedule_off(tmp_path):
    for key in ("train.layer_decay=0.75", "train.head_lr_scale=10"):
        with pytest.raises(UserError, match=r"with ranger21: Ranger21's built-in warm-down .*disable_lr_scheduler"):
            load_config("digits", [key], ROOT / "configs")
    cfg = load_config("digits", ["train.layer_decay=0.75", "train.optimizer_args={disable_lr_scheduler: true}",
                                 "train.scheduler=cosine"], ROOT / "configs")
    model = timm.create_model("test_vit", num_classes=3, img_size=32)
    optimizer = create_optimizer(model, cfg.train, 10)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # with its schedule off, Ranger21 uses each group's lr
    assert len({g["lr"] for g in optimizer.param_groups}) == len({g["lr_scale"] for g in optimizer.param_groups}) > 2


def test_no_multiplier_means_the_optimizer_is_built_as_before():
    model = timm.create_model("test_convnext", num_classes=3)
    assert lr_scales(model, TrainConfig()) == {}
    assert len(create_optimizer(model, TrainConfig(), 10).param_groups) == 1  # Ranger21: one group, as shipped


# ---- freezing ---------------------------------------------------------------------------------------------

def one_step(model, optimizer_cfg=None):
    cfg = optimizer_cfg or TrainConfig(optimizer="adamw", lr=1e-2)
    optimizer = create_optimizer(model, cfg, 1)
    loader = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1]))]
    train_one_epoch(model, loader, nn.CrossEntropyLoss(), optimizer, None, Amp("off", CPU), CPU)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_head_only_changes_the_head_and_no_batchnorm_statistics():
    model = timm.create_model("test_resnet", num_classes=3)
    set_trainable(model, "head")
    before = snapshot(model)
    one_step(model)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # running_mean/var of every (frozen) BatchNorm included


def test_last_n_trains_the_top_layers_and_keeps_the_rest():
    model = timm.create_model("test_resnet", num_classes=3)
    set_trainable(model, "last_n", 1)
    before = snapshot(model)
    one_step(model)
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer4", "fc"}  # the head and the one layer below it (its BatchNorms learn too)


def test_frozen_batchnorm_stays_in_eval_mode_after_train():
    model = timm.create_model("test_resnet", num_classes=3)
    set_trainable(model, "head")
    model.train()
    keep_frozen_norms(model)
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    set_trainable(model, "all")
    model.train()
    keep_frozen_norms(model)
    assert all(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_precise_bn_is_the_plain_mean_of_the_batches_statistics_and_skips_frozen_layers():
    bn, frozen = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
    frozen.weight.requires_grad_(False)
    frozen.bias.requires_grad_(False)
    frozen.running_mean.fill_(5.0)
    model = nn.Sequential(bn, frozen)
    batches = [(torch.randn(4, 2, 3, 3) + i, None) for i in range(3)]
    precise_bn(model, batches, batches=2, amp=Amp("off", CPU))
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x, _ in batches[:2]]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-6)
    assert bn.momentum == 0.1 and torch.equal(frozen.running_mean, torch.full((2,), 5.0))


def test_ddp_ranks_pool_their_precise_bn_statistics():
    """Two ranks' statistics (means m1, m2; variances v1, v2, each a plain mean over the same number of batches)
    become m = (m1 + m2)/2 and v = (v1 + v2)/2 on both: the plain means over all the batches, as one process
    computes them (checked through a real all_reduce in test_distributed)."""
    stats = {1: (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0])),
             2: (torch.tensor([3.0, 0.0]), torch.tensor([1.0, 4.0]))}

    def rank(me: int, other: int) -> nn.BatchNorm1d:
        bn = nn.BatchNorm1d(2)
        bn.running_mean.copy_(stats[me][0])
        bn.running_var.copy_(stats[me][1])
        asks = iter(stats[other])  # what all_reduce adds from the other rank
        pool_bn_stats(bn, lambda t: t + next(asks), 2)
        return bn

    for bn in (rank(1, 2), rank(2, 1)):
        assert torch.allclose(bn.running_mean, torch.tensor([2.0, 0.0]))
        assert torch.allclose(bn.running_var, torch.tensor([1.0, 3.0]))


# ---- prior correction, averaging, clipping, schedules -----------------------------------------------------

def test_prior_correction_is_the_log_prior_in_the_classifier_bias():
    prior = log_prior(np.array([0, 0, 0, 1]), 2)
    assert torch.allclose(prior, torch.log(torch.tensor([0.75, 0.25])))
    state = {"fc.bias": torch.zeros(2), "fc.weight": torch.ones(2, 2)}
    shifted = with_prior(state, "fc.bias", prior)
    assert torch.allclose(shifted["fc.bias"], prior) and torch.equal(state["fc.bias"], torch.zeros(2))


def test_prior_correction_shifts_the_oof_probabilities_and_best_pt_alike(tmp_path, multiclass_corpus):
    """The same fold trained with and without the correction: training is the same, the OOF probabilities are
    p·prior renormalised, and best.pt's classifier bias differs by exactly log prior (predict needs nothing)."""
    runs = {}
    for on in (False, True):
        cfg, run_dir = resolved_run(tmp_path / str(on), multiclass_corpus,
                               train={"sampler": "imbalanced", "prior_correction": on})
        fit_fold(cfg, run_dir, 0)
        runs[on] = run_dir
    oof = {on: pd.read_csv(runs[on] / "fold0" / "oof.csv") for on in runs}
    folds = pd.read_csv(runs[True] / "folds.csv")
    counts = folds[folds["fold"] != 0]["label"].value_counts().reindex(["cat", "dog", "owl"]).to_numpy()
    prior = counts / counts.sum()
    raw = oof[False].filter(like="prob_").to_numpy() * prior
    assert oof[True].filter(like="prob_").to_numpy() == pytest.approx(raw / raw.sum(1, keepdims=True), abs=1e-5)
    bias = {on: torch.load(runs[on] / "fold0" / "best.pt", weights_only=True)["model"]["head.fc.bias"] for on in runs}
    assert torch.allclose(bias[True] - bias[False], torch.log(torch.tensor(prior, dtype=torch.float32)), atol=1e-5)


def test_the_averaged_weights_are_the_mean():
    states = [{"w": torch.full((2,), float(k)), "n": torch.tensor(k)} for k in (1, 2, 6)]
    avg = average_weights(states)
    assert torch.allclose(avg["w"], torch.full((2,), 3.0)) and avg["n"] == 1  # counts: the first's


def test_top_k_keeps_the_best_epochs_and_names_the_dropped():
    ranked, dropped = top_k([], 0.8, 1, 2, True)
    ranked, dropped = top_k(ranked, 0.9, 2, 2, True)
    ranked, dropped = top_k(ranked, 0.85, 3, 2, True)
    assert ranked == [(0.9, 2), (0.85, 3)] and dropped == [1]
    ranked, dropped = top_k(ranked, float("nan"), 4, 2, True)
    assert dropped == [] and len(ranked) == 2
    assert top_k([(0.5, 1)], 0.4, 2, 1, False) == ([(0.4, 2)], [1])  # log loss: lower first


@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_clipping_bounds_the_gradient_norm(amp):
    model = nn.Linear(10, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    scaler_amp = Amp("off", CPU)
    if amp == "fp16":  # the scaled gradients must be unscaled before their norm is measured
        scaler_amp.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler_amp.backward((model(torch.randn(8, 10) * 100) ** 2).sum())
    scaler_amp.step(optimizer, clip_grad=0.5)
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert step.norm() == pytest.approx(0.5, rel=1e-4)  # SGD at lr 1: the step is the clipped gradient


def test_step_schedule_decays_every_decay_epochs():
    model = nn.Linear(2, 2)
    cfg = TrainConfig(optimizer="adamw", lr=1.0, scheduler="step", decay_factor=0.5, decay_epochs=2, epochs=6)
    optimizer = create_optimizer(model, cfg, 12)  # 2 steps per epoch
    scheduler = create_scheduler(optimizer, cfg, 12)
    lrs = []
    for _ in range(12):
        lrs.append(current_lr(optimizer))
        optimizer.step()
        scheduler.step()
    assert lrs == [1.0] * 4 + [0.5] * 4 + [0.25] * 4


def test_plateau_decays_after_decay_epochs_without_a_better_metric():
    model = nn.Linear(2, 2)
    cfg = TrainConfig(optimizer="adamw", lr=1.0, scheduler="plateau", decay_factor=0.1, decay_epochs=2)
    optimizer = create_optimizer(model, cfg, 10)
    scheduler = create_scheduler(optimizer, cfg, 10, metric="auc")
    assert not per_step(scheduler)
    lrs = []
    for auc in (0.7, 0.8, 0.8, 0.79, 0.9, float("nan"), 0.85, 0.85):
        epoch_end(scheduler, auc)
        lrs.append(current_lr(optimizer))
    # 0.8 (no better), 0.79 (no better): decay; 0.9 better; nan skipped; 0.85, 0.85: decay again
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01])
    log_loss = create_scheduler(optimizer, cfg, 10, metric="log_loss")
    assert log_loss.mode == "min"


def test_recipe_keys_are_range_checked():
    bad = [("train.ema_decay=1.5", "ema_decay"), ("augment.mix_prob=2", "mix_prob"),
           ("train.layer_decay=0", "layer_decay"), ("train.clip_grad=0", "clip_grad"),
           ("train.head_epochs=8", "head_epochs"), ("train.finetune_epochs=2", "finetune_size"),
           ("train.average_top_k=-1", "average_top_k"), ("train.decay_factor=1", "decay_factor"),
           ("model.train_last_n=0", "train_last_n"),
           ("augment.cutmix=-1", "cutmix")]
    for override, key in bad:
        with pytest.raises(UserError, match=key):
            load_config("digits", [override], ROOT / "configs")


# ---- all of them through make -----------------------------------------------------------------------------

@pytest.mark.slow
def test_make_chain_with_every_recipe_on(tmp_path):
    corpus = make_corpus(tmp_path / "multi", {"cat": 10, "dog": 8, "owl": 6}, sample="label")
    write_config(tmp_path / "configs", "all", corpus,
                 model={"name": "test_convnext", "img_size": 32},
                 train={"epochs": 2, "optimizer": "adamw", "scheduler": "cosine", "warmup_frac": 0.2,
                        "layer_decay": 0.8, "head_lr_scale": 5.0, "ema_decay": 0.99, "head_epochs": 1,
                        "finetune_size": 40, "finetune_epochs": 1, "average_top_k": 2, "clip_grad": 1.0,
                        "precise_bn": 2, "prior_correction": True, "metric": "log_loss"},
                 augment={"mixup": 0.8, "cutmix": 1.0, "mix_off_epoch": 2}, predict={"tta": []})
    args = {"CONFIGS": tmp_path / "configs", "RUNS": tmp_path / "runs", "SUBMISSIONS": tmp_path / "subs",
            "PY": sys.executable, "EXP": "all"}
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "folds", "train", "predict",
                           *(f"{k}={v}" for k, v in args.items())], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    run = tmp_path / "runs" / "all"
    for fold in (0, 1):
        best = torch.load(run / f"fold{fold}" / "best.pt", weights_only=True)
        assert best["model_config"]["dynamic_img_size"] and best["data_config"]["size"] in (32, 40)
        assert not list((run / f"fold{fold}").glob("epoch*.pt")) and not (run / f"fold{fold}" / "last.pt").exists()
    assert "epochs 2-2 at 40px" in done.stdout + done.stderr
    assert (tmp_path / "subs" / "all.csv").is_file() and math.isfinite(
        __import__("json").loads((run / "scores.json").read_text())["oof"]["log_loss"])
