"""Metric definitions on hand-made inputs: PSNR/SSIM scale and protocol, codebook usage/entropy/perplexity."""
from __future__ import annotations

import math

import numpy as np
import torch

from gqbench import metrics as M
from gqbench.evaluate import StatAccumulator


def test_psnr_is_per_image_on_the_0_255_scale_without_clamping():
    x = torch.zeros(2, 3, 16, 16)
    x_hat = x.clone()
    x_hat[0] += 2 / 255.0  # +1 grey level everywhere -> MSE 1 on the 0-255 scale
    x_hat[1] += 20 / 255.0  # +10 levels -> MSE 100
    psnr, ssim = M.psnr_ssim_per_image(x, x_hat)
    assert np.allclose(psnr, [10 * math.log10(255**2 / 1), 10 * math.log10(255**2 / 100)], atol=1e-6)
    # values outside [-1, 1] are kept (the reference does not clamp before PSNR)
    over = M.psnr_ssim_per_image(torch.ones(1, 3, 16, 16), torch.full((1, 3, 16, 16), 1 + 2 / 255.0))[0]
    assert np.isclose(over[0], 10 * math.log10(255**2))
    assert ssim[0] > ssim[1] and np.all(ssim <= 1)
    with np.errstate(divide="ignore"):  # identical images: PSNR is +inf
        assert np.allclose(M.psnr_ssim_per_image(x[:1], x[:1] + 0)[1], 1.0)


def test_ssim_is_nan_below_the_window_size():
    x = torch.zeros(1, 3, 8, 8)
    psnr, ssim = M.psnr_ssim_per_image(x, x + 0.1)
    assert np.isfinite(psnr).all() and np.isnan(ssim).all()


def test_codebook_usage_entropy_and_perplexity_per_sub_codebook():
    counter = M.CodebookCounter(codebook_size=4, num_codebooks=2)
    # sub-codebook 0 uses all 4 codes uniformly; sub-codebook 1 uses codes {0, 1} only, uniformly
    idx = torch.tensor([[0, 1, 2, 3], [0, 1, 0, 1]]).view(1, 2, 2, 2)
    counter.update(idx)
    counter.update(idx)
    s = counter.summary()
    assert s[f"{M.CODEBOOK_USAGE}/0"] == 1.0 and s[f"{M.CODEBOOK_USAGE}/1"] == 0.5
    assert s[M.CODEBOOK_USAGE] == 0.75 and s[M.CODEBOOK_USAGE_MIN] == 0.5
    assert math.isclose(s[M.INDEX_ENTROPY], (2.0 + 1.0) / 2)
    assert math.isclose(s[f"{M.PERPLEXITY}/0"], 4.0) and math.isclose(s[f"{M.PERPLEXITY}/1"], 2.0)
    assert math.isclose(s[M.PERPLEXITY], 3.0)


def test_nominal_rate():
    r = M.rate(bits_per_token=16, tokens_per_image=1024, image_size=256)
    assert r[M.BPP] == 0.25  # the paper's 0.25-bpp setting: 32x32 tokens of 16 bits at 256 px


def test_quantizer_stats_accumulate_means_mins_and_maxes():
    acc = StatAccumulator()
    acc.update({"bits_mean": 8.0, "bits_min": 3.0, "bits_max": 9.0}, 10)
    acc.update({"bits_mean": 6.0, "bits_min": 4.0, "bits_max": 12.0}, 30)
    assert acc.summary() == {"bits_mean": 6.5, "bits_min": 3.0, "bits_max": 12.0}
