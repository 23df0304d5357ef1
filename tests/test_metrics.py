"""Metric definitions on hand-made inputs: PSNR/SSIM scale and protocol, codebook usage/entropy/perplexity."""
from __future__ import annotations

import math

import numpy as np
import torch

from gqbench import metrics as M
from gqbench.metrics import StatAccumulator


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


def reference_ssim(ref: np.ndarray, rec: np.ndarray, data_range: float = 255.0) -> float:
    """Wang et al. 2004 written out: 11x11 Gaussian window (σ 1.5), population moments, K1 0.01, K2 0.03, mean
    over the valid window positions of each channel, then over channels. (H, W, C) float arrays."""
    from scipy.ndimage import correlate

    r = np.arange(-5, 6)
    g = np.exp(-(r**2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_channel = []
    for c in range(ref.shape[-1]):
        x, y = ref[..., c], rec[..., c]
        mean = lambda a: correlate(a, window, mode="constant")[5:-5, 5:-5]  # valid positions only
        mx, my = mean(x), mean(y)
        vx, vy, cxy = mean(x * x) - mx**2, mean(y * y) - my**2, mean(x * y) - mx * my
        ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        per_channel.append(ssim_map.mean())
    return float(np.mean(per_channel))


def smooth_low_contrast_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth images in a narrow grey band, where SSIM depends strongly on data_range (noise would hide it)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 24), indexing="ij")
    phase = torch.rand(2, 3, 1, 1, generator=g) * 6
    x = 0.05 * torch.sin(4 * xx + 3 * yy + phase)  # values within ±0.05 of mid-grey
    x_hat = x + 0.02 * torch.cos(5 * xx - 2 * yy + phase * 2)
    return x, x_hat


def test_ssim_equals_the_formula_written_out_on_smooth_low_contrast_images():
    x, x_hat = smooth_low_contrast_pair()
    _, ssim = M.psnr_ssim_per_image(x, x_hat)
    ref, rec = [((t.double() + 1) * 127.5).permute(0, 2, 3, 1).numpy() for t in (x, x_hat)]  # 0-255, HWC
    want = [reference_ssim(ref[i], rec[i]) for i in range(len(ref))]
    assert np.allclose(ssim, want, rtol=0, atol=1e-9), (ssim, want)
    # images where data_range matters: taking the [-1, 1] range (2) for the 0-255 scale moves SSIM 0.99 -> 0.85
    assert all(reference_ssim(ref[i], rec[i], data_range=2.0) < w - 0.1 for i, w in enumerate(want))


def test_psnr_equals_the_formula_written_out():
    x, x_hat = smooth_low_contrast_pair(seed=1)
    psnr, _ = M.psnr_ssim_per_image(x, x_hat)
    a, b = ((x.double() + 1) * 127.5), ((x_hat.double() + 1) * 127.5)
    mse = (a - b).square().mean((1, 2, 3))
    assert np.allclose(psnr, (10 * torch.log10(255.0**2 / mse)).numpy(), rtol=0, atol=1e-9)


def test_ssim_is_nan_below_the_window_size():
    x = torch.zeros(1, 3, 8, 8)
    psnr, ssim = M.psnr_ssim_per_image(x, x + 0.1)
    assert np.isfinite(psnr).all() and np.isnan(ssim).all()
    for h, w in ((10, 16), (16, 10)):  # either side below 11 px
        x = torch.rand(1, 3, h, w) * 2 - 1
        assert np.isnan(M.psnr_ssim_per_image(x, x * 0.9)[1]).all()
    x = torch.rand(1, 3, 11, 11) * 2 - 1  # exactly one window: defined
    assert np.isfinite(M.psnr_ssim_per_image(x, x * 0.9)[1]).all()


def test_uint8_scale_maps_minus_one_to_zero_and_one_to_255_in_hwc_order():
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 4)
    out = M.to_uint8_scale(x)
    assert out.shape == (1, 2, 4, 3) and out.dtype == np.float64
    assert out[0, 1, 3].tolist() == [0.0, 127.5, 255.0]


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


def test_codebook_counts_accumulate_over_every_batch():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 8, (3, 2, 4, 4), generator=g), torch.randint(0, 3, (5, 2, 4, 4), generator=g),
               torch.full((1, 2, 4, 4), 7)]
    counter = M.CodebookCounter(codebook_size=8, num_codebooks=2)
    for b in batches:
        counter.update(b)
    s = counter.summary()
    everything = torch.cat(batches)
    for j in range(2):  # an independent count per sub-codebook: numpy over all indices at once
        values = everything[:, j].flatten().numpy()
        counts = np.bincount(values, minlength=8)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log2(p)).sum())
        assert math.isclose(s[f"{M.CODEBOOK_USAGE}/{j}"], len(np.unique(values)) / 8)
        assert math.isclose(s[f"{M.PERPLEXITY}/{j}"], 2**entropy, rel_tol=1e-12)
        assert torch.equal(counter.counts[j], torch.from_numpy(counts))
    merged = M.CodebookCounter(codebook_size=8, num_codebooks=2)
    merged.update(batches[0])
    other = M.CodebookCounter(codebook_size=8, num_codebooks=2)
    for b in batches[1:]:
        other.update(b)
    merged.merge_(other.counts)  # two processes' histograms merge to the one-process histogram
    assert torch.equal(merged.counts, counter.counts)


def test_counter_edge_cases_single_index_empty_and_one_codebook():
    one = M.CodebookCounter(codebook_size=4, num_codebooks=1)
    one.update(torch.tensor([[[[2]]]]))  # a single index: one code used once
    s = one.summary()
    assert s[M.CODEBOOK_USAGE] == 0.25 and s[M.INDEX_ENTROPY] == 0.0 and s[M.PERPLEXITY] == 1.0
    assert not any("/" in k for k in s)  # per-sub-codebook keys only when there are several
    assert one.counts.dtype == torch.int64  # exact counts beyond 2^24 indices
    empty = M.CodebookCounter(codebook_size=4, num_codebooks=2).summary()
    assert empty[M.CODEBOOK_USAGE] == 0.0 and empty[M.INDEX_ENTROPY] == 0.0 and empty[M.PERPLEXITY] == 1.0
    # mean perplexity is the mean of 2^H_j (not 2^mean H, nor 2·H)
    two = M.CodebookCounter(codebook_size=8, num_codebooks=2)
    two.update(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 0, 0, 0, 1]]).view(1, 2, 2, 4))
    h1 = -(7 / 8 * math.log2(7 / 8) + 1 / 8 * math.log2(1 / 8))
    assert math.isclose(two.summary()[M.PERPLEXITY], (8 + 2**h1) / 2, rel_tol=1e-12)


def test_nominal_rate():
    r = M.rate(bits_per_token=16, tokens_per_image=1024, image_size=256)
    assert r[M.BPP] == 0.25  # the paper's 0.25-bpp setting: 32x32 tokens of 16 bits at 256 px
    assert r == {M.BITS_PER_TOKEN: 16.0, M.TOKENS_PER_IMAGE: 1024.0, M.BPP: 0.25}
    assert M.rate(bits_per_token=12, tokens_per_image=64, image_size=32)[M.BPP] == 12 * 64 / 1024


def test_summary_is_mean_and_population_std_and_nan_when_empty():
    assert M.summarize([1.0, 2.0, 6.0]) == (3.0, math.sqrt(14 / 3))
    values = np.array([0.1, 0.2, 0.7, 1.3], dtype=np.float32)  # float32 inputs are averaged in float64
    as64 = values.astype(np.float64)
    assert M.summarize(values) == (float(as64.mean()), float(as64.std()))
    mean, std = M.summarize([])
    assert math.isnan(mean) and math.isnan(std)


def test_code_shape_reports_the_code_as_built():
    from quantizers import build_quantizer

    fsq = build_quantizer("fsq", codebook_size=None, levels=[5, 3], num_codebooks=2)
    assert M.code_shape(fsq) == {M.CODEBOOK_SIZE: 15.0, M.NUM_CODEBOOKS: 2.0, M.CODEBOOK_DIM: 2.0}
    from types import SimpleNamespace

    shape = M.code_shape(SimpleNamespace(codebook_size=4, num_codebooks=3))  # a method without codebook_dim
    assert shape[M.CODEBOOK_SIZE] == 4.0 and shape[M.NUM_CODEBOOKS] == 3.0 and math.isnan(shape[M.CODEBOOK_DIM])


def test_quantizer_stats_accumulate_means_mins_and_maxes():
    acc = StatAccumulator()
    acc.update({"bits_mean": 8.0, "bits_min": 3.0, "bits_max": 9.0}, 10)
    acc.update({"bits_mean": 6.0, "bits_min": 4.0, "bits_max": 12.0}, 30)
    assert acc.summary() == {"bits_mean": 6.5, "bits_min": 3.0, "bits_max": 12.0}


def test_stats_become_numbers_in_one_read_back_after_an_optional_reduction():
    stats = {"b": torch.tensor(2.5), "a": 1, "c": torch.tensor([4.0], dtype=torch.float64), "d": torch.tensor(True),
             "e": 0.1}
    assert M.as_numbers(stats) == {"b": 2.5, "a": 1.0, "c": 4.0, "d": 1.0, "e": 0.1}  # a Python float stays exact
    assert list(M.as_numbers(stats)) == ["b", "a", "c", "d", "e"]  # the order of the stats
    seen = []

    def third(vector):  # e.g. an average over ranks: applied once, in place, to all of them, in float64
        seen.append(vector.dtype)
        vector /= 3

    got = M.as_numbers({"b": torch.tensor(2.5), "d": torch.tensor(True)}, reduce=third)
    assert got == {"b": 2.5 / 3, "d": 1 / 3} and seen == [torch.float64]
    assert M.as_numbers({}) == {}


def test_accumulators_of_two_shards_merge_to_the_accumulator_of_both():
    a, b, both = StatAccumulator(), StatAccumulator(), StatAccumulator()
    for acc, stats, n in ((a, {"m": 2.0, "x_min": 1.0, "x_max": 5.0}, 3), (b, {"m": 6.0, "x_min": -1.0, "x_max": 4.0}, 1)):
        acc.update(stats, n)
        both.update(stats, n)
    a.merge(b)
    assert a.summary() == both.summary() == {"m": 3.0, "x_min": -1.0, "x_max": 5.0}
    assert a.count == 4
