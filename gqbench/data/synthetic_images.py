"""``data=synthetic``: smooth seeded random images, cheap enough for tests."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .common import DataSplits, validate_image_size

class TensorImageDataset(Dataset):
    """Images already in memory as one float32 tensor (N, 3, H, W); items are the individual images."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index].clone()


def _smooth_images(count: int, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Sums of upsampled Gaussian noise at a few coarse scales: smooth, colourful, and not trivially compressible."""
    images = torch.zeros(count, 3, image_size, image_size)
    for cells, weight in ((2, 1.0), (4, 0.5), (8, 0.25)):
        coarse = torch.randn(count, 3, cells, cells, generator=generator)
        images += weight * F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    # per-image scaling to fill [-1, 1], like a photo with full contrast
    peak = images.flatten(1).abs().amax(dim=1).clamp_min(1e-6)
    return (images / peak[:, None, None, None]).clamp_(-1.0, 1.0)


def synthetic(*, image_size: int = 32, seed: int = 0, num_train: int = 512, num_val: int = 128) -> DataSplits:
    """``num_train`` + ``num_val`` smooth random images, drawn from separate seeded streams.

    The two splits use independent generators, so changing ``num_train`` does not change the val images.
    """
    image_size = validate_image_size(image_size)
    if int(num_train) < 1 or int(num_val) < 1:
        raise ValueError(f"num_train and num_val must be positive, got {num_train} and {num_val}")
    train_seed, val_seed = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64).tolist()
    train = _smooth_images(int(num_train), image_size, torch.Generator().manual_seed(int(train_seed) >> 1))
    val = _smooth_images(int(num_val), image_size, torch.Generator().manual_seed(int(val_seed) >> 1))
    description = (f"synthetic: {int(num_train):,} train and {int(num_val):,} val smooth random images, "
                   f"{image_size}×{image_size}, seed {seed}.")
    return DataSplits(train=TensorImageDataset(train), val=TensorImageDataset(val), description=description)
