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


def build_transform(augment: list[dict], data_cfg: dict, train: bool, seed: int = 0, input_size: int | None = None,
                    normalize: bool = True) -> A.Compose:
    """The pipeline for one split: train adds the configured augmentations.

    input_size: the square size of the images it receives. None (any size): Resize comes first. The input
    size (images from foldvision.learn.cache): no Resize. Another size (a cache with a margin for random crops):
    Resize comes last, after the crops. normalize=False ends in a uint8 CHW tensor, to be normalised on the
    device (loader.DeviceLoader): a quarter of the bytes to move, no float work in the loader.
    """
    size = data_cfg["size"]
    interpolation = INTERPOLATION.get(data_cfg["interpolation"], cv2.INTER_LINEAR)
    resize = A.Resize(size, size, interpolation=interpolation)
    ops = [resize] if input_size is None else []
    if train:
        ops += [_augmentation(i, item) for i, item in enumerate(augment)]
    if input_size is not None and input_size != size:
        ops.append(resize)
    if normalize:
        ops += [A.Normalize(mean=data_cfg["mean"], std=data_cfg["std"], max_pixel_value=255.0)]
    ops += [ToTensorV2()]
    try:
        return A.Compose(ops, strict=True, seed=seed)
    except (TypeError, ValueError) as e:
        raise UserError(f"augment.train: {str(e).splitlines()[0]}") from None
