"""Image data for gqbench: three sources behind one interface, plus seeded loaders.

Every builder returns a :class:`DataSplits` (``train``, ``val``, ``description``). Items are float32 tensors
of shape (3, image_size, image_size) with values in [-1, 1] (``x / 127.5 - 1`` for 8-bit pixels). Builders are
deterministic for a given ``seed``, and ``__getitem__`` draws no randomness (no augmentation; the paper uses none).

* :func:`bundled` (``data=bundled``, the default): the natural RGB photographs that ship inside installed wheels
  (scikit-image, scikit-learn, matplotlib), so no download is needed. Each image is cut into square patches, and the
  split into train and validation is made **by source image**: no validation image is ever seen in training.
* :func:`imagefolder` (``data=imagefolder data.root=PATH``): an ImageNet-style recursive folder of jpg/png/... files,
  resized (short side, bicubic, antialiased) and center-cropped. Every file is decoded once when the dataset is built,
  so corrupt files are counted up front and training never meets one mid-run.
* :func:`synthetic` (``data=synthetic``): smooth seeded random images, cheap enough for tests.

The training order (a pure function of seed and step, for exact resume) is gqbench.train.StepBatchSampler.

The Hydra configs live in ``conf/data/``; each sets ``_target_`` to one of the builders, ``image_size`` and
``seed: ${seed}``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLED_SOURCES",
    "IMAGE_EXTENSIONS",
    "DataSplits",
    "ImageFolderDataset",
    "PatchDataset",
    "TensorImageDataset",
    "bundled",
    "imagefolder",
    "synthetic",
    "validate_image_size",
]


# ----------------------------------------------------------------------------------------------------------------
# common pieces
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# bundled: natural images shipped inside installed wheels
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# imagefolder: a recursive folder of image files
# ----------------------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def _list_images(folder: Path) -> list[Path]:
    found = [
        Path(directory) / name
        for directory, _, files in os.walk(folder)
        for name in files
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS
    ]
    # os.walk order is filesystem-dependent; sorting by path components makes the order (and so splits) portable
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def _load_square(path: Path, image_size: int) -> np.ndarray:
    """Decode, convert to RGB, resize the short side to ``image_size`` (bicubic) and center-crop: (S, S, 3) uint8."""
    from PIL import Image

    with Image.open(path) as image:
        # convert("RGB") covers L, LA, P, RGBA (alpha dropped, not composited), CMYK and 16-bit grayscale
        image = image.convert("RGB")
    width, height = image.size
    scale = image_size / min(width, height)
    # the short side is set exactly; the long side rounds, and never below image_size
    new_w = image_size if width <= height else max(image_size, round(width * scale))
    new_h = image_size if height < width else max(image_size, round(height * scale))
    # PIL's resize widens the bicubic kernel by the downscale factor, i.e. it is antialiased (unlike a plain
    # interpolate), which matters here because most source photos shrink by 10x or more
    image = image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy requires


def _check_decodes(path: Path) -> str | None:
    """Return None if the file decodes fully, else the reason; decoding all pixels catches truncated files."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            # JPEG draft mode decodes at 1/8 scale: still reads every byte (so truncation is caught), ~5x faster
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError... for bad files
        return f"{type(error).__name__}: {error}"
    return None


class ImageFolderDataset(Dataset):
    """Image files decoded on access (resize short side, center-crop, RGB, [-1, 1]).

    Attributes:
        files: the readable files, sorted.
        skipped: ``(path, reason)`` for every file that failed to decode when the splits were built (the same
            list on train and val).
        image_size: output side in pixels.
    """

    def __init__(self, files: Sequence[Path], *, image_size: int, skipped: Sequence[tuple[Path, str]] = ()):
        self.files = list(files)
        self.skipped = list(skipped)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _to_unit_range(torch.from_numpy(_load_square(self.files[index], self.image_size)))


def imagefolder(*, root: str | os.PathLike, image_size: int = 32, seed: int = 0, val_fraction: float = 0.1,
                max_images: int | None = None, strict: bool = False) -> DataSplits:
    """An ImageNet-style folder: every jpg/jpeg/png/bmp/webp file under ``root`` (recursive, sorted, any case).

    Args:
        root: the folder. If it holds both ``train/`` and ``val/`` subfolders those are the split; otherwise files
            are split by ``seed`` with ``val_fraction``.
        image_size: output side; images are resized so the short side is ``image_size`` (bicubic, antialiased) and
            center-cropped to a square.
        seed: picks the val files (when there is no train/val layout) and the ``max_images`` subset.
        val_fraction: share of files held out when there is no train/val layout (at least one file each side).
        max_images: cap on the files used, for speed: a seeded random subset of each of ``train/`` and ``val/``
            when they exist, else of all files before the split. ``None`` = no cap.
        strict: if True, a file that does not decode raises ValueError naming it; if False (default) it is skipped,
            and the count and first paths are logged.

    Every file is decoded once here, so corrupt files are known before training starts; budget roughly 1-5 ms per
    file (use ``max_images`` for a quick look at a large folder).
    """
    image_size = validate_image_size(image_size)
    if root is None or str(root) in ("", "???"):
        raise ValueError("imagefolder needs a root folder: set data.root=/path/to/images")
    root_path = Path(os.path.expanduser(str(root)))
    if not root_path.is_dir():
        raise FileNotFoundError(
            f"imagefolder root {str(root_path)!r} does not exist or is not a folder; set data.root=/path/to/images "
            f"(a folder of {'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files, optionally with train/ and "
            f"val/ subfolders)"
        )
    if max_images is not None and int(max_images) < 2:
        raise ValueError(f"max_images must be at least 2 (one train and one val image) or null, got {max_images}")

    def listing(folder: Path) -> list[Path]:
        files = _list_images(folder)
        if not files:
            raise ValueError(
                f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}, any case) found under {str(folder)!r}; "
                f"point data.root at a folder that contains images"
            )
        if max_images is not None and len(files) > max_images:
            keep = sorted(_seeded_permutation(len(files), seed)[: int(max_images)])
            files = [files[i] for i in keep]
        return files

    def verified(files: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
        good, bad = [], []
        for path in files:
            reason = _check_decodes(path)
            if reason is None:
                good.append(path)
            elif strict:
                raise ValueError(f"corrupt image file {str(path)!r} ({reason}); remove it or set data.strict=false "
                                 f"to skip unreadable files")
            else:
                bad.append((path, reason))
        return good, bad

    has_layout = (root_path / "train").is_dir() and (root_path / "val").is_dir()
    if has_layout:
        train_files, train_bad = verified(listing(root_path / "train"))
        val_files, val_bad = verified(listing(root_path / "val"))
        how = "train/ and val/ subfolders"
    else:
        if (root_path / "train").is_dir() or (root_path / "val").is_dir():
            log.warning("imagefolder %s has only one of train/ and val/; splitting all files with val_fraction=%s",
                        root_path, val_fraction)
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
        files, bad = verified(listing(root_path))
        if len(files) < 2:
            raise ValueError(f"imagefolder {str(root_path)!r} has {len(files)} readable image(s); at least 2 are "
                             f"needed to make a train and a val split")
        # at least one file on each side, however small the folder
        n_val = min(max(1, round(len(files) * float(val_fraction))), len(files) - 1)
        val_index = set(_seeded_permutation(len(files), seed)[:n_val])
        train_files = [f for i, f in enumerate(files) if i not in val_index]
        val_files = [f for i, f in enumerate(files) if i in val_index]
        train_bad, val_bad = bad, []
        how = f"seeded split, val_fraction {val_fraction}"

    skipped = train_bad + val_bad
    if skipped:
        log.warning("imagefolder %s: skipped %d unreadable file(s), first: %s", root_path, len(skipped),
                    "; ".join(f"{p} ({r})" for p, r in skipped[:3]))
    for name, files in (("train", train_files), ("val", val_files)):
        if not files:
            raise ValueError(f"imagefolder {str(root_path)!r}: no readable {name} images")

    # both splits carry the full list: without a train/val layout a corrupt file was never assigned a side
    train = ImageFolderDataset(train_files, image_size=image_size, skipped=skipped)
    val = ImageFolderDataset(val_files, image_size=image_size, skipped=skipped)
    description = (
        f"imagefolder {root_path} ({how}): {len(train):,} train images, {len(val):,} val images, resized (short "
        f"side, bicubic) and center-cropped to {image_size}×{image_size}"
        + (f", at most {max_images} per listing" if max_images is not None else "")
        + (f"; skipped {len(skipped)} unreadable file(s)" if skipped else "")
        + f", seed {seed}."
    )
    return DataSplits(train=train, val=val, description=description)


# ----------------------------------------------------------------------------------------------------------------
# synthetic: smooth random images for fast tests
# ----------------------------------------------------------------------------------------------------------------


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
