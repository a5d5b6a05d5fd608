import pytest
import torch

from foldvision.config import TrainConfig
from foldvision.errors import UserError
from foldvision.learn.optim import create_optimizer, create_scheduler, current_lr, optimizer_steps


def test_steps_count_gradient_accumulation():
    assert optimizer_steps(10, TrainConfig(epochs=3, accumulate=1)) == 30
    assert optimizer_steps(10, TrainConfig(epochs=3, accumulate=4)) == 9  # ceil(10 / 4) per epoch


def run_steps(optimizer, steps, scheduler=None):
    lrs = []
    model_param = optimizer.param_groups[0]["params"][0]
    for _ in range(steps):
        model_param.grad = torch.randn_like(model_param)
        optimizer.step()
        if scheduler:
            scheduler.step()
        lrs.append(current_lr(optimizer))
    return lrs


def test_ranger21_schedule_warms_up_and_down_to_its_floor():
    """The seed recipe: lr 6e-5 warming up over 22% of a short run, warm-down from 72% to 3e-5."""
    model = torch.nn.Linear(4, 2)
    cfg = TrainConfig(optimizer="ranger21", lr=6e-5, optimizer_args={"warm_down_min_lr": 3e-5})
    total = 100
    optimizer = create_optimizer(model, cfg, total)
    lrs = run_steps(optimizer, total)
    assert lrs[0] < 6e-5 / 10  # warm-up starts low
    assert lrs[30] == pytest.approx(6e-5)  # plateau after 22%
    assert lrs[70] == pytest.approx(6e-5)  # until 72%: step 71 is the last at full lr
    assert lrs[75] < 6e-5
    assert lrs[-1] == pytest.approx(3e-5, rel=0.05)  # warm-down reaches the floor


def test_other_optimizers_by_name_with_cosine():
    model = torch.nn.Linear(4, 2)
    cfg = TrainConfig(optimizer="adamw", lr=1e-3, scheduler="cosine", warmup_frac=0.1)
    optimizer = create_optimizer(model, cfg, 50)
    assert type(optimizer).__name__ == "AdamW"
    lrs = run_steps(optimizer, 50, create_scheduler(optimizer, cfg, 50))
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] < 1e-5


def test_unknown_optimizer_suggests_names():
    with pytest.raises(UserError, match="no 'adamx'.*did you mean"):
        create_optimizer(torch.nn.Linear(2, 2), TrainConfig(optimizer="adamx"), 10)


def test_lookahead_is_off_by_default_and_halves_the_way_back_when_on():
    """train.lookahead: Ranger21's own Lookahead (k=5, α=0.5) pulls the weights halfway back to where they were
    5 steps before; off (the default) they stay where the 5 fast steps took them."""
    torch.manual_seed(0)
    grads = [torch.randn(4, 4) for _ in range(5)]
    final = {}
    for lookahead in (False, True):
        model = torch.nn.Linear(4, 4, bias=False)
        model.weight.data.copy_(torch.eye(4))
        optimizer = create_optimizer(model, TrainConfig(lr=1e-2, lookahead=lookahead), 100)
        for g in grads:
            model.weight.grad = g.clone()
            optimizer.step()
        final[lookahead] = model.weight.detach().clone()
    assert torch.allclose(final[True], 0.5 * (final[False] + torch.eye(4)), atol=1e-6)
    adamw = create_optimizer(torch.nn.Linear(2, 2), TrainConfig(optimizer="adamw", lookahead=True), 10)
    assert type(adamw).__name__ == "Lookahead"  # pytorch-optimizer's wrapper for the others
