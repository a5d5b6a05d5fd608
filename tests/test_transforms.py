import dataclasses

import numpy as np
import pytest
import torch

from foldvision.errors import UserError
from foldvision.learn.transforms import Preprocessing, build_transform

CLIP = Preprocessing(28, "bicubic", mean=(0.48145466, 0.4578275, 0.40821073),
                     std=(0.26862954, 0.26130258, 0.27577711), channels=3)


def test_resize_and_normalise_with_the_models_statistics():
    image = np.full((50, 70, 3), 128, dtype=np.uint8)
    x = build_transform([], CLIP, train=False)(image=image)["image"]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32
    expected = (128 / 255 - np.array(CLIP.mean)) / np.array(CLIP.std)
    assert x[:, 0, 0].numpy() == pytest.approx(expected, abs=1e-4)


def test_augmentations_only_for_training_and_seeded():
    image = np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)
    augment = [{"HorizontalFlip": {"p": 1.0}}]
    plain = build_transform(augment, CLIP, train=False)(image=image)["image"]
    flipped = build_transform(augment, CLIP, train=True)(image=image)["image"]
    assert torch.allclose(flipped, plain.flip(2), atol=1e-5)
    rotate = [{"RandomRotate90": {"p": 0.5}}]
    a = [build_transform(rotate, CLIP, train=True, seed=3)(image=image)["image"] for _ in range(2)]
    assert torch.equal(a[0], a[1])  # albumentations seeds through Compose(seed=...), not numpy


def test_a_wrong_argument_name_is_an_error_not_a_silent_no_op():
    with pytest.raises(UserError, match=r"augment.train: Argument\(s\) 'prob' are not valid for transform HorizontalFlip"):
        build_transform([{"HorizontalFlip": {"prob": 0.5}}], CLIP, train=True)


def test_an_unknown_transform_suggests_names():
    with pytest.raises(UserError, match=r"no transform 'HorizontalFlp'.*HorizontalFlip"):
        build_transform([{"HorizontalFlp": {}}], CLIP, train=True)


def test_a_spec_is_a_value_another_size_is_another_spec():
    larger = CLIP.at(40)
    assert (CLIP.size, larger.size) == (28, 40) and larger == dataclasses.replace(CLIP, size=40)
    assert larger.mean == CLIP.mean and larger.key == "40px-3ch-bicubic" and larger.shape == (40, 40, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLIP.size = 40
    assert Preprocessing.from_dict(larger.to_dict()) == larger and hash(larger) == hash(CLIP.at(40))


# ---- the size of the images received: foldvision.learn.cache hands them over resized already ----------------

SIZE16 = Preprocessing(16, "bicubic", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), channels=3)
CROP = [{"RandomCrop": {"height": 16, "width": 16}}]


def names(pipeline) -> list[str]:
    return [type(t).__name__ for t in pipeline.transforms]


def test_resize_first_for_images_of_any_size():
    assert names(build_transform(CROP, SIZE16, train=True)) == ["Resize", "RandomCrop", "Normalize", "ToTensorV2"]


def test_no_resize_for_images_already_at_the_input_size():
    assert names(build_transform([], SIZE16, train=False, input_size=16)) == ["Normalize", "ToTensorV2"]


def test_resize_last_for_a_cache_with_a_margin_and_uint8_out_without_normalize():
    pipeline = build_transform(CROP, SIZE16, train=True, input_size=24, normalize=False)
    assert names(pipeline) == ["RandomCrop", "Resize", "ToTensorV2"]
    out = pipeline(image=np.zeros((24, 24, 3), np.uint8))["image"]
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
