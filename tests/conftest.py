"""Shared fixtures: compose the real Hydra config, shrunk for CPU tests, with every output in tmp_path."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"

# A job small enough for a 2-core CPU: synthetic 16x16 images, a 2-level UNet, 8x8 tokens.
FAST_OVERRIDES = [
    "data=synthetic", "data.image_size=16", "data.num_train=64", "data.num_val=16",
    "model.ch=16", "model.ch_mult=[1,2]", "model.attn_resolutions=[8]", "model.z_channels=4",
    "quantizer.codebook_size=16", "quantizer.codebook_dim=2",
    "train.batch_size=8", "train.max_steps=12", "train.log_every=4", "train.checkpoint_every=5",
    "eval.batch_size=8", "eval.grid_images=4", "device=cpu",
]


def compose_config(overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.runs = str(tmp_path / "runs")
    return cfg


@pytest.fixture
def fast_cfg(tmp_path):
    return compose_config(FAST_OVERRIDES, tmp_path)
