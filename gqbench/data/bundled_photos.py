"""``data=bundled`` (the default): natural RGB photographs that ship inside installed wheels (scikit-image,
scikit-learn, matplotlib), so no download is needed. Each image is cut into square patches, and the split into
train and validation is made **by source image**: no validation image is ever seen in training."""
from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import DataSplits, _rgb_uint8, _seeded_permutation, _to_unit_range, validate_image_size

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledSource:
    """One bundled image. ``group`` is the unit of the train/val split: images of the same scene share a group."""

    name: str
    group: str
    load: Callable[[], np.ndarray]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


@functools.lru_cache(maxsize=1)
def _stereo_pair() -> tuple[np.ndarray, np.ndarray]:
    import skimage.data

    # returns (left, right, disparity); disparity is not an image to learn from. Cached: both views come from one call
    left, right, _ = skimage.data.stereo_motorcycle()
    return left, right


def _stereo_motorcycle(view: int) -> Callable[[], np.ndarray]:
    return lambda: _stereo_pair()[view]


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        # Importing sklearn takes 1-2.5 s, longer than decoding all the other images, so read the file that
        # load_sample_image would read (same PIL decode, identical pixels) and import sklearn only as a fallback.
        spec = importlib.util.find_spec("sklearn")
        for location in (spec.submodule_search_locations or []) if spec else []:
            path = Path(location) / "datasets" / "images" / filename
            if path.is_file():
                return _read_rgb(path)
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _grace_hopper() -> np.ndarray:
    import matplotlib

    # get_data_path() gives the file without going through cbook's file-object handling, which changed across releases
    return _read_rgb(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")


#: The bundled catalogue, in a fixed order (the seeded split permutes this order, so appending a source is the
#: only edit that keeps existing splits unchanged).
BUNDLED_SOURCES: tuple[BundledSource, ...] = (
    BundledSource("astronaut", "astronaut", _skimage("astronaut")),
    BundledSource("chelsea", "chelsea", _skimage("chelsea")),
    BundledSource("coffee", "coffee", _skimage("coffee")),
    BundledSource("rocket", "rocket", _skimage("rocket")),
    BundledSource("hubble_deep_field", "hubble_deep_field", _skimage("hubble_deep_field")),
    BundledSource("retina", "retina", _skimage("retina")),
    BundledSource("immunohistochemistry", "immunohistochemistry", _skimage("immunohistochemistry")),
    # the two views show the same scene from 2 cm apart; splitting them would leak val content into training
    BundledSource("stereo_motorcycle_left", "stereo_motorcycle", _stereo_motorcycle(0)),
    BundledSource("stereo_motorcycle_right", "stereo_motorcycle", _stereo_motorcycle(1)),
    BundledSource("china", "china", _sklearn("china.jpg")),
    BundledSource("flower", "flower", _sklearn("flower.jpg")),
    BundledSource("grace_hopper", "grace_hopper", _grace_hopper),
)

# Decoded images keyed by (name, loader): decoding is the slow part and the images never change within a process,
# so repeated builds (tests, sweeps in one process) cost only the patch indexing.
_DECODED: dict[tuple[str, Callable[[], np.ndarray]], torch.Tensor] = {}


def _decode_source(source: BundledSource) -> torch.Tensor:
    key = (source.name, source.load)
    if key not in _DECODED:
        _DECODED[key] = _to_unit_range(torch.from_numpy(_rgb_uint8(source.load(), name=source.name)))
    return _DECODED[key]


def _grid(length: int, patch: int, stride: int) -> range:
    # anchored at 0; the remainder (< stride) at the far edge is dropped rather than padded, so no patch is synthetic
    return range(0, length - patch + 1, stride)


class PatchDataset(Dataset):
    """Square patches cut from a few decoded images held in memory.

    Patches are views into the cached images (copied on access), so a small ``train_stride`` multiplies the patch
    count without multiplying memory: 82k overlapping 32x32 patches would take ~1 GB as separate tensors.

    Attributes:
        sources: names of the source images, in the order indexed by ``origins[:, 0]``.
        groups: the split units these images belong to (sorted, unique).
        patch_size, stride: patch side and step, in pixels.
        origins: long tensor (N, 3) of ``(source index, top, left)`` for every patch.
    """

    def __init__(self, images: Sequence[torch.Tensor], sources: Sequence[str], groups: Iterable[str], *,
                 patch_size: int, stride: int):
        assert len(images) == len(sources)
        self.images = list(images)
        self.sources = tuple(sources)
        self.groups = tuple(sorted(set(groups)))
        self.patch_size = patch_size
        self.stride = stride
        rows = [
            (index, top, left)
            for index, image in enumerate(self.images)
            for top in _grid(image.shape[1], patch_size, stride)
            for left in _grid(image.shape[2], patch_size, stride)
        ]
        self.origins = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        source, top, left = self.origins[index].tolist()
        p = self.patch_size
        # clone so that a caller writing into the item (in-place ops) cannot corrupt the shared cache
        return self.images[source][:, top:top + p, left:left + p].clone()

    def patches_per_source(self) -> dict[str, int]:
        counts = torch.bincount(self.origins[:, 0], minlength=len(self.sources)).tolist()
        return dict(zip(self.sources, counts))


def bundled(*, image_size: int = 32, seed: int = 0, val_images: int = 3, train_stride: int | None = None,
            sources: Sequence[str] | None = None) -> DataSplits:
    """Natural RGB images that ship with scikit-image, scikit-learn and matplotlib, cut into patches.

    Args:
        image_size: patch side in pixels (even, >= 8).
        seed: picks which source images are held out for validation.
        val_images: how many split units (source images; the two stereo_motorcycle views count as one) go to
            validation. A count rather than a fraction because there are only 11 units: a fraction would round
            to different held-out counts as sources come and go.
        train_stride: step between training patches; ``None`` = ``image_size`` (non-overlapping). A smaller value
            gives overlapping patches and more training data. Validation patches are always non-overlapping.
        sources: names from :data:`BUNDLED_SOURCES` to use (``None`` = all).

    A source that fails to load is skipped with a logged warning and its reason; if none loads, RuntimeError.
    The split is drawn by permuting the full catalogue's groups with ``seed`` and then dropping any that did not
    load, so a missing training image does not reshuffle validation.
    """
    image_size = validate_image_size(image_size)
    train_stride = image_size if train_stride is None else int(train_stride)
    if train_stride < 1:
        raise ValueError(f"train_stride must be a positive number of pixels (or null for image_size), "
                         f"got {train_stride}")

    catalogue = list(BUNDLED_SOURCES)
    if sources is not None:
        wanted = list(sources)
        known = {s.name for s in catalogue}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ValueError(f"unknown bundled source(s) {unknown}; choose from {sorted(known)}")
        catalogue = [s for s in catalogue if s.name in wanted]

    decoded: dict[str, torch.Tensor] = {}
    failed: dict[str, str] = {}
    for source in catalogue:
        try:
            image = _decode_source(source)
        except Exception as error:  # any import/decoding failure: one missing wheel must not stop the benchmark
            failed[source.name] = f"{type(error).__name__}: {error}"
            log.warning("bundled data: skipping source %r, it failed to load (%s: %s)",
                        source.name, type(error).__name__, error)
            continue
        if min(image.shape[1:]) < image_size:
            failed[source.name] = f"smaller than image_size {image_size}"
            log.warning("bundled data: skipping source %r, its size %s is smaller than image_size=%d",
                        source.name, tuple(image.shape[1:]), image_size)
            continue
        decoded[source.name] = image
    if not decoded:
        raise RuntimeError(
            "bundled data: no source image could be loaded "
            + "; ".join(f"{name}: {reason}" for name, reason in failed.items())
            + ". Check that scikit-image, scikit-learn and matplotlib are installed, or use data=synthetic."
        )

    group_order = list(dict.fromkeys(s.group for s in catalogue))
    group_order = [group_order[i] for i in _seeded_permutation(len(group_order), seed)]
    loaded_groups = [g for g in group_order if any(s.group == g and s.name in decoded for s in catalogue)]
    if not 1 <= val_images < len(loaded_groups):
        raise ValueError(
            f"val_images must be between 1 and {len(loaded_groups) - 1} (there are {len(loaded_groups)} loadable "
            f"source groups: {sorted(loaded_groups)}), got {val_images}"
        )
    val_groups = set(loaded_groups[:val_images])

    def split(in_val: bool, stride: int) -> PatchDataset:
        chosen = [s for s in catalogue if s.name in decoded and (s.group in val_groups) == in_val]
        return PatchDataset([decoded[s.name] for s in chosen], [s.name for s in chosen], [s.group for s in chosen],
                            patch_size=image_size, stride=stride)

    train, val = split(False, train_stride), split(True, image_size)
    stride_note = "non-overlapping" if train_stride == image_size else f"train stride {train_stride}, val non-overlapping"
    description = (
        f"bundled: {len(train.sources)} train images ({', '.join(train.sources)}) → {len(train):,} patches, "
        f"{len(val.sources)} val images from {len(val.groups)} held-out scenes ({', '.join(val.sources)}) → "
        f"{len(val):,} patches, {image_size}×{image_size} patches ({stride_note}), seed {seed}."
    )
    if failed:
        description += f" Skipped {len(failed)} source(s): " + "; ".join(f"{k} ({v})" for k, v in failed.items()) + "."
    return DataSplits(train=train, val=val, description=description)
