"""PSNR and SSIM per image, computed on the evaluation device.

Protocol (gq-reference §4) and our deviations:
- PSNR: per image on the 0–255 float scale, x255 = (x + 1) · 127.5, no rounding or clamping, MSE over C·H·W;
  reported as the mean (and std) over images. Same as the reference.
- SSIM: per image on RGB, data_range 255, 11×11 Gaussian window σ = 1.5 (scikit-image's truncate 3.5), K1 = 0.01,
  K2 = 0.03, population covariance (Wang et al. 2004), mean over the valid window positions of each channel, then
  over channels — scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255, channel_axis=-1)`. The reference uses pytorch_msssim with the same
  settings; the two libraries are not bit-identical (expect differences in the 4th decimal).
  We compute it in float64 with torch on the evaluation device (a separable valid-mode Gaussian filter), so at
  paper scale (50k images at 256²) SSIM is not a serial CPU stage the GPU waits for (scikit-image: ~14 ms per
  256² image on one core). tests/test_metrics.py holds it equal to scikit-image to 1e-9; `ssim_skimage` is that
  reference. Images smaller than the 11-px window get SSIM = NaN.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import Tensor

from .base import EvalBatch, Metric, PerImageValues

PSNR = "psnr"
PSNR_STD = "psnr_std"
SSIM = "ssim"
CONTINUOUS = "continuous_"  # prefix for the un-quantized path's metrics (GQ's Gaussian VAE, TokenBridge)
SSIM_WINDOW = 11  # px
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0


def to_255_scale(x: Tensor) -> Tensor:
    """[-1, 1] images -> float64 on the 0–255 scale, unclamped, on the same device."""
    return (x.detach().double() + 1.0) * 127.5


def to_uint8_scale(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) float64 numpy on the 0–255 scale, unclamped (scikit-image's layout)."""
    return to_255_scale(x).cpu().permute(0, 2, 3, 1).numpy()


def _gaussian_taps(device: torch.device) -> Tensor:
    radius = (SSIM_WINDOW - 1) // 2
    r = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return g / g.sum()


def psnr_ssim_tensors(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image PSNR (dB) and SSIM of two (B, 3, H, W) batches in [-1, 1]: float64 tensors of shape (B,) on the
    batch's device (no host synchronisation)."""
    a, b = to_255_scale(x), to_255_scale(x_hat)
    mse = (a - b).square().mean(dim=(1, 2, 3))
    psnr = 10.0 * torch.log10(DATA_RANGE**2 / mse)
    n, c, h, w = a.shape
    if min(h, w) < SSIM_WINDOW:
        return psnr, torch.full_like(psnr, math.nan)
    g = _gaussian_taps(a.device)
    moments = torch.cat([a, b, a * a, b * b, a * b], dim=1)  # (B, 5C, H, W): one grouped filter for all five
    k = moments.shape[1]
    filtered = F.conv2d(moments, g.view(1, 1, -1, 1).expand(k, 1, -1, 1), groups=k)  # valid positions only
    filtered = F.conv2d(filtered, g.view(1, 1, 1, -1).expand(k, 1, 1, -1), groups=k)
    ux, uy, uxx, uyy, uxy = filtered.split(c, dim=1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return psnr, ssim_map.mean(dim=(2, 3)).mean(dim=1)


def psnr_ssim_per_image(x: Tensor, x_hat: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """psnr_ssim_tensors as numpy arrays."""
    psnr, ssim = psnr_ssim_tensors(x, x_hat)
    return psnr.cpu().numpy(), ssim.cpu().numpy()


def psnr_ssim_skimage(x: Tensor, x_hat: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The same numbers from scikit-image, one image at a time on the CPU: the reference the tests and
    `python -m gqbench.evaluate --bench` compare against."""
    ref, rec = to_uint8_scale(x), to_uint8_scale(x_hat)
    ssim_possible = min(ref.shape[1], ref.shape[2]) >= SSIM_WINDOW
    psnr, ssim = np.empty(len(ref)), np.full(len(ref), np.nan)
    for i in range(len(ref)):
        psnr[i] = peak_signal_noise_ratio(ref[i], rec[i], data_range=DATA_RANGE)
        if ssim_possible:
            ssim[i] = structural_similarity(ref[i], rec[i], data_range=DATA_RANGE, channel_axis=-1,
                                            gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False)
    return psnr, ssim


def summarize(values: list[float] | np.ndarray) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()) if arr.size else math.nan, float(arr.std()) if arr.size else math.nan


class PsnrSsim(Metric):
    """PSNR (mean, std) and SSIM (mean) over images, of the quantized reconstruction or (output="x_hat_continuous",
    prefix=CONTINUOUS) of the continuous one; a method without that output contributes nothing."""

    def __init__(self, output: str = "x_hat", prefix: str = ""):
        self.output, self.prefix = output, prefix
        self.psnr, self.ssim = PerImageValues(), PerImageValues()

    def update(self, batch: EvalBatch) -> None:
        x_hat = getattr(batch.out, self.output)
        if x_hat is None:
            return
        psnr, ssim = psnr_ssim_tensors(batch.x, x_hat)
        self.psnr.add(batch.number, psnr)
        self.ssim.add(batch.number, ssim)

    def state(self):
        return self.psnr.state(), self.ssim.state()

    def merge(self, states) -> None:
        self.psnr.merge([s[0] for s in states])
        self.ssim.merge([s[1] for s in states])

    def summary(self) -> dict[str, float]:
        psnr = self.psnr.values().numpy()
        if psnr.size == 0:
            return {}
        mean, std = summarize(psnr)
        return {self.prefix + PSNR: mean, self.prefix + PSNR_STD: std,
                self.prefix + SSIM: float(self.ssim.values().numpy().mean())}

    def per_image(self) -> dict[str, np.ndarray]:
        psnr = self.psnr.values().numpy()
        return {self.prefix + PSNR: psnr, self.prefix + SSIM: self.ssim.values().numpy()} if psnr.size else {}

    def protocol(self) -> dict[str, str]:
        if self.prefix:
            return {}
        return {"protocol.psnr_ssim": "per image on the unclamped 0-255 scale; SSIM Gaussian 11x11 sigma 1.5, "
                                      "K1 0.01, K2 0.03, population covariance, valid positions (= scikit-image)"}
