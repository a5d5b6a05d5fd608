import pytest
import timm
import torch
import ttach

from foldvision.learn.tta import tta_compose, tta_forward


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return timm.create_model("test_convnext", num_classes=3).eval()


@torch.no_grad()
def test_identity_equals_plain_inference(model):
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(tta_forward([])(model, x), torch.softmax(model(x), 1), atol=1e-6)


@torch.no_grad()
@pytest.mark.parametrize("views", [["hflip"], ["hflip", "vflip"], ["hflip", "vflip", "rot90"], ["rot90x4"]])
def test_batched_views_equal_ttach_wrapper(model, views):
    x = torch.randn(5, 3, 32, 32)
    wrapper = ttach.ClassificationTTAWrapper(model, tta_compose(views), merge_mode="mean")  # averages logits
    expected = torch.softmax(wrapper(x), dim=1)
    assert torch.allclose(tta_forward(views, merge="logit")(model, x), expected, atol=1e-5)


@torch.no_grad()
def test_probability_merge_averages_softmax_of_each_view(model):
    x = torch.randn(3, 3, 32, 32)
    views = [x, x.flip(3), x.flip(2), x.flip(2).flip(3)]
    expected = torch.stack([torch.softmax(model(v), 1) for v in views]).mean(0)
    assert len(tta_compose(["hflip", "vflip"])) == 4
    assert torch.allclose(tta_forward(["hflip", "vflip"])(model, x), expected, atol=1e-6)
    assert len(tta_compose(["hflip", "vflip", "rot90"])) == 8  # all flips and rotations
