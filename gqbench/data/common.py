"""What every data source shares: the DataSplits they return, the image-size check, pixel conventions, seeded
permutations."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass
class DataSplits:
    """What every data builder returns: the two datasets and a one-paragraph summary with counts (for logs)."""

    train: Dataset
    val: Dataset
    description: str


def validate_image_size(image_size: int) -> int:
    """Return ``image_size`` as an int, or raise ValueError saying which values are allowed.

    Even and at least 8 because the tokenizers downsample by powers of two; a bool is refused because YAML's
    ``yes``/``true`` would otherwise pass as 1.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise ValueError(f"image_size must be an integer, got {image_size!r} ({type(image_size).__name__})")
    if image_size < 8 or image_size % 2:
        raise ValueError(
            f"image_size must be a positive even integer >= 8 (e.g. 32 or 64), got {image_size}"
        )
    return int(image_size)


def _to_unit_range(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], the convention used throughout gqbench."""
    return pixels_uint8.movedim(-1, -3).to(torch.float32).div_(127.5).sub_(1.0)


def _rgb_uint8(array: np.ndarray, *, name: str) -> np.ndarray:
    """Coerce a decoded image to contiguous (H, W, 3) uint8, or raise ValueError saying what was found."""
    array = np.asarray(array)
    if array.ndim == 2:  # grayscale
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected an RGB image, got an array of shape {array.shape}")
    array = array[:, :, :3]  # alpha is dropped, as PIL's convert("RGB") does
    if array.dtype != np.uint8:
        raise ValueError(f"{name}: expected 8-bit pixels, got dtype {array.dtype}")
    # a copy: loaders may return read-only or shared arrays, and torch.from_numpy must own writable memory
    return np.array(array, order="C", copy=True)


def _seeded_permutation(n: int, seed: int) -> list[int]:
    # numpy's PCG64 permutation is stable across numpy releases for a given seed, which keeps published splits valid.
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]
