"""Shared fixtures: compose the real Hydra config, shrunk for CPU tests, with every output in tmp_path."""
from __future__ import annotations

import os
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
    "eval.batch_size=8", "eval.grid_images=4", "eval.download_weights=false", "device=cpu",
]

BASELINE_OVERRIDES = {  # each fits the 4-channel test latent
    "vq": ["quantizer.codebook_size=16", "quantizer.codebook_dim=2", "quantizer.init=kmeans",
           "quantizer.dead_code_threshold=0.1"],
    "fsq": ["quantizer.codebook_size=null", "quantizer.codebook_dim=null", "quantizer.levels=[5,3]"],
    "lfq": ["quantizer.codebook_size=4", "quantizer.codebook_dim=2"],
    "bsq": ["quantizer.codebook_size=16", "quantizer.codebook_dim=4"],
    "tokenbridge": ["quantizer.codebook_size=4", "quantizer.codebook_dim=1"],
}


def compose_config(overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.runs = str(tmp_path / "runs")
    return cfg


def pytest_configure(config):
    """Tests never see this machine's torch hub cache (downloaded Inception/LPIPS weights would change which
    code paths run, and how long they take): TORCH_HOME is an empty folder unless a test sets its own."""
    import tempfile

    os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="gqbench-test-torch-home-")


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory):
    """Generated (random) weight files: torch-fidelity's Inception and torchvision's AlexNet trunk for lpips."""
    from weight_files import make_inception_weights, make_torchvision_trunk

    # shared by the xdist workers of one session (writes are atomic, contents seeded)
    root = Path(os.environ.get("GQBENCH_TEST_WEIGHTS", tmp_path_factory.getbasetemp().parent / "weights"))
    return {"inception": make_inception_weights(root / "inception.pth"),
            "alex": make_torchvision_trunk("alex", root / "alexnet.pth")}


@pytest.fixture
def fast_cfg(tmp_path):
    return compose_config(FAST_OVERRIDES, tmp_path)


def recompute_eval_metrics(cfg: DictConfig, job_dir: Path) -> dict[str, float]:
    """The job's headline metrics recomputed from its checkpoint without gqbench.evaluate or gqbench.metrics:
    PSNR from the MSE formula, usage as distinct codes / K and perplexity as 2^H per sub-codebook from
    numpy counts over every evaluated index. A metric-definition bug in the job cannot also be in here."""
    import numpy as np
    import torch

    from gqbench.checkpoint import load_checkpoint
    from gqbench.job import assemble
    from gqbench.jobdir import JobDir

    parts = assemble(cfg)
    data, model = parts.data, parts.model
    model.load_state_dict(load_checkpoint(JobDir(job_dir).checkpoint)["model"])
    model.eval()
    n = len(data.val) if cfg.eval.num_images is None else min(cfg.eval.num_images, len(data.val))
    images = torch.stack([data.val[i] for i in range(n)])
    psnr, indices = [], []
    with torch.no_grad():
        for batch in images.split(cfg.eval.batch_size):
            out = model(batch)
            mse = ((batch.double() - out.x_hat.double()) * 127.5).square().mean((1, 2, 3))
            psnr += (10 * np.log10(255.0**2 / mse.numpy())).tolist()
            indices.append(out.quant.indices)
    k = model.quantizer.codebook_size
    per_codebook = torch.cat(indices).transpose(0, 1).reshape(model.quantizer.num_codebooks, -1).numpy()
    usage, perplexity = [], []
    for row in per_codebook:
        counts = np.bincount(row, minlength=k)
        p = counts[counts > 0] / counts.sum()
        usage.append(len(p) / k)
        perplexity.append(2 ** float(-(p * np.log2(p)).sum()))
    return {"psnr": float(np.mean(psnr)), "codebook_usage": float(np.mean(usage)),
            "perplexity": float(np.mean(perplexity)), "eval_images": float(n)}


def assert_metrics_recompute(metrics: dict[str, float], cfg: DictConfig, job_dir: Path) -> None:
    import pytest

    want = recompute_eval_metrics(cfg, job_dir)
    assert metrics["eval_images"] == want["eval_images"]
    assert metrics["psnr"] == pytest.approx(want["psnr"], rel=1e-9, abs=1e-9)
    assert metrics["codebook_usage"] == pytest.approx(want["codebook_usage"], rel=1e-12)
    assert metrics["perplexity"] == pytest.approx(want["perplexity"], rel=1e-9)
