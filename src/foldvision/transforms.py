"""albumentations pipelines from the config: Resize, the configured augmentations, Normalize, ToTensorV2.

Size and normalisation come from the model (`models.data_config`), never from albumentations' ImageNet
defaults. Pipelines are built with `strict=True`, so a misspelt argument is an error, not a silent no-op.
"""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from foldvision.errors import UserError, did_you_mean

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST,
                 "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


def _augmentation(index: int, item: dict) -> A.BasicTransform:
    (name, args), = item.items()
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        names = [n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), A.BasicTransform)]
        raise UserError(f"augment.train[{index}]: albumentations has no transform '{name}'{did_you_mean(name, names)}")
    try:
        return cls(**(args or {}))
    except (TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        first = str(e).splitlines()[0]
        raise UserError(f"augment.train[{index}] {name}{args or {}}: {first}") from None


def build_transform(augment: list[dict], data_cfg: dict, train: bool, seed: int = 0) -> A.Compose:
    """The pipeline for one split: train adds the configured augmentations."""
    size = data_cfg["size"]
    interpolation = INTERPOLATION.get(data_cfg["interpolation"], cv2.INTER_LINEAR)
    ops = [A.Resize(size, size, interpolation=interpolation)]
    if train:
        ops += [_augmentation(i, item) for i, item in enumerate(augment)]
    ops += [A.Normalize(mean=data_cfg["mean"], std=data_cfg["std"], max_pixel_value=255.0), ToTensorV2()]
    try:
        return A.Compose(ops, strict=True, seed=seed)
    except (TypeError, ValueError) as e:
        raise UserError(f"augment.train: {str(e).splitlines()[0]}") from None
