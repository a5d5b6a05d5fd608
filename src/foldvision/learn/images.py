"""Images, decoded: one file to a uint8 array, the torch Dataset over a corpus table, and its workers' seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from foldvision.corpus import open_image
from foldvision.errors import UserError


def load_image(path: Path, channels: int) -> np.ndarray:
    """An image file as a uint8 HxWxC array (C = `channels`), EXIF orientation applied.

    16- and 32-bit grayscale are scaled to 8 bits; palette, alpha and CMYK images are converted.
    """
    try:
        with open_image(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                top = 65535.0 if im.mode.startswith("I") and arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
            elif im.mode in ("P", "PA", "LA"):
                im = im.convert("RGBA")
            arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path}: cannot read the image ({e}); replace the file or drop its row") from None
    return arr if arr.ndim == 3 else arr[:, :, None]


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, target) pairs: a class index (-1 for unlabelled, test, images), or a float row (the
    targets of the other task kinds: `foldvision.learn.heads.Head.targets`)."""

    def __init__(self, image_dir: Path, paths: list[str], targets: np.ndarray | None, transform, channels: int,
                 images=None):
        self.image_dir = image_dir
        self.paths = list(paths)
        self.targets = np.full(len(self.paths), -1) if targets is None else np.asarray(targets)
        self.transform = transform
        self.channels = channels
        self.images = images  # images[path]: decoded and resized already (foldvision.learn.cache); None: decode here

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        if self.images is not None:
            image = self.images[self.paths[i]]
        else:
            image = load_image(self.image_dir / self.paths[i], self.channels)
        target = self.targets[i]
        return self.transform(image=image)["image"], torch.from_numpy(target) if target.ndim else int(target)


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own albumentations stream (its RNG ignores torch's and numpy's seeds)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)
