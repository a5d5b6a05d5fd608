"""The torch side: images and their cache, transforms, the loader, models, losses, optimizers, the loop, TTA, DDP."""
