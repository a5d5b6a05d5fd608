"""What a model's input needs (`Preprocessing`), and the albumentations pipelines that make it: Resize, the
configured augmentations, Normalize, ToTensorV2.

Size and normalisation come from the model (`models.preprocessing`), never from albumentations' ImageNet
defaults. Pipelines are built with `strict=True`, so a misspelt argument is an error, not a silent no-op.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from foldvision.errors import UserError, did_you_mean

INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST,
                 "area": cv2.INTER_AREA, "lanczos": cv2.INTER_LANCZOS4}


@dataclass(frozen=True)
class Preprocessing:
    """A model's input: square images of `size` px resized with `interpolation`, `channels` deep, normalised
    with `mean` and `std` (one per channel). A value: another input size is another spec (`at`).

    The decoded-image cache keys its records by the part that decides the pixels (`key`: size, channels,
    interpolation); mean and std are applied on the device."""

    size: int
    interpolation: str  # a key of INTERPOLATION (the model's, from timm)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int

    def at(self, size: int) -> Preprocessing:
        """This spec at input size `size`."""
        return dataclasses.replace(self, size=size)

    @property
    def key(self) -> str:
        return f"{self.size}px-{self.channels}ch-{self.interpolation}"

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.size, self.size, self.channels

    def to_dict(self) -> dict:
        """Plain values, as a checkpoint stores them (torch.load(weights_only=True) reads no classes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, channels: int | None = None) -> Preprocessing:
        """Back from `to_dict`; a dict of before the spec (no channels) takes `channels`.

        Raises:
            KeyError, TypeError, ValueError: `data` is not such a dict.
        """
        return cls(size=int(data["size"]), interpolation=str(data["interpolation"]), mean=tuple(data["mean"]),
                   std=tuple(data["std"]), channels=int(data.get("channels", channels)))


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


def build_transform(augment: list[dict], spec: Preprocessing, train: bool, seed: int = 0,
                    input_size: int | None = None, normalize: bool = True) -> A.Compose:
    """The pipeline for one split: train adds the configured augmentations.

    input_size: the square size of the images it receives. None (any size): Resize comes first. The input
    size (images from foldvision.learn.cache): no Resize. Another size (a cache with a margin for random crops):
    Resize comes last, after the crops. normalize=False ends in a uint8 CHW tensor, to be normalised on the
    device (loader.DeviceLoader): a quarter of the bytes to move, no float work in the loader.
    """
    size = spec.size
    interpolation = INTERPOLATION.get(spec.interpolation, cv2.INTER_LINEAR)
    resize = A.Resize(size, size, interpolation=interpolation)
    ops = [resize] if input_size is None else []
    if train:
        ops += [_augmentation(i, item) for i, item in enumerate(augment)]
    if input_size is not None and input_size != size:
        ops.append(resize)
    if normalize:
        ops += [A.Normalize(mean=spec.mean, std=spec.std, max_pixel_value=255.0)]
    ops += [ToTensorV2()]
    try:
        return A.Compose(ops, strict=True, seed=seed)
    except (TypeError, ValueError) as e:
        raise UserError(f"augment.train: {str(e).splitlines()[0]}") from None
