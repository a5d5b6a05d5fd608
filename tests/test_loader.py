"""Loaders: which augmentations move to the device, what they draw there, and batches normalised on the device
exactly as albumentations' Normalize would."""

import dataclasses

import albumentations as A
import numpy as np
import pytest
import torch

from foldvision.config import Config
from foldvision.learn.loader import BatchAugment, create_loader, loader_kwargs, split_augment
from foldvision.learn.transforms import Preprocessing

from conftest import make_corpus

FLIPS = [{"HorizontalFlip": {"p": 0.5}}, {"VerticalFlip": {"p": 0.5}}, {"RandomRotate90": {"p": 0.5}}]


def config(**sections: dict) -> Config:
    """The defaults with some keys of some sections changed (a Config is frozen: a new one)."""
    cfg = Config()
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **keys)
                                       for name, keys in sections.items()})


def test_only_trailing_pixel_permutations_move_to_the_device():
    assert split_augment(FLIPS, on_device=True) == ([], FLIPS)
    assert split_augment(FLIPS, on_device=False) == (FLIPS, [])
    blur = {"GaussianBlur": {"p": 0.5}}
    assert split_augment(FLIPS[:1] + [blur] + FLIPS[1:], True) == (FLIPS[:1] + [blur], FLIPS[1:])
    crop = {"RandomResizedCrop": {"size": [8, 8]}}
    assert split_augment(FLIPS + [crop], True) == (FLIPS + [crop], [])  # a crop after the flips: all on the CPU
    assert split_augment([{"HorizontalFlip": None}], True) == ([], [{"HorizontalFlip": None}])


def distinct(batch: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in batch}


def symmetries(image: torch.Tensor) -> set[bytes]:
    """The 8 flips/rotations of one (C, H, W) image."""
    out = set()
    for t in (image, image.transpose(1, 2)):
        out |= {t.rot90(k, dims=(1, 2)).numpy().tobytes() for k in range(4)}
    return out


@pytest.mark.parametrize("name,expected", [("HorizontalFlip", lambda x: x.flip(3)),
                                           ("VerticalFlip", lambda x: x.flip(2)),
                                           ("Transpose", lambda x: x.transpose(2, 3))])
def test_flips_with_p_one_and_zero(name, expected):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(BatchAugment([{name: {"p": 1.0}}])(x.clone()), expected(x))
    assert torch.equal(BatchAugment([{name: {"p": 0.0}}])(x.clone()), x)


@pytest.mark.parametrize("name,count", [("RandomRotate90", 4), ("D4", 8)])
def test_rotations_draw_every_symmetry_per_image(name, count):
    image = torch.arange(3 * 5 * 5, dtype=torch.float32).reshape(1, 3, 5, 5)
    out = BatchAugment([{name: {"p": 1.0}}], seed=1)(image.repeat(400, 1, 1, 1))
    assert distinct(out) <= symmetries(image[0]) and len(distinct(out)) == count


def test_each_image_is_drawn_on_its_own_and_seeding_repeats_the_draw():
    x = torch.rand(64, 3, 6, 6)
    augment = BatchAugment(FLIPS, seed=3)
    first = augment(x.clone())
    flipped = [not torch.equal(a, b) for a, b in zip(first, x)]
    assert 0 < sum(flipped) < 64
    augment.seed(3)
    assert torch.equal(augment(x.clone()), first)


def test_batches_arrive_normalised_as_albumentations_would(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"a": 5, "b": 5}, size=20)
    cfg = config(data={"cache_dir": str(tmp_path / "cache")}, train={"num_workers": 0})
    spec = Preprocessing(16, "bilinear", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), channels=3)
    paths = [f"train/a_00{i}.png" for i in range(5)]
    loader = create_loader(corpus, paths, [0] * 5, spec, torch.device("cpu"),
                           **loader_kwargs(cfg, train=False, batch_size=5))
    (images, targets), = list(loader)
    assert images.dtype == torch.float32 and images.shape == (5, 3, 16, 16)
    assert images.is_contiguous(memory_format=torch.channels_last)
    from foldvision.learn.images import load_image

    reference = A.Compose([A.Resize(16, 16), A.Normalize(mean=spec.mean, std=spec.std)])
    for got, rel in zip(images, paths):
        want = reference(image=load_image(corpus / rel, 3))["image"]
        np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), want, atol=1e-5)
    assert targets.tolist() == [0] * 5


def test_a_cache_size_below_the_input_size_is_refused(tmp_path):
    cfg = config(data={"cache_dir": str(tmp_path / "cache"), "cache_size": 8})
    with pytest.raises(Exception, match="data.cache_size=8 is below the input size 16"):
        create_loader(tmp_path, [], [], Preprocessing(16, "bilinear", (0.5,) * 3, (0.5,) * 3, 3), torch.device("cpu"),
                      **loader_kwargs(cfg, train=True))


def test_an_epoch_with_cpu_augmentations_in_workers_draws_the_same_when_run_again(tmp_path):
    """What resuming a fold relies on: the same torch seed and epoch seed give the same batches."""
    corpus = make_corpus(tmp_path / "c", {"a": 6, "b": 6}, size=20)
    cfg = config(data={"cache_dir": str(tmp_path / "cache")}, train={"num_workers": 1, "batch_size": 4},
                 augment={"train": [{"RandomBrightnessContrast": {"p": 1.0}}]})  # stays on the CPU, in the worker
    spec = Preprocessing(16, "bilinear", (0.5,) * 3, (0.25,) * 3, 3)
    paths = [f"train/{c}_00{i}.png" for c in "ab" for i in range(6)]
    loader = create_loader(corpus, paths, [0] * 6 + [1] * 6, spec, torch.device("cpu"),
                           **loader_kwargs(cfg, train=True))

    def epoch(seed):
        torch.manual_seed(seed)
        loader.set_epoch(seed)
        return torch.cat([images for images, _ in loader])

    first, other, again = epoch(7), epoch(8), epoch(7)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_loader_kwargs_take_each_split_its_settings_and_leave_the_config_alone():
    cfg = config(data={"cache_size": 48}, train={"sampler": "imbalanced"}, predict={"batch_size": 7})
    before = repr(cfg)
    train, test = loader_kwargs(cfg, train=True), loader_kwargs(cfg, train=False, batch_size=3)
    assert train["augment"] == cfg.augment.train and train["sampler"] == "imbalanced" and train["cache_size"] == 48
    assert train["batch_size"] == cfg.train.batch_size and train["cache_dir"] == cfg.data.cache_dir
    assert test["augment"] == [] and test["sampler"] == "random" and test["cache_size"] is None
    assert test["batch_size"] == 3  # an override wins
    train["augment"].append({"Blur": {}})  # the caller's copy, not the config's list
    assert repr(cfg) == before
    assert loader_kwargs(config(data={"cache": False}), train=False)["cache_dir"] is None  # decode on every read
