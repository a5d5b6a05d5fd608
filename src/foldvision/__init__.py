"""foldvision: cross-validated image classification for competitions."""

import os

# Importing albumentations must never call the network to look for updates; set before any import of it.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
