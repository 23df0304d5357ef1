"""ViT backbone (gqbench/models/vit.py): token grid, the paper's ViT-B/8 size, patch layout, clamp, build, a job."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import assert_metrics_recompute, compose_config
from gqbench.models.autoencoder import build_autoencoder
from gqbench.models.vit import ViTDecoder, ViTEncoder
from gqbench.job import run_job
from quantizers import build_quantizer

SMALL = dict(resolution=32, patch_size=4, width=32, layers=2, heads=4)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_encoder_and_decoder_map_images_to_the_patch_grid_and_back():
    enc, dec = ViTEncoder(out_channels=10, **SMALL), ViTDecoder(in_channels=5, **SMALL)
    assert enc.downsample_factor == dec.downsample_factor == 4
    x = torch.randn(2, 3, 32, 32)
    h = enc(x)
    assert h.shape == (2, 10, 8, 8)
    assert dec(h[:, :5]).shape == x.shape


def test_paper_vit_b8_parameter_count_matches_the_architecture():
    w, mlp, n, layers = 768, 3072, 32 * 32, 12
    block = (3 * w * w + 3 * w) + (w * w + w) + 2 * (2 * w) + (w * mlp + mlp) + (mlp * w + w)
    trunk = n * w + 2 * (2 * w) + layers * block  # pos, ln_pre, ln_post, blocks
    with torch.device("meta"):
        enc = ViTEncoder(out_channels=32, resolution=256)
        dec = ViTDecoder(in_channels=16, resolution=256, output_clamp=1.0)
    assert n_params(enc) == trunk + 192 * w + (w * 32 + 32)  # bias-free patch embedding, head to 2·16
    assert n_params(dec) == trunk + (16 * w + w) + (w * mlp + mlp) + (mlp * 192 + 192)


def test_patches_follow_the_pixel_grid():
    """The patch embedding sees each p x p patch as one row, in raster order of the patch grid, channel-major
    inside the patch (the layout the decoder's unpatchify inverts)."""
    enc = ViTEncoder(out_channels=4, **SMALL)
    captured = []
    enc.patch_embed.register_forward_hook(lambda m, a, out: captured.append(a[0]))
    x = torch.zeros(1, 3, 32, 32)
    x[0, :, 4:8, 8:12] = torch.arange(48.0).view(3, 4, 4)  # patch row 1, column 2 -> token 1 * 8 + 2
    enc(x)
    patches = captured[0][0]
    assert torch.count_nonzero(patches.abs().sum(1)) == 1 and patches[10].abs().sum() > 0
    assert torch.equal(patches[10], torch.arange(48.0))  # channel-major inside the patch


def test_decoder_output_clamp_and_last_layer():
    dec = ViTDecoder(in_channels=4, output_clamp=1.0, **SMALL)
    with torch.no_grad():
        dec.to_pixels.bias.fill_(5.0)
    out = dec(torch.randn(1, 4, 8, 8))
    assert out.max() <= 1.0 and dec.last_layer is dec.to_pixels.weight
    unclamped = ViTDecoder(in_channels=4, **SMALL)
    with torch.no_grad():
        unclamped.to_pixels.bias.fill_(5.0)
    assert unclamped(torch.randn(1, 4, 8, 8)).max() > 1.0


@pytest.mark.parametrize("kwargs, message", [
    (dict(resolution=30), "resolution=30 is not divisible by patch_size=4"),
    (dict(width=30), "width=30 must be a positive multiple of heads=4"),
    (dict(output_clamp=0.0), "output_clamp=0.0"),
])
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViTDecoder(in_channels=4, **{**SMALL, **kwargs})


def test_wrong_image_size_names_the_built_resolution():
    enc = ViTEncoder(out_channels=4, **SMALL)
    with pytest.raises(ValueError, match="resolution=32"):
        enc(torch.randn(1, 3, 16, 16))


def test_build_autoencoder_picks_the_arch():
    q = build_quantizer("gq", codebook_size=16, codebook_dim=2, num_codebooks=4)
    cfg = SimpleNamespace(arch="vit", z_channels=8, patch_size=4, width=32, layers=1, heads=2, mlp_ratio=2.0,
                          dropout=0.0, output_clamp=1.0)
    model = build_autoencoder(cfg, q, image_size=32)
    assert isinstance(model.encoder, ViTEncoder) and model.last_layer is model.decoder.to_pixels.weight
    out = model(torch.randn(2, 3, 32, 32))
    assert out.x_hat.shape == (2, 3, 32, 32) and out.quant.z_q.shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="model.arch='mlp'"):
        build_autoencoder(SimpleNamespace(**{**vars(cfg), "arch": "mlp"}), q, image_size=32)


@pytest.mark.job
def test_a_vit_job_trains_and_evaluates(tmp_path):
    overrides = ["data=synthetic", "data.image_size=16", "data.num_train=64", "data.num_val=16", "model=vit_tiny",
                 "model.patch_size=2", "model.width=32", "model.layers=1", "model.heads=2", "model.z_channels=4",
                 "quantizer.codebook_size=16", "quantizer.codebook_dim=2", "train.batch_size=8", "train.max_steps=6",
                 "train.log_every=3", "train.checkpoint_every=3", "eval.batch_size=8", "eval.grid_images=4",
                 "device=cpu"]
    cfg = compose_config(overrides, tmp_path)
    metrics = run_job(cfg, output_dir=tmp_path / "out")
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["status"] == "finished" and metrics["tokens_per_image"] == 64
    assert_metrics_recompute(metrics, cfg, tmp_path / "runs" / "jobs" / record["signature"])


def test_decoder_unpatchify_inverts_the_encoder_patch_layout():
    dec = ViTDecoder(in_channels=4, **SMALL)
    pixels = torch.arange(64 * 48.0).view(1, 64, 48)  # token t, value = t * 48 + (c * 16 + i * 4 + j)
    dec.to_pixels = torch.nn.Identity()
    dec.ffn = torch.nn.Identity()
    dec.transform = lambda tokens: pixels  # bypass the blocks: check only the reshape
    x = dec(torch.zeros(1, 4, 8, 8))
    enc = ViTEncoder(out_channels=4, **SMALL)
    captured = []
    enc.patch_embed.register_forward_hook(lambda m, a, out: captured.append(a[0]))
    enc(x)
    assert torch.equal(captured[0], pixels)
