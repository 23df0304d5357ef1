"""TokenBridge: post-training, dimension-wise quantization of a Gaussian VAE (Wang et al. 2025, arXiv 2503.16430).

Training is a Gaussian VAE exactly as for GQ (quantizers/gq.py): the encoder emits [μ | log σ²], the decoder reads a
posterior sample, and the KL is held by a regulariser, either TDC with the target log2 B bits per channel (the
"TDC VAE" the GQ paper reports also helps TokenBridge) or a plain KL penalty (the "vanilla VAE"). Nothing about
the quantizer is trained. In eval mode every channel of μ is quantized on its own, with one table of B = 2^bits
levels shared by all channels:

    boundaries   t_j = Φ⁻¹(j / B), j = 0..B, clamped to [−s, s]              (equal-probability bins of N(0, 1))
    levels       r_j = (φ(t_j) − φ(t_{j+1})) / (Φ(t_{j+1}) − Φ(t_j))          (truncated-normal mean of bin j)
    x'           = clamp(x · s / R, −s, s)                                    (affine map; R = s: identity)
    index        = argmin_j |x' − r_j|                                        (nearest level, lowest on ties)
    x̂            = r_index · R / s

so a token carries C sub-indices of log2 B bits (num_codebooks = C, codebook_dim = 1). Deviations, all stated:
- TokenBridge quantizes a posterior *sample* of a frozen MAR VAE's latent scaled by 0.2325; we quantize the
  posterior *mean* (deterministic tokens, as GQ) of a VAE whose prior is N(0, 1), without a scale factor.
- TokenBridge maps [−5, 5] onto [−3, 3] (R = 5, tuned for its scaled MAR latents at B = 64); our default is
  R = s (the identity), because our latent's prior is N(0, 1) and the Gaussian-quantile bins are then
  equal-probability under it. `value_range=5` gives the published map.
- regularizer="kl" penalises kl_weight · Σ KL / batch with the KL in bits (TDC's unit), not nats.
The argmin runs through kernels.nearest_code (m = 1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

import kernels

from ._utils import channels_to_groups, check, groups_to_channels
from .gq import GaussianQuant
from .registry import register_quantizer


def truncated_normal_levels(num_levels: int, std_range: float) -> Tensor:
    """(B,) float64 reconstruction values r_j: the N(0, 1) mean of each equal-probability bin clamped to ±std_range.

    A bin that lies wholly beyond ±std_range (B > ~741 at s = 3) clamps to zero width at the boundary; its value
    is that boundary (the limit of the mean of a shrinking interval), not 0/0, which kept the level order."""
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    t = normal.icdf(torch.arange(num_levels + 1, dtype=torch.float64) / num_levels).clamp(-std_range, std_range)
    a, b = t[:-1], t[1:]
    pdf = lambda x: torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = normal.cdf(b) - normal.cdf(a)
    return torch.where(b > a, (pdf(a) - pdf(b)) / mass.clamp_min(1e-300), a)


@register_quantizer("tokenbridge")
class TokenBridge(GaussianQuant):
    def __init__(
        self,
        *,
        codebook_size: int,  # B = 2^bits levels per channel
        codebook_dim: int | None = None,  # must be 1 (dimension-wise)
        num_codebooks: int = 1,  # = latent channels C
        value_range: float = 3.0,  # R: latent values in [−R, R] map onto [−s, s] (TokenBridge's --range is 5)
        std_range: float = 3.0,  # s: the Gaussian is truncated at ±s standard deviations
        **vae_options,  # GaussianQuant's: regularizer (tdc: TDC at log2 B bits per channel | kl: kl_weight · KL),
        # kl_weight, tolerance, lam_*, tdc_updates_per_step, logvar_range, search_backend, search_exact
    ):
        check(codebook_dim in (None, 1), f"codebook_dim={codebook_dim} must be 1 (or null): TokenBridge quantizes "
              "each channel on its own")
        check(value_range > 0 and std_range > 0, f"value_range={value_range} and std_range={std_range} must be > 0")
        for unused in ("beta", "seed"):
            check(unused not in vae_options, f"{unused}= is a GQ option; TokenBridge has no Gaussian codebook")
        super().__init__(codebook_size=codebook_size, codebook_dim=1, num_codebooks=num_codebooks, **vae_options)
        self.value_range = float(value_range)
        self.std_range = float(std_range)
        # replaces GQ's Gaussian codebook: the (B, 1) level table, derived from (B, s), not persistent
        self.codebook = truncated_normal_levels(codebook_size, self.std_range).float()[:, None]

    @classmethod
    def default_codebook_dim(cls, codebook_size, **options):
        return 1

    def _decode(self, indices: Tensor) -> Tensor:
        return groups_to_channels(self.codebook[indices] * (self.value_range / self.std_range))

    def _search(self, mu: Tensor, logvar: Tensor) -> Tensor:
        b, _, hh, ww = mu.shape
        x = channels_to_groups(mu, self.num_codebooks).reshape(-1, 1)
        x = (x * (self.std_range / self.value_range)).clamp(-self.std_range, self.std_range)
        flat = kernels.nearest_code(x.contiguous(), self.codebook, exact=self.search_exact, backend=self.search_backend)
        return flat.view(b, self.num_codebooks, hh, ww)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, levels={self.codebook_size}, "
                f"channels={self.num_codebooks}, bits_per_token={self.bits_per_token:g}, value_range={self.value_range:g}, "
                f"std_range={self.std_range:g}, regularizer={self.regularizer}")
