"""Test-time augmentation over a named list of views, all views of a batch in one forward pass.

The views are ttach's transforms, and a list gives their product as in ttach's Compose: `[hflip, vflip, rot90]`
is all 8 flips and rotations. ttach's `ClassificationTTAWrapper` runs the model once per view, one after
another, and averages whatever the model returns (logits; its gmean/tsharpen modes give NaN on logits, its
issue #4). Here the views are stacked along the batch for a single forward pass, and the merge averages
softmax probabilities, which is what an ensemble of probability estimates should average.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import ttach
from torch import nn

from foldvision.config import TTA_VIEWS

_VIEWS: dict[str, Callable[[], ttach.base.BaseTransform]] = {
    "hflip": ttach.HorizontalFlip,
    "vflip": ttach.VerticalFlip,
    "rot90": lambda: ttach.Rotate90(angles=[0, 90]),
    "rot90x4": lambda: ttach.Rotate90(angles=[0, 90, 180, 270]),
}
assert set(_VIEWS) == set(TTA_VIEWS)


def tta_compose(views: list[str]) -> ttach.Compose:
    """ttach's Compose of the named views (identity alone for an empty list)."""
    return ttach.Compose([_VIEWS[v]() for v in views])


def tta_forward(views: list[str], merge: str = "prob") -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """A `forward(model, images) -> probabilities` that runs every view of `images` in one pass.

    merge="prob" averages softmax probabilities (ours); merge="logit" averages logits then applies softmax,
    which equals ttach's wrapper with merge_mode="mean" (kept to compare the two). Images must be square
    when rotations are used, as they are after our Resize.
    """
    transforms = list(tta_compose(views))

    def forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if len(transforms) == 1:
            return torch.softmax(model(images).float(), dim=1)
        stacked = torch.cat([t.augment_image(images) for t in transforms])
        logits = model(stacked).float().unflatten(0, (len(transforms), len(images)))
        if merge == "logit":
            return torch.softmax(logits.mean(dim=0), dim=1)
        return torch.softmax(logits, dim=2).mean(dim=0)

    return forward
