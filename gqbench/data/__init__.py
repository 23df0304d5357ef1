"""Image data for gqbench: three sources behind one interface, one module each (conf/data/<option>.yaml).

Every builder returns a :class:`DataSplits` (``train``, ``val``, ``description``). Items are float32 tensors
of shape (3, image_size, image_size) with values in [-1, 1] (``x / 127.5 - 1`` for 8-bit pixels). Builders are
deterministic for a given ``seed``, and ``__getitem__`` draws no randomness (no augmentation; the paper uses none).

* :func:`bundled` (bundled_photos.py, ``data=bundled``, the default): photographs shipped inside installed wheels.
* :func:`imagefolder` (image_folder.py, ``data=imagefolder data.root=PATH``): an ImageNet-style folder, verified once
  per folder state (cached).
* :func:`synthetic` (synthetic_images.py, ``data=synthetic``): smooth seeded random images for tests.

The training order (a pure function of seed and step, for exact resume) is gqbench.train.StepBatchSampler.
The configs' ``_target_`` names these re-exports (``gqbench.data.bundled`` ...), so run signatures do not depend
on the module layout.
"""
from .bundled_photos import BUNDLED_SOURCES, BundledSource, PatchDataset, bundled
from .common import DataSplits, validate_image_size
from .image_folder import IMAGE_EXTENSIONS, ImageFolderDataset, imagefolder, verified_listing
from .synthetic_images import TensorImageDataset, synthetic

__all__ = [
    "BUNDLED_SOURCES",
    "IMAGE_EXTENSIONS",
    "BundledSource",
    "DataSplits",
    "ImageFolderDataset",
    "PatchDataset",
    "TensorImageDataset",
    "bundled",
    "imagefolder",
    "synthetic",
    "validate_image_size",
    "verified_listing",
]
