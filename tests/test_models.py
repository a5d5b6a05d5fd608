from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from foldvision.config import ModelConfig, load_config
from foldvision.learn.engine import Amp, train_one_epoch
from foldvision.errors import UserError
from foldvision.learn.losses import create_loss
from foldvision.learn.models import create_model, preprocessing
from foldvision.learn.optim import create_optimizer

ROOT = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = ROOT.parent / "shared" / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


@pytest.mark.parametrize("exp,img_size", [("eva02_base", 28), ("convnext_base", 32)])
def test_headline_recipes_train_a_step_at_tiny_size(exp, img_size):
    """The shipped GPU recipes build and take an optimizer step on the CPU at a tiny image size."""
    cfg = load_config(exp, ["model.pretrained=false", f"model.img_size={img_size}"], ROOT / "configs")
    model = create_model(cfg.model, num_classes=3, in_chans=3)
    spec = preprocessing(model, cfg.model, 3)
    assert spec.size == img_size and spec.channels == 3
    if exp.startswith("eva02"):
        assert spec.mean[0] == pytest.approx(0.48145466)  # CLIP statistics, not ImageNet's
    x = torch.randn(4, 3, img_size, img_size)
    y = torch.tensor([0, 1, 2, 1])
    loader = [(x, y)]
    optimizer = create_optimizer(model, cfg.train, total_steps=1)
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_one_epoch(model, loader, create_loss(cfg.loss), optimizer, None, Amp("auto", torch.device("cpu")),
                            torch.device("cpu"))
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_pretrained_file_goes_through_timm_with_a_new_head_and_one_channel(tmp_path):
    source = timm.create_model("test_convnext", num_classes=1000)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = create_model(ModelConfig(name="test_convnext", pretrained_file=str(path)), num_classes=4, in_chans=1)
    state = model.state_dict()
    assert state["head.fc.weight"].shape == (4, source.head.fc.in_features)  # classifier replaced
    stem = source.state_dict()["stem.0.weight"]
    assert state["stem.0.weight"].shape[1] == 1
    assert torch.allclose(state["stem.0.weight"], stem.sum(dim=1, keepdim=True), atol=1e-6)  # RGB summed
    block = "stages.0.blocks.0.conv_dw.weight"
    assert torch.equal(state[block], source.state_dict()[block])


def test_plain_state_dict_file_also_loads(tmp_path):
    source = timm.create_model("test_resnet", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_model(ModelConfig(name="test_resnet", pretrained_file=str(tmp_path / "w.pth")), 2, 3)
    first = next(iter(source.state_dict()))
    assert torch.equal(model.state_dict()[first], source.state_dict()[first])
    assert model.get_classifier().out_features == 2


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="../shared/weights not beside the project")
def test_real_efficientnet_lite0_weights_load_offline():
    model = create_model(ModelConfig(name="tf_efficientnet_lite0", pretrained_file=str(SHARED_WEIGHTS)), 2, 3)
    assert model.classifier.out_features == 2
    assert preprocessing(model, ModelConfig(name="tf_efficientnet_lite0"), 3).mean == (0.5, 0.5, 0.5)


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()},
              tmp_path / "r.safetensors")
    with pytest.raises(UserError, match=r"r.safetensors does not fit test_convnext"):
        create_model(ModelConfig(name="test_convnext", pretrained_file=str(tmp_path / "r.safetensors")), 2, 3)


def test_unknown_names_suggest_close_timm_names():
    with pytest.raises(UserError, match=r"no model 'convnxt_tiny'.*convnext_tiny"):
        create_model(ModelConfig(name="convnxt_tiny"), 2, 3)
    with pytest.raises(UserError, match=r"no weights 'convnext_tiny.fb_in22q'.*convnext_tiny.fb_in22k"):
        create_model(ModelConfig(name="convnext_tiny.fb_in22q"), 2, 3)


def test_pretrained_offline_without_cache_says_what_to_download():
    with pytest.raises(UserError, match=r"could not load timm's weights for test_vit.*download timm/test_vit"):
        create_model(ModelConfig(name="test_vit", pretrained=True), 2, 3)


def test_dynamic_img_size_lets_one_vit_run_at_two_sizes_and_is_dropped_for_cnns():
    """train.finetune_size builds with model.dynamic_img_size: a ViT's position embeddings are resampled per
    input (its weights fit both sizes); a CNN takes any size and is built as without it."""
    vit = create_model(ModelConfig(name="test_vit", img_size=32, dynamic_img_size=True), 3, 3)
    assert vit(torch.randn(1, 3, 32, 32)).shape == vit(torch.randn(1, 3, 48, 48)).shape == (1, 3)
    assert vit.pos_embed.shape == create_model(ModelConfig(name="test_vit", img_size=32), 3, 3).pos_embed.shape
    cnn = create_model(ModelConfig(name="test_convnext", dynamic_img_size=True), 3, 3)
    assert cnn(torch.randn(1, 3, 40, 40)).shape == (1, 3)
