"""Tests for gqbench.data: bundled patches, image folders, synthetic images, loaders and the conf/data configs."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from gqbench import data

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"


def stack(dataset) -> torch.Tensor:
    return torch.stack([dataset[i] for i in range(len(dataset))])


# ----------------------------------------------------------------------------------------------------------------
# bundled
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled32() -> data.DataSplits:
    return data.bundled(image_size=32, seed=0)


def test_bundled_items_are_float_patches_in_unit_range(bundled32):
    for split in (bundled32.train, bundled32.val):
        assert len(split) > 0
        item = split[0]
        assert item.shape == (3, 32, 32) and item.dtype == torch.float32
    values = stack(bundled32.val)
    assert values.min() >= -1.0 and values.max() <= 1.0
    # photos contain near-black and near-white pixels: fails if the scaling were x/255 or left in 0..255
    assert values.min() < -0.9 and values.max() > 0.9


def test_bundled_patch_is_exact_crop_of_the_source_photo(bundled32):
    import skimage.data

    astronaut = skimage.data.astronaut()
    split = bundled32.train if "astronaut" in bundled32.train.sources else bundled32.val
    index_of_source = split.sources.index("astronaut")
    rows = (split.origins[:, 0] == index_of_source).nonzero().flatten()
    row = int(rows[len(rows) // 2])
    _, top, left = split.origins[row].tolist()
    expected = torch.from_numpy(astronaut[top:top + 32, left:left + 32].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(split[row], expected)


def test_bundled_patch_counts_follow_the_non_overlapping_grid(bundled32):
    for split in (bundled32.train, bundled32.val):
        for name, count in split.patches_per_source().items():
            height, width = split.images[split.sources.index(name)].shape[1:]
            assert count == (height // 32) * (width // 32), name
    # the 12 catalogue images at 32x32, non-overlapping (machine notes §6); only when every source loaded
    if len(bundled32.train.sources) + len(bundled32.val.sources) == len(data.BUNDLED_SOURCES):
        assert len(bundled32.train) + len(bundled32.val) == 5385


def test_bundled_split_is_by_source_image(bundled32):
    train, val = bundled32.train, bundled32.val
    assert not set(train.sources) & set(val.sources)
    assert not set(train.groups) & set(val.groups)
    assert len(val.groups) == 3  # the val_images default
    # the two stereo views show one scene: they must land on the same side
    for split in (train, val):
        views = {"stereo_motorcycle_left", "stereo_motorcycle_right"} & set(split.sources)
        assert len(views) in (0, 2)
    assert set(train.sources) | set(val.sources) <= {s.name for s in data.BUNDLED_SOURCES}
    assert bundled32.description.startswith("bundled:") and f"{len(val):,} patches" in bundled32.description


def test_bundled_is_deterministic_per_seed(bundled32):
    again = data.bundled(image_size=32, seed=0)
    assert again.val.sources == bundled32.val.sources and again.train.sources == bundled32.train.sources
    assert torch.equal(again.val.origins, bundled32.val.origins)
    assert torch.equal(stack(again.val), stack(bundled32.val))
    assert torch.equal(again.train[len(again.train) - 1], bundled32.train[len(bundled32.train) - 1])
    other = data.bundled(image_size=32, seed=1)
    assert set(other.val.groups) != set(bundled32.val.groups)


def test_bundled_val_patches_never_overlap_even_with_overlapping_train():
    splits = data.bundled(image_size=32, seed=0, train_stride=8, val_images=4)
    assert len(splits.val.groups) == 4
    assert splits.train.stride == 8 and splits.val.stride == 32

    def overlapping_pairs(origins: torch.Tensor, size: int) -> int:
        same_source = origins[:, None, 0] == origins[None, :, 0]
        close = ((origins[:, None, 1:] - origins[None, :, 1:]).abs() < size).all(dim=-1)
        return int((same_source & close).sum()) - origins.shape[0]  # minus each patch with itself

    assert overlapping_pairs(splits.val.origins, 32) == 0
    # the check itself can see overlap: train patches at stride 8 overlap their neighbours
    assert overlapping_pairs(splits.train.origins[:2000], 32) > 0


def test_bundled_skips_a_failing_source_with_its_reason(monkeypatch, caplog):
    def broken() -> np.ndarray:
        raise OSError("disk on fire")

    checker = (np.indices((128, 128)).sum(axis=0) // 16 % 2 * 255).astype(np.uint8)
    fine = data.BundledSource("checker", "checker", lambda: np.stack([checker] * 3, axis=-1))
    spare = data.BundledSource("spare", "spare", lambda: np.full((64, 64, 3), 128, np.uint8))
    monkeypatch.setattr(data.bundled_photos, "BUNDLED_SOURCES", (data.BundledSource("broken", "broken", broken), fine, spare))
    with caplog.at_level(logging.WARNING, logger="gqbench.data"):
        splits = data.bundled(image_size=32, seed=0, val_images=1)
    assert "broken" in caplog.text and "disk on fire" in caplog.text
    assert set(splits.train.sources) | set(splits.val.sources) == {"checker", "spare"}
    assert "broken" in splits.description

    monkeypatch.setattr(data.bundled_photos, "BUNDLED_SOURCES", (data.BundledSource("broken", "broken", broken),))
    with pytest.raises(RuntimeError, match="no source image could be loaded.*disk on fire"):
        data.bundled(image_size=32)


@pytest.mark.parametrize("kwargs, message", [
    ({"val_images": 0}, "val_images"),
    ({"val_images": 11}, "val_images"),
    ({"sources": ["astronaut", "lena"]}, "lena"),
    ({"train_stride": 0}, "train_stride"),
])
def test_bundled_rejects_bad_knobs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.bundled(**kwargs)


@pytest.mark.parametrize("builder", [data.bundled, data.synthetic,
                                     lambda image_size: data.imagefolder(root=".", image_size=image_size)])
@pytest.mark.parametrize("image_size", [0, -32, 6, 33, True, 32.0, "32"])
def test_every_builder_validates_image_size(builder, image_size):
    with pytest.raises(ValueError, match="image_size"):
        builder(image_size=image_size)


# ----------------------------------------------------------------------------------------------------------------
# imagefolder
# ----------------------------------------------------------------------------------------------------------------


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    save(root / "a.png", noise(40, 60, seed=1))
    save(root / "cats" / "b.jpg", noise(80, 50, seed=2))
    save(root / "cats" / "deep" / "c.PNG", noise(33, 90, seed=3))      # upper-case extension
    save(root / "dogs" / "rgba.png", noise(50, 50, 4, seed=4))          # RGBA
    save(root / "dogs" / "gray.png", noise(64, 48, 1, seed=5))          # grayscale
    save(root / "dogs" / "d.bmp", noise(32, 32, seed=6))
    (root / "dogs" / "notes.txt").write_text("not an image, and not counted")
    (root / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    good_png = save(tmp_path / "whole.png", noise(48, 48, seed=7)).read_bytes()
    (root / "zz_truncated.png").write_bytes(good_png[: len(good_png) // 2])
    return root


def test_imagefolder_loads_recursively_and_skips_corrupt_files(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="gqbench.data"):
        splits = data.imagefolder(root=folder, image_size=16, seed=0, val_fraction=0.34)
    names = sorted(p.name for p in splits.train.files + splits.val.files)
    assert names == ["a.png", "b.jpg", "c.PNG", "d.bmp", "gray.png", "rgba.png"]
    assert len(splits.val) == 2 and len(splits.train) == 4
    assert sorted(p.name for p, _ in splits.train.skipped) == ["broken.jpg", "zz_truncated.png"]
    assert "skipped 2 unreadable" in caplog.text and "broken.jpg" in caplog.text
    assert "skipped 2 unreadable" in splits.description
    for split in (splits.train, splits.val):
        for i in range(len(split)):
            item = split[i]
            assert item.shape == (3, 16, 16) and item.dtype == torch.float32
            assert item.min() >= -1 and item.max() <= 1
    by_name = {p.name: (split, i) for split in (splits.train, splits.val) for i, p in enumerate(split.files)}
    split, i = by_name["gray.png"]
    gray = split[i]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_imagefolder_rgba_keeps_the_colour_and_drops_alpha(tmp_path):
    pixels = np.zeros((20, 20, 4), np.uint8)
    pixels[..., 0], pixels[..., 3] = 255, 10  # red, almost transparent
    save(tmp_path / "train" / "rgba.png", pixels)
    save(tmp_path / "val" / "plain.png", noise(20, 20))
    item = data.imagefolder(root=tmp_path, image_size=8).train[0]
    assert torch.allclose(item[0], torch.ones(8, 8)) and torch.allclose(item[1:], -torch.ones(2, 8, 8))


def thirds(long: int, short: int, landscape: bool) -> np.ndarray:
    """A strip in thirds: red | (black half, white half) | blue, along the long side."""
    pixels = np.zeros((short, long, 3), np.uint8)
    third = long // 3
    pixels[:, :third] = (255, 0, 0)
    pixels[:, third + third // 2: 2 * third] = 255
    pixels[:, 2 * third:] = (0, 0, 255)
    return pixels if landscape else pixels.transpose(1, 0, 2).copy()


@pytest.mark.parametrize("landscape", [True, False])
def test_imagefolder_center_crop_takes_the_middle(tmp_path, landscape):
    save(tmp_path / "train" / "strip.png", thirds(300, 100, landscape))
    save(tmp_path / "val" / "other.png", noise(40, 40))
    item = data.imagefolder(root=tmp_path, image_size=32).train[0]
    if not landscape:
        item = item.transpose(1, 2)  # compare along the long side either way
    # resized to 96x32 (or 32x96), the center crop is exactly the middle third: black then white, no red or blue.
    # Two pixels at each border are left out, for the bicubic kernel's reach across the colour edges.
    black, white = item[:, :, 2:14], item[:, :, 18:30]
    assert torch.allclose(black, -torch.ones_like(black), atol=0.05)
    assert torch.allclose(white, torch.ones_like(white), atol=0.05)
    # a crop off-centre by even 4 pixels would bring red or blue in at one edge
    assert (item[0] - item[2]).abs().max() < 0.2


def test_imagefolder_strict_raises_naming_the_corrupt_file(folder):
    with pytest.raises(ValueError, match=r"broken\.jpg.*strict=false"):
        data.imagefolder(root=folder, image_size=16, strict=True)


def test_imagefolder_verifies_each_folder_state_once_and_reuses_the_list(folder, tmp_path, monkeypatch):
    from gqbench.data import image_folder

    decoded = []
    real = image_folder._check_decodes
    monkeypatch.setattr(image_folder, "_check_decodes", lambda path: decoded.append(path.name) or real(path))
    cache = tmp_path / "cache"
    first = data.imagefolder(root=folder, image_size=16, val_fraction=0.34, cache_dir=cache)
    assert len(decoded) == 8 and len(list(cache.glob("verified-*.json"))) == 1
    decoded.clear()
    again = data.imagefolder(root=folder, image_size=16, val_fraction=0.34, cache_dir=cache)
    assert decoded == []  # the next job / rank only lists and stats the folder
    assert again.train.files == first.train.files and again.val.files == first.val.files
    assert [(p.name, why) for p, why in again.train.skipped] == [(p.name, why) for p, why in first.train.skipped]
    with pytest.raises(ValueError, match=r"broken\.jpg.*strict=false"):  # a cached bad file is still an error when strict
        data.imagefolder(root=folder, image_size=16, strict=True, cache_dir=cache)
    assert decoded == []
    save(folder / "cats" / "new.png", noise(20, 20, seed=9))  # the folder changed: verified again, new entry
    data.imagefolder(root=folder, image_size=16, val_fraction=0.34, cache_dir=cache)
    assert len(decoded) == 9 and len(list(cache.glob("verified-*.json"))) == 2


def test_imagefolder_config_caches_under_the_runs_folder_outside_the_signature(tmp_path):
    from conftest import compose_config

    from gqbench.config import run_signature

    cfg = compose_config(["data=imagefolder", "data.root=/some/where"], tmp_path)
    assert cfg.data.cache_dir == str(tmp_path / "runs" / "cache" / "imagefolder")
    moved = compose_config(["data=imagefolder", "data.root=/some/where", "data.cache_dir=/elsewhere"], tmp_path)
    assert run_signature(moved) == run_signature(cfg)


def test_imagefolder_missing_path_raises_naming_it(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir.*data.root="):
        data.imagefolder(root=missing)


def test_imagefolder_empty_folder_raises_naming_it(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files.*empty"):
        data.imagefolder(root=tmp_path / "empty")


def test_imagefolder_uses_train_and_val_subfolders(tmp_path):
    for i in range(3):
        save(tmp_path / "train" / f"class{i}" / f"t{i}.png", noise(20, 24, seed=i))
    save(tmp_path / "val" / "v.jpg", noise(24, 20, seed=9))
    splits = data.imagefolder(root=tmp_path, image_size=8, val_fraction=0.5)
    assert [p.name for p in splits.train.files] == ["t0.png", "t1.png", "t2.png"]
    assert [p.name for p in splits.val.files] == ["v.jpg"]
    assert "train/ and val/" in splits.description


def test_imagefolder_seeded_split_is_deterministic_and_disjoint(tmp_path):
    for i in range(20):
        save(tmp_path / f"{i:02d}.png", noise(10, 10, seed=i))
    first = data.imagefolder(root=tmp_path, image_size=8, seed=0, val_fraction=0.25)
    again = data.imagefolder(root=tmp_path, image_size=8, seed=0, val_fraction=0.25)
    other = data.imagefolder(root=tmp_path, image_size=8, seed=1, val_fraction=0.25)
    assert first.val.files == again.val.files and len(first.val) == 5
    assert not set(first.train.files) & set(first.val.files)
    assert len(set(first.train.files) | set(first.val.files)) == 20
    assert first.val.files != other.val.files
    capped = data.imagefolder(root=tmp_path, image_size=8, seed=0, val_fraction=0.25, max_images=8)
    assert len(capped.train) + len(capped.val) == 8


# ----------------------------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------------------------


def test_synthetic_is_smooth_seeded_and_splits_differ():
    splits = data.synthetic(image_size=16, seed=3, num_train=10, num_val=4)
    train, val = stack(splits.train), stack(splits.val)
    assert train.shape == (10, 3, 16, 16) and val.shape == (4, 3, 16, 16) and train.dtype == torch.float32
    assert train.min() >= -1 and train.max() <= 1 and train.abs().amax() == 1.0
    assert torch.equal(train, stack(data.synthetic(image_size=16, seed=3, num_train=10, num_val=4).train))
    assert not torch.equal(train, stack(data.synthetic(image_size=16, seed=4, num_train=10, num_val=4).train))
    assert not torch.equal(train[:4], val)
    # val does not move when the train size changes
    assert torch.equal(val, stack(data.synthetic(image_size=16, seed=3, num_train=3, num_val=4).val))
    # smooth: neighbouring pixels differ far less than random pixels would (~0.67 for uniform noise)
    assert (train[..., 1:] - train[..., :-1]).abs().mean() < 0.2


# ----------------------------------------------------------------------------------------------------------------
# loaders
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------------------------


def compose(name: str, seed: int, **overrides):
    """The data group as Hydra composes it: the option under `data`, beside the top-level `seed`."""
    root = OmegaConf.create({"seed": seed, "data": OmegaConf.load(CONF_DATA / f"{name}.yaml")})
    for key, value in overrides.items():
        OmegaConf.update(root, f"data.{key}", value)
    OmegaConf.resolve(root)
    return root.data


@pytest.mark.parametrize("name", ["bundled", "imagefolder", "synthetic"])
def test_config_defaults_match_the_function_defaults(name):
    config = OmegaConf.to_container(OmegaConf.load(CONF_DATA / f"{name}.yaml"))
    function = getattr(data, config.pop("_target_").rsplit(".", 1)[1])
    # the data seed is fixed, not the training seed: every training seed is evaluated on the same images
    assert config.pop("seed") == 0
    parameters = inspect.signature(function).parameters
    for key, value in config.items():
        assert parameters[key].kind is inspect.Parameter.KEYWORD_ONLY
        if value != "???" and not str(value).startswith("${paths."):  # run-folder paths: the config's job
            assert parameters[key].default == value, key


def test_bundled_config_split_does_not_follow_the_training_seed(bundled32):
    splits = instantiate(compose("bundled", seed=7))
    assert isinstance(splits, data.DataSplits)
    assert splits.val.sources == bundled32.val.sources == data.bundled(seed=0).val.sources
    assert splits.val.sources != data.bundled(seed=7).val.sources
    assert "seed 0" in splits.description


def test_imagefolder_and_synthetic_configs_instantiate(folder):
    splits = instantiate(compose("imagefolder", seed=0, root=str(folder), image_size=16, cache_dir=None))
    assert isinstance(splits, data.DataSplits) and len(splits.train) + len(splits.val) == 6
    assert splits.train[0].shape == (3, 16, 16)
    splits = instantiate(compose("synthetic", seed=0, num_train=4, num_val=2))
    assert torch.equal(stack(splits.val), stack(data.synthetic(seed=0, num_train=4, num_val=2).val))
