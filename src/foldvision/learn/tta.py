"""Test-time augmentation over a named list of views, all views of a batch in one forward pass.

The views are ttach's transforms, and a list gives their product as in ttach's Compose: `[hflip, vflip, rot90]`
is all 8 flips and rotations. ttach's `ClassificationTTAWrapper` runs the model once per view, one after
another, and averages whatever the model returns (logits; its gmean/tsharpen modes give NaN on logits, its
issue #4). Here the views are stacked along the batch for a single forward pass, and the merge averages
softmax probabilities, which is what an ensemble of probability estimates should average: per tag sigmoids for
multi-label, values in the user's units for regression and ordinal (`heads.Head.values`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import ttach
from torch import nn

from foldvision.config import TTA_VIEWS
from foldvision.learn.heads import Head

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


def tta_forward(views: list[str], merge: str = "prob", head: Head | None = None
                ) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """A `forward(model, images) -> probabilities` (or values: `head`, by default single-label's softmax) that
    runs every view of `images` in one pass.

    merge="prob" averages the views' probabilities or values (ours); merge="logit" averages logits then maps
    them, which for softmax equals ttach's wrapper with merge_mode="mean" (kept to compare the two). Images
    must be square when rotations are used, as they are after our Resize.
    """
    transforms = list(tta_compose(views))
    head = head or Head()

    def forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        if len(transforms) == 1:
            return head.values(model(images))
        stacked = torch.cat([t.augment_image(images) for t in transforms])
        logits = model(stacked).float()
        if merge == "logit":
            return head.values(logits.unflatten(0, (len(transforms), len(images))).mean(dim=0))
        return head.values(logits).unflatten(0, (len(transforms), len(images))).mean(dim=0)

    return forward
