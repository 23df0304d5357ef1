"""Target Divergence Constraint (TDC) — the KL regulariser that trains a Gaussian VAE for Gaussian Quant.

Xu et al., "Vector Quantization using Gaussian Variational Autoencoder", arXiv 2512.06609, §3.

Every latent group g (m dimensions at one position) has a KL to the N(0, I) prior, in bits,

    G_g = Σ_d ½(μ_d² + σ_d² − 1 − log σ_d²) / ln 2,

which TDC steers to the target T = log2 K with a dead band of ±α bits:

    w_g  = λ_max if G_g > T + α,   1 inside the band,   λ_min if G_g < T − α      (no gradient through w)
    loss = λ · (1/B) Σ_{b, groups, positions} w_g · G_g

and after every training forward the controller moves the weights by a factor f (1.01), `updates_per_step`
times (default 2, see below):
    λ     ← λ·f if mean(G) > T else λ/f                     (unclamped)
    λ_max ← λ_max·f if max(G) > T + α else λ_max/f, clamped to [1, 1e3]
    λ_min ← λ_min/f if min(G) < T − α else λ_min·f, clamped to [1e-3, 1]

Differences from the reference code (gq-reference §1.2 items 7 and 9), all deliberate:
- λ, λ_min, λ_max are buffers, so checkpoints carry them and a resumed run continues with the same λs;
- the batch statistics are all-reduced across DDP ranks before the update, so every rank holds the same λs;
- λ_max decreases when no group is above the band (the reference HEAD behaviour, not the paper-era ratchet);
- rate: the reference's trainer alternates its two optimizers by batch and updates the λs on every forward, so
  per autoencoder update its controller moves twice (once on the autoencoder batch, once on the discriminator
  batch, before and after the GAN starts). Our trainer updates both optimizers on every batch with one forward,
  so `updates_per_step=2` (default) applies this batch's decision twice, the reference's rate per autoencoder
  step; `updates_per_step=1` is the named option for one move per step (our behaviour before 2026-11);
- bits = nats / ln 2 exactly; the reference multiplies by the rounded 1.4426 (a 3e-5 relative difference).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._utils import check

BITS_PER_NAT = 1.0 / math.log(2.0)


def gaussian_kl_bits(mu: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise KL(N(μ, e^logvar) ‖ N(0, 1)) in bits."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar) * BITS_PER_NAT


def _global_stats(bits: Tensor, across_ranks: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, min and max of `bits` (float64 0-dim tensors, no host sync) over the batch of every DDP rank, or of
    this process when not distributed or when `across_ranks` is False (evaluation: ranks may see different
    numbers of batches, so a collective per forward could hang; the evaluator merges the stats instead)."""
    stats = torch.stack([bits.sum(), bits.new_tensor(float(bits.numel()))]).double()
    lo, hi = bits.min().double().reshape(1), bits.max().double().reshape(1)
    if across_ranks and dist.is_available() and dist.is_initialized():
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return stats[0] / stats[1], lo[0], hi[0]


class TargetDivergenceConstraint(nn.Module):
    def __init__(
        self,
        *,
        target_bits: float,
        tolerance: float = 0.5,  # α, bits; the paper reports little effect for α ≤ 0.5
        lam_factor: float = 1.01,  # f, multiplicative step of every controller update
        lam_min_range: tuple[float, float] = (1e-3, 1.0),
        lam_max_range: tuple[float, float] = (1.0, 1e3),
        updates_per_step: int = 2,  # controller moves per training forward; 2 = the reference's rate (docstring)
    ):
        super().__init__()
        check(isinstance(updates_per_step, int) and updates_per_step >= 1,
              f"updates_per_step={updates_per_step!r} must be an integer >= 1")
        check(target_bits > 0, f"target_bits={target_bits} must be > 0")
        check(tolerance >= 0, f"tolerance={tolerance} must be >= 0 bits")
        check(lam_factor > 1.0, f"lam_factor={lam_factor} must be > 1 (it multiplies or divides the λs)")
        check(lam_min_range[0] <= 1.0 <= lam_min_range[1], f"lam_min_range={lam_min_range} must contain 1")
        check(lam_max_range[0] <= 1.0 <= lam_max_range[1], f"lam_max_range={lam_max_range} must contain 1")
        self.target_bits = float(target_bits)
        self.tolerance = float(tolerance)
        self.lam_factor = float(lam_factor)
        self.updates_per_step = updates_per_step
        self.lam_min_range = tuple(float(v) for v in lam_min_range)
        self.lam_max_range = tuple(float(v) for v in lam_max_range)
        # float64 so that thousands of ×1.01 / ÷1.01 steps do not drift
        self.register_buffer("lam", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("lam_min", torch.tensor(1.0, dtype=torch.float64))
        self.register_buffer("lam_max", torch.tensor(1.0, dtype=torch.float64))

    def weights(self, group_bits: Tensor) -> Tensor:
        """Piecewise per-group weights w (λ_max above the band, 1 inside, λ_min below); no gradient."""
        upper = self.target_bits + self.tolerance
        lower = self.target_bits - self.tolerance
        ones = torch.ones_like(group_bits)
        w = torch.where(group_bits > upper, ones * self.lam_max.to(group_bits.dtype), ones)
        return torch.where(group_bits < lower, ones * self.lam_min.to(group_bits.dtype), w).detach()

    def forward(self, group_bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """group_bits: (B, ...) KL per group in bits. Returns (loss, stats as detached 0-dim tensors); updates
        the λs in training mode. No host sync: the controller's decisions are tensor ops on the device."""
        batch = group_bits.shape[0]
        loss = self.lam.to(group_bits.dtype) * (self.weights(group_bits) * group_bits).sum() / batch
        mean, lo, hi = _global_stats(group_bits.detach(), across_ranks=self.training)
        in_band = (group_bits.detach() - self.target_bits).abs() <= self.tolerance
        stats = {  # the λs as used for this loss (clones: the update below changes the buffers in place)
            "bits_mean": mean, "bits_min": lo, "bits_max": hi, "bits_in_band": in_band.float().mean(),
            "lam": self.lam.clone(), "lam_min": self.lam_min.clone(), "lam_max": self.lam_max.clone(),
        }
        if group_bits.dim() > 1 and group_bits.shape[1] > 1:  # (B, G, ...): the mean KL of each latent group
            per_group = group_bits.detach().transpose(0, 1).reshape(group_bits.shape[1], -1).mean(1)
            stats.update({f"bits_mean/{j}": v for j, v in enumerate(per_group.unbind())})
        if self.training:
            for _ in range(self.updates_per_step):
                self._update(mean, lo, hi)
        return loss, stats

    @torch.no_grad()
    def _update(self, mean: Tensor, lo: Tensor, hi: Tensor) -> None:
        f = self.lam_factor

        def factor(up: Tensor) -> Tensor:  # f where `up`, 1/f elsewhere, in float64 (a float32 f drifts)
            return torch.where(up, torch.full_like(self.lam, f), torch.full_like(self.lam, 1.0 / f))

        self.lam.mul_(factor(mean > self.target_bits))
        self.lam_max.mul_(factor(hi > self.target_bits + self.tolerance)).clamp_(*self.lam_max_range)
        self.lam_min.mul_(factor(lo >= self.target_bits - self.tolerance)).clamp_(*self.lam_min_range)

    def extra_repr(self) -> str:
        return f"target_bits={self.target_bits:g}, tolerance={self.tolerance:g}, lam_factor={self.lam_factor:g}, updates_per_step={self.updates_per_step}"
