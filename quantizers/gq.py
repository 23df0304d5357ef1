"""Gaussian Quant (GQ): a Gaussian VAE turned into a VQ-VAE without training.

Xu et al., "Vector Quantization using Gaussian Variational Autoencoder", arXiv 2512.06609.

The encoder emits, per latent channel, a posterior mean and log-variance: h = [μ | log σ²] along channels.
Channels are cut into G = num_codebooks groups of m = codebook_dim dimensions (strided map, see _utils).

Training (model.train()): z = μ + σ·ε goes to the decoder, with no quantization and no straight-through
estimator; the TDC loss (quantizers/tdc.py) holds every group's KL near log2 K bits.

Evaluation (model.eval()): a fixed codebook c_1..c_K of K standard-Gaussian points in R^m (scrambled Sobol
points pushed through Φ⁻¹, regenerated from `seed`, never trained or stored) and, per group,

    k* = argmax_k  log N(c_k; μ, σ²) − β · log N(c_k; 0, I)
       = argmax_k  −½ Σ_d (c_kd − μ_d)² / σ_d²  +  (β/2) ‖c_k‖²        (row constants dropped)

i.e. the codeword with the highest posterior/prior density ratio; z_q = c_{k*}. The search runs through
`kernels.gq_argmax`: exact in fp32, lowest index on ties, never materialising an N×K×m tensor.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

import kernels

from ._utils import batch_randn_like, channels_to_groups, check, check_codebook_size, groups_to_channels, whole_bits
from .base import Quantizer, QuantizerOutput
from .registry import register_quantizer
from .tdc import TargetDivergenceConstraint, _global_stats, gaussian_kl_bits


def gaussian_codebook(codebook_size: int, codebook_dim: int, seed: int) -> Tensor:
    """(K, m) float32 quasi-random N(0, I) points: scrambled Sobol(seed) -> Φ⁻¹, computed in float64.

    torch's SobolEngine keeps the point order of the reference code (index-compatible with its checkpoints).
    Float64 matters: in float32 a Sobol coordinate within ~3e-8 of 1 rounds to 1.0 and Φ⁻¹(1) = +inf.
    """
    engine = torch.quasirandom.SobolEngine(codebook_dim, scramble=True, seed=seed)
    uniform = engine.draw(codebook_size, dtype=torch.float64)
    codebook = torch.special.ndtri(uniform)
    if not torch.isfinite(codebook).all():
        raise ValueError(
            f"the Gaussian codebook for codebook_size={codebook_size}, codebook_dim={codebook_dim}, seed={seed} "
            "has non-finite entries; choose another seed"
        )
    return codebook.float()


@register_quantizer("gq")
class GaussianQuant(Quantizer):
    def __init__(
        self,
        *,
        codebook_size: int,
        codebook_dim: int | None = None,  # None -> log2 K dims: one bit per latent dim, the paper's 0.25-bpp model
        num_codebooks: int = 1,  # groups per position; they share the one codebook
        beta: float = 1.0,  # weight of the prior term in the selection (the paper's push-outward term)
        seed: int = 42,  # codebook seed; encoder and decoder side regenerate the same codebook from it
        logvar_range: tuple[float, float] = (-30.0, 20.0),
        kl_weight: float = 0.1,  # the reference's `kl_loss` weight; λ adapts, so it matters only transiently
        tolerance: float = 0.5,  # TDC dead band, bits
        lam_factor: float = 1.01,
        lam_min_range: tuple[float, float] = (1e-3, 1.0),
        lam_max_range: tuple[float, float] = (1.0, 1e3),
        tdc_updates_per_step: int = 2,  # TDC controller moves per step; 2 = the reference's rate (quantizers/tdc.py)
        regularizer: str = "tdc",  # "tdc": the paper's TDC; "kl": kl_weight · KL, a plain Gaussian VAE (ablation)
        search_backend: str = "auto",  # kernels backend: "auto" (Triton on CUDA, torch on CPU), "torch", "triton"
        search_exact: bool = True,  # False allows the tensor-core candidate search (re-ranked in fp32)
    ):
        super().__init__()
        check_codebook_size(codebook_size)
        bits = int(math.log2(codebook_size))
        codebook_dim = bits if codebook_dim is None else codebook_dim
        check(isinstance(codebook_dim, int) and codebook_dim >= 1, f"codebook_dim={codebook_dim!r} must be an integer >= 1")
        check(isinstance(num_codebooks, int) and num_codebooks >= 1, f"num_codebooks={num_codebooks!r} must be an integer >= 1")
        check(logvar_range[0] < logvar_range[1], f"logvar_range={tuple(logvar_range)} must be (low, high) with low < high")
        check(kl_weight >= 0, f"kl_weight={kl_weight} must be >= 0")
        check(regularizer in ("tdc", "kl"), f"regularizer={regularizer!r} must be 'tdc' or 'kl'")
        check(search_backend in ("auto", "torch", "triton"), f"search_backend={search_backend!r} must be 'auto', 'torch' or 'triton'")

        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.num_codebooks = num_codebooks
        self.out_channels = codebook_dim * num_codebooks
        self.in_channels = 2 * self.out_channels  # [μ | log σ²]
        self.beta = float(beta)
        self.seed = int(seed)
        self.logvar_range = (float(logvar_range[0]), float(logvar_range[1]))
        self.kl_weight = float(kl_weight)
        self.regularizer = regularizer
        self.search_backend = search_backend
        self.search_exact = bool(search_exact)
        self.tdc = TargetDivergenceConstraint(
            target_bits=bits, tolerance=tolerance, lam_factor=lam_factor,
            lam_min_range=tuple(lam_min_range), lam_max_range=tuple(lam_max_range),
            updates_per_step=tdc_updates_per_step,
        )
        # derived from (K, m, seed): not persistent, so checkpoints hold nothing that can be regenerated
        self.register_buffer("codebook", gaussian_codebook(codebook_size, codebook_dim, self.seed), persistent=False)

    @classmethod
    def default_codebook_dim(cls, codebook_size, **options):
        return whole_bits(codebook_size)

    # -- the three interface methods ------------------------------------------------------------

    def forward(self, h: Tensor) -> QuantizerOutput:
        mu, logvar = self._posterior(h)
        group_bits = channels_to_groups(gaussian_kl_bits(mu, logvar), self.num_codebooks).sum(-1)  # (B, G, H, W)
        loss, stats = self._regularize(group_bits)
        noise = batch_randn_like(mu) if self.training else torch.randn_like(mu)
        sample = mu + (0.5 * logvar).exp() * noise
        if self.training:
            return QuantizerOutput(z_q=sample, indices=None, loss=loss, stats=stats)
        indices = self._search(mu, logvar)
        return QuantizerOutput(z_q=self._decode(indices), indices=indices, loss=loss, stats=stats, continuous=sample,
                               group_bits=group_bits.detach())

    @torch.no_grad()
    def encode(self, h: Tensor) -> Tensor:
        return self._search(*self._posterior(h))

    def _decode(self, indices: Tensor) -> Tensor:
        return groups_to_channels(self.codebook[indices])  # (B, G, H, W, m) -> (B, m*G, H, W)

    # -- internals -------------------------------------------------------------------------------

    def _posterior(self, h: Tensor) -> tuple[Tensor, Tensor]:
        check(
            h.dim() == 4 and h.shape[1] == self.in_channels,
            f"GQ input of shape {tuple(h.shape)} must be (B, in_channels={self.in_channels}, H, W): "
            f"[mean | log-variance] for {self.num_codebooks} group(s) of {self.codebook_dim} dims",
        )
        h = h.float()  # the posterior, KL and search are fp32 even under autocast
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(*self.logvar_range)

    def _regularize(self, group_bits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """TDC on the per-group KL (bits), weighted by kl_weight; or, for regularizer="kl", kl_weight · KL."""
        if self.regularizer == "kl":
            loss = self.kl_weight * group_bits.sum() / group_bits.shape[0]
            mean, lo, hi = _global_stats(group_bits.detach(), across_ranks=self.training)
            return loss, {"bits_mean": mean, "bits_min": lo, "bits_max": hi, "kl_loss": loss.detach()}
        tdc_loss, stats = self.tdc(group_bits)
        loss = self.kl_weight * tdc_loss
        stats["kl_loss"] = loss.detach()
        return loss, stats

    def _search(self, mu: Tensor, logvar: Tensor) -> Tensor:
        b, _, hh, ww = mu.shape
        mu_rows = channels_to_groups(mu, self.num_codebooks).reshape(-1, self.codebook_dim)
        sigma_rows = channels_to_groups((0.5 * logvar).exp(), self.num_codebooks).reshape(-1, self.codebook_dim)
        flat = kernels.gq_argmax(
            mu_rows.contiguous(), sigma_rows.contiguous(), self.codebook, self.beta,
            exact=self.search_exact, backend=self.search_backend,
        )
        return flat.view(b, self.num_codebooks, hh, ww)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", codebook_dim={self.codebook_dim}, beta={self.beta:g}, seed={self.seed}"
