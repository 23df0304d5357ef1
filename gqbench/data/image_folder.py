"""``data=imagefolder data.root=PATH``: an ImageNet-style recursive folder of jpg/png/... files, resized (short side,
bicubic, antialiased) and center-cropped.

Every file is decoded once so corrupt files are counted up front and training never meets one mid-run. The
verified list is cached (``cache_dir``), keyed by the listing's paths, sizes and modification times: the next job,
rank or sweep on the same unchanged folder reads it back instead of decoding every file again; a changed, added or
removed file changes the key, and the listing is verified again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..checkpoint import atomic_write_bytes
from .common import DataSplits, _seeded_permutation, _to_unit_range, validate_image_size

log = logging.getLogger(__name__)

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


def _listing_key(files: Sequence[Path]) -> str:
    """sha1 over every file's path, size and modification time: equal keys mean an unchanged listing."""
    digest = hashlib.sha1()
    for path in files:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def verified_listing(files: Sequence[Path], cache_dir: str | os.PathLike | None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files that decode, [(file, why not)]) for `files`, from the cache when this exact listing was verified before.

    The cache entry is written atomically after a full pass, so an interrupted verification leaves nothing behind
    and concurrent jobs at worst both verify and write the same content."""
    entry = Path(cache_dir) / f"verified-{_listing_key(files)}.json" if cache_dir is not None else None
    if entry is not None and entry.exists():
        record = json.loads(entry.read_text())
        log.info("imagefolder: %d file(s) verified before (%s)", len(files), entry)
        return [Path(p) for p in record["good"]], [(Path(p), why) for p, why in record["bad"]]
    good, bad = [], []
    for path in files:
        reason = _check_decodes(path)
        if reason is None:
            good.append(path)
        else:
            bad.append((path, reason))
    if entry is not None:
        payload = json.dumps({"good": [str(p) for p in good], "bad": [[str(p), why] for p, why in bad]}).encode()
        atomic_write_bytes(entry, lambda f: f.write(payload))
    return good, bad


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
                max_images: int | None = None, strict: bool = False, cache_dir: str | os.PathLike | None = None
                ) -> DataSplits:
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
        cache_dir: where the verified file lists are kept (see verified_listing); None = verify every time.

    Every file is decoded once, so corrupt files are known before training starts (roughly 1-5 ms per file: 20-100
    min for ImageNet). With ``cache_dir`` that happens once per folder state, not per job and rank: later builds
    only list and stat the files (use ``max_images`` for a quick look at a large folder).
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
        good, bad = verified_listing(files, cache_dir)
        if bad and strict:
            path, reason = bad[0]
            raise ValueError(f"corrupt image file {str(path)!r} ({reason}); remove it or set data.strict=false "
                             f"to skip unreadable files")
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
