import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torchsampler import ImbalancedDatasetSampler

from foldvision.learn.engine import Amp, predict, train_one_epoch


def test_imbalanced_sampler_balances_what_training_sees():
    labels = [0] * 90 + [1] * 10
    dataset = torch.utils.data.TensorDataset(torch.zeros(100, 1), torch.tensor(labels))
    torch.manual_seed(0)
    sampler = ImbalancedDatasetSampler(dataset, labels=labels)
    drawn = [labels[i] for _ in range(20) for i in sampler]  # 20 epochs of 100 draws
    assert np.mean(drawn) == pytest.approx(0.5, abs=0.05)  # 10% positives in the data, half in the draws


@pytest.mark.parametrize("mode", ["bf16", "fp16", "off"])
def test_amp_modes_train_a_step(mode):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    amp = Amp(mode, torch.device("cpu"))
    assert (amp.scaler is not None) == (mode == "fp16")  # fp16 needs loss scaling, bf16 has fp32's range
    loader = [(torch.randn(8, 3, 2, 2), torch.randint(0, 3, (8,))) for _ in range(3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[1].weight.detach().clone()
    stats = train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, None, amp, torch.device("cpu"))
    assert np.isfinite(stats["train_loss"]) and not torch.equal(before, model[1].weight)
    probs = predict(model, loader, amp, torch.device("cpu"))
    assert probs.shape == (24, 3) and probs.sum(1) == pytest.approx(1.0)


def test_gradient_accumulation_steps_every_n_batches():
    model = torch.nn.Linear(4, 2)
    steps = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    original = optimizer.step
    optimizer.step = lambda *a, **k: steps.append(1) or original(*a, **k)
    loader = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(5)]
    train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, None, Amp("off", torch.device("cpu")),
                    torch.device("cpu"), accumulate=2)
    assert len(steps) == 3  # after batches 2, 4 and the last one


def test_progress_is_quiet_when_output_is_not_a_terminal():
    from foldvision.learn.engine import progress_bar

    with progress_bar() as progress:  # pytest captures stderr: like a CI log, no per-batch bar is drawn
        assert progress.disable


def test_train_one_epoch_scores_its_own_batches():
    torch.manual_seed(0)
    loader = [(torch.randn(8, 4), torch.arange(8) % 3) for _ in range(3)]
    model = torch.nn.Linear(4, 3)
    seen = []  # the logits of each batch as the weights were when it ran (they change after every batch)
    model.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    cpu = torch.device("cpu")
    stats = train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, None, Amp("off", cpu), cpu)
    assert {"train_loss", "train_auc", "train_accuracy", "train_macro_f1", "train_log_loss", "lr",
            "train_img_s"} <= set(stats)
    assert list(stats)[0] == "train_loss" and list(stats)[-2:] == ["lr", "train_img_s"]  # history.csv's columns
    y = torch.cat([t for _, t in loader]).numpy()
    probs = torch.softmax(torch.cat(seen), dim=1).double().numpy()
    assert stats["train_accuracy"] == pytest.approx(accuracy_score(y, probs.argmax(1)))
    assert stats["train_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    # with plain cross entropy the objective is the log loss of the batches' own predictions
    assert stats["train_log_loss"] == pytest.approx(stats["train_loss"], rel=1e-5)


def test_build_model_for_is_the_one_model_set_up():
    from foldvision.config import ModelConfig, TrainConfig
    from foldvision.learn.engine import build_model_for, runtime_kwargs

    cfg = TrainConfig(device="cpu", amp="off")
    setup = build_model_for(ModelConfig(name="test_convnext", img_size=32), 3, 3, **runtime_kwargs(cfg))
    assert setup.device.type == "cpu" and setup.amp.mode == "off" and setup.net is setup.model
    assert setup.preprocessing.size == 32 and len(setup.preprocessing.mean) == 3 and setup.preprocessing.channels == 3
    weight = next(p for p in setup.model.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)  # as the loader's batches come
    # a checkpoint's weights and input, as predict rebuilds a fold model
    saved = dataclasses.replace(setup.preprocessing, size=40, interpolation="nearest")
    again = build_model_for(ModelConfig(name="test_convnext", img_size=32), 3, 3, **runtime_kwargs(cfg),
                            pretrained=False, weights=setup.model.state_dict(), preprocessing=saved)
    assert again.preprocessing is saved
    for a, b in zip(setup.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
