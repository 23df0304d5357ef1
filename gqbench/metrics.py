"""Reconstruction and codebook metrics. Metric names are constants so MLflow keys and report columns agree.

Protocol (gq-reference §4) and our deviations:
- PSNR: per image on the 0–255 float scale, x255 = (x + 1) · 127.5, no rounding or clamping, MSE over C·H·W;
  reported as the mean (and std) over images. Same as the reference.
- SSIM: per image on RGB, data_range 255, 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, population
  covariance (Wang et al. 2004), via scikit-image. The reference uses pytorch_msssim with the same settings;
  both average over the valid window positions only, but the two libraries are not bit-identical (expect
  differences in the 4th decimal). The Gaussian window is 11 px wide: smaller images get SSIM = NaN.
- Codebook usage/entropy: over ALL evaluated indices (the reference counts rank 0's shard only), per
  sub-codebook; entropy is exact −Σ p log2 p (the reference adds 1e-5 inside the log).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

PSNR = "psnr"
PSNR_STD = "psnr_std"
SSIM = "ssim"
CODEBOOK_USAGE = "codebook_usage"
CODEBOOK_USAGE_MIN = "codebook_usage_min"
INDEX_ENTROPY = "index_entropy_bits"
PERPLEXITY = "perplexity"
BITS_PER_TOKEN = "bits_per_token"
CODEBOOK_SIZE = "codebook_size"  # entries per sub-codebook, as built
NUM_CODEBOOKS = "num_codebooks"  # sub-indices per token
CODEBOOK_DIM = "codebook_dim"  # dims per sub-index
TOKENS_PER_IMAGE = "tokens_per_image"
BPP = "bits_per_pixel"
CONTINUOUS = "continuous_"  # prefix for GQ's un-quantized ("Gaussian VAE") reconstruction metrics
SSIM_WINDOW = 11  # px: the Gaussian window (σ = 1.5, truncated at 3.5σ) scikit-image uses


def to_uint8_scale(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float64 on the 0–255 scale, unclamped."""
    return ((x.detach().double().cpu() + 1.0) * 127.5).permute(0, 2, 3, 1).numpy()


def psnr_ssim_per_image(x: Tensor, x_hat: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR (dB) and SSIM for two (B, 3, H, W) batches in [-1, 1]."""
    ref, rec = to_uint8_scale(x), to_uint8_scale(x_hat)
    ssim_possible = min(ref.shape[1], ref.shape[2]) >= SSIM_WINDOW
    psnr = np.empty(len(ref))
    ssim = np.full(len(ref), np.nan)
    for i in range(len(ref)):
        psnr[i] = peak_signal_noise_ratio(ref[i], rec[i], data_range=255.0)
        if ssim_possible:
            ssim[i] = structural_similarity(
                ref[i], rec[i], data_range=255.0, channel_axis=-1,
                gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            )
    return psnr, ssim


def as_numbers(stats: dict[str, Tensor | float], reduce=None) -> dict[str, float]:
    """Stats as Python floats, with one device->host copy for all of them. `reduce`, if given, is applied in
    place to the stacked float64 vector first (the trainer averages it over ranks)."""
    keys = list(stats)
    if not keys:
        return {}
    device = next((v.device for v in stats.values() if isinstance(v, Tensor)), torch.device("cpu"))
    vector = torch.stack([(v.detach() if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float64))
                          .reshape(()).to(device, torch.float64) for v in stats.values()])
    if reduce is not None:
        reduce(vector)
    return dict(zip(keys, vector.tolist()))


class CodebookCounter:
    """Accumulates index histograms per sub-codebook: (B, num_codebooks, H, W) int64 batches."""

    def __init__(self, codebook_size: int, num_codebooks: int):
        self.codebook_size = codebook_size
        self.counts = torch.zeros(num_codebooks, codebook_size, dtype=torch.int64)

    def update(self, indices: Tensor) -> None:
        flat = indices.detach().transpose(0, 1).reshape(indices.shape[1], -1).cpu()
        for j in range(flat.shape[0]):
            self.counts[j] += torch.bincount(flat[j], minlength=self.codebook_size)

    def merge_(self, counts: Tensor) -> None:
        """Add another process's histogram (distributed evaluation gathers them here)."""
        self.counts += counts.to(self.counts)

    def summary(self) -> dict[str, float]:
        counts = self.counts.double()
        total = counts.sum(1, keepdim=True).clamp_min(1)
        p = counts / total
        entropy = -(torch.where(p > 0, p * p.log2(), torch.zeros_like(p))).sum(1)  # (num_codebooks,)
        usage = (self.counts > 0).double().mean(1)
        out = {
            CODEBOOK_USAGE: usage.mean().item(),
            CODEBOOK_USAGE_MIN: usage.min().item(),
            INDEX_ENTROPY: entropy.mean().item(),
            PERPLEXITY: (2.0 ** entropy).mean().item(),
        }
        if len(usage) > 1:
            for j in range(len(usage)):
                out[f"{CODEBOOK_USAGE}/{j}"] = usage[j].item()
                out[f"{PERPLEXITY}/{j}"] = (2.0 ** entropy[j]).item()
        return out


def code_shape(quantizer) -> dict[str, float]:
    """The code as built, which the config may only name (FSQ's levels give ∏ L_i codes, not the nominal 2^k)."""
    return {
        CODEBOOK_SIZE: float(quantizer.codebook_size),
        NUM_CODEBOOKS: float(quantizer.num_codebooks),
        CODEBOOK_DIM: float(getattr(quantizer, "codebook_dim", float("nan"))),
    }


def rate(bits_per_token: float, tokens_per_image: int, image_size: int) -> dict[str, float]:
    """Nominal (fixed-length) rate: no entropy coding, as in the paper."""
    return {
        BITS_PER_TOKEN: float(bits_per_token),
        TOKENS_PER_IMAGE: float(tokens_per_image),
        BPP: bits_per_token * tokens_per_image / float(image_size * image_size),
    }


def summarize(values: list[float] | np.ndarray) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if arr.size else math.nan, float(arr.std()) if arr.size else math.nan
