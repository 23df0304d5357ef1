"""Lookup-free quantization (LFQ), MAGVIT-v2: Yu et al. 2023 (arXiv 2310.05737); details as in Open-MAGVIT2.

Each group of k = log2 K channels is quantized to the sign of every dimension; the implicit codebook is
{−1, +1}^k · scale, so a group carries exactly k bits. Per group z ∈ R^k:

    q     = scale · (+1 if z_i > 0 else −1)     (0 goes to −1, as in every reference)
    z_q   = z + sg(q − z)                       straight-through
    index = Σ_i 1[z_i > 0] · 2^(k−1−i)          (dim 0 most significant)

Loss = commitment_weight · ‖z − sg(q)‖²  +  entropy_weight · (sample_weight · H_s − codebook_weight · H_c),
with the soft assignment p(c | z) ∝ exp(2⟨z, c⟩ / τ) over the codes c ∈ {±scale}^k. It factorises over bits,
p(c_i = +scale | z) = σ(4 scale z_i / τ), so the per-sample entropy H_s is a sum of k binary entropies (no 2^k
softmax). The codebook entropy H_c = H(mean over tokens of p(·|z)) does not factorise: it is computed on
`entropy_group_size`-bit sub-codes (a 2^g softmax each) and summed over sub-groups, which upper-bounds the joint
entropy; each of the num_codebooks groups gets its own H_c and they are averaged (unlike the GQ authors' LFQ
baseline, which mixes the groups' marginals into one distribution). Entropies are in nats. H_c is a statistic
of this process's batch: under torch.distributed it is not all-reduced (each rank maximises its own). The total is negative by design (−H_c dominates). An optional ramp multiplies the entropy weight by
(1 + ramp · max(0, 1 − step / ramp_steps)), counting training forwards in a checkpointed buffer.

reduction="mean" (default, Open-MAGVIT2: `F.mse_loss(...).mean()` and per-token entropies) averages every term
per element / token, so the weights mean what they mean in its code relative to a per-pixel reconstruction
mean. "sum" (a named deviation) sums over the image's latent elements / tokens and averages over the batch
(H_c, a batch statistic, is scaled by tokens per image), which multiplies every weight by that count.
Deviation (named option): Open-MAGVIT2 takes the codebook entropy over the full 2^k softmax; we factorise it
into `entropy_group_size`-bit sub-codes (default ≤ 9 bits) so k = 16…18 fits in memory; entropy_group_size=k is
the exact version for k ≤ 12. The encoder should end in a normalisation (the backbone's GroupNorm + conv_out
does): LFQ itself has no activation or normalisation.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from ._utils import check, check_codebook_size, groups_to_channels, reduce_loss, whole_bits
from .base import Quantizer, QuantizerOutput
from .registry import register_quantizer


def binary_entropy(p_pos_logit: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(σ(x)) from the logit x, stable for large |x|."""
    p = torch.sigmoid(p_pos_logit)
    return torch.nn.functional.softplus(p_pos_logit) - p * p_pos_logit


def sign_codes(bits: int) -> Tensor:
    """(2^bits, bits) all ±1 codes, row r = the binary digits of r, most significant first."""
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=bits)))


@register_quantizer("lfq")
class LookupFreeQuant(Quantizer):
    spherical = False  # BSQ (quantizers/bsq.py) sets this: inputs on the unit sphere, codes scaled 1/√k

    def __init__(
        self,
        *,
        codebook_size: int,  # 2^k per group
        codebook_dim: int | None = None,  # k; None = log2 K (must equal it when given)
        num_codebooks: int = 1,  # groups per token, each an index of k bits
        commitment_weight: float = 0.25,  # Open-MAGVIT2 0.25; GQ authors' baseline 0.025
        entropy_weight: float = 0.1,
        sample_weight: float = 1.0,  # weight of the per-sample entropy H_s (minimised)
        codebook_weight: float = 1.0,  # weight of the codebook entropy H_c (maximised)
        temperature: float = 0.01,  # τ of the soft assignment
        entropy_group_size: int | None = None,  # g bits per H_c sub-group; None = the largest divisor of k <= 9
        entropy_ramp: float = 0.0,  # Open-MAGVIT2 codebook_enlarge_ratio (3 in its code, 0 in its configs)
        entropy_ramp_steps: int = 2000,
        scale: float = 1.0,  # code magnitude (LFQ only; BSQ's codes are ±1/√k)
        reduction: str = "mean",  # "mean": per element / token (Open-MAGVIT2); "sum": over the image / batch
        sphere: str = "token",  # BSQ only: "token" = one sphere over all of a token's channels; "group"
        straight_through_scale: bool = True,  # BSQ only: gradient 1/√L through the code (official)
    ):
        super().__init__()
        check_codebook_size(codebook_size)
        bits = int(math.log2(codebook_size))
        codebook_dim = bits if codebook_dim is None else codebook_dim
        check(codebook_dim == bits,
              f"codebook_dim={codebook_dim} must equal log2(codebook_size)={bits}: each dim is one bit")
        check(isinstance(num_codebooks, int) and num_codebooks >= 1, f"num_codebooks={num_codebooks!r} must be an integer >= 1")
        group = max(d for d in range(1, 10) if bits % d == 0) if entropy_group_size is None else entropy_group_size
        check(isinstance(group, int) and 1 <= group <= 12 and bits % group == 0,
              f"entropy_group_size={group!r} must divide codebook_dim={bits} and be in [1, 12]")
        check(temperature > 0, f"temperature={temperature} must be > 0")
        for knob, value in dict(commitment_weight=commitment_weight, entropy_weight=entropy_weight,
                                sample_weight=sample_weight, codebook_weight=codebook_weight,
                                entropy_ramp=entropy_ramp).items():
            check(isinstance(value, (int, float)) and value >= 0, f"{knob}={value!r} must be a number >= 0")
        check(isinstance(entropy_ramp_steps, int) and entropy_ramp_steps >= 1,
              f"entropy_ramp_steps={entropy_ramp_steps!r} must be an integer >= 1")
        check(scale > 0, f"scale={scale} must be > 0")
        check(reduction in ("sum", "mean"), f"reduction={reduction!r} must be 'sum' or 'mean'")
        check(sphere in ("token", "group"), f"sphere={sphere!r} must be 'token' or 'group'")
        check(self.spherical or (sphere == "token" and straight_through_scale),
              "sphere and straight_through_scale are BSQ options (quantizer=bsq); remove them for LFQ")

        self.codebook_size = codebook_size
        self.codebook_dim = bits
        self.num_codebooks = num_codebooks
        self.in_channels = self.out_channels = bits * num_codebooks
        self.commitment_weight = float(commitment_weight)
        self.entropy_weight = float(entropy_weight)
        self.sample_weight = float(sample_weight)
        self.codebook_weight = float(codebook_weight)
        self.temperature = float(temperature)
        self.entropy_group_size = group
        self.entropy_ramp = float(entropy_ramp)
        self.entropy_ramp_steps = entropy_ramp_steps
        self.sphere = sphere
        self.sphere_dims = bits * num_codebooks if self.spherical and sphere == "token" else bits  # L
        self.scale = 1.0 / math.sqrt(self.sphere_dims) if self.spherical else float(scale)
        self.straight_through_scale = self.spherical and bool(straight_through_scale)
        self.reduction = reduction
        self.register_buffer("bit_weights", 2 ** torch.arange(bits - 1, -1, -1), persistent=False)
        self.register_buffer("sub_codes", sign_codes(group) * self.scale, persistent=False)  # (2^g, g)
        self.register_buffer("train_steps", torch.tensor(0, dtype=torch.int64))  # for the entropy ramp

    @classmethod
    def default_codebook_dim(cls, codebook_size, **options):
        return whole_bits(codebook_size)

    # -- the three interface methods ------------------------------------------------------------

    def forward(self, h: Tensor) -> QuantizerOutput:
        z = self._groups(h)  # (B, G, H, W, k) fp32 (on the sphere for BSQ)
        q = torch.where(z > 0, self.scale, -self.scale)
        indices = self._index(z.detach())
        loss, stats = self._loss(z, q, batch=h.shape[0])
        if not self.training:
            return QuantizerOutput(z_q=self._decode(indices), indices=indices, loss=loss, stats=stats)
        self.train_steps += 1
        if self.straight_through_scale:  # BSQ: scale · (u + sg(sign u − u)): value ±1/√L, gradient 1/√L
            z_q = self.scale * (z + (torch.where(z > 0, 1.0, -1.0) - z).detach())
        else:  # value q, gradient 1
            z_q = z + (q - z).detach()
        return QuantizerOutput(z_q=groups_to_channels(z_q), indices=indices, loss=loss, stats=stats)

    @torch.no_grad()
    def encode(self, h: Tensor) -> Tensor:
        return self._index(self._groups(h))

    def _decode(self, indices: Tensor) -> Tensor:
        bits = (indices.long()[..., None] // self.bit_weights) % 2  # (B, G, H, W, k), MSB first
        return groups_to_channels(torch.where(bits > 0, self.scale, -self.scale))

    # -- internals -------------------------------------------------------------------------------

    def _groups(self, h: Tensor) -> Tensor:
        z = self.input_groups(h, f"{self.num_codebooks} group(s) of {self.codebook_dim} bits")
        if not self.spherical:
            return z
        if self.sphere == "group":
            return torch.nn.functional.normalize(z, dim=-1)
        return z / torch.linalg.vector_norm(z, dim=(1, -1), keepdim=True).clamp_min(1e-12)  # (B, G, H, W, k)

    def _index(self, z: Tensor) -> Tensor:
        return ((z > 0).long() * self.bit_weights).sum(-1)

    def entropies(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(H_s, H_c) in nats per index for z (..., G, k) with the group axis second to last.

        H_s: mean over all indices of the per-sample entropy. H_c: for each group separately, the entropy of
        the batch-mean assignment, summed over its sub-groups; then averaged over the G groups (each group is
        its own sub-codebook, so two groups splitting the codes between them are both penalised). BSQ with one
        sphere per token sums both over the G groups instead: the token's L bits are one code, as in the BSQ code.
        """
        k, g = self.codebook_dim, self.entropy_group_size
        with torch.autocast(device_type=z.device.type, enabled=False):  # entropies in fp32 under autocast
            z = z.float()
            per_sample = binary_entropy(4 * self.scale * z / self.temperature).sum(-1).mean()
            sub = z.reshape(-1, z.shape[-2], k // g, g)  # (tokens, G, sub-groups, g)
            probs = torch.softmax(2 * sub @ self.sub_codes.t() / self.temperature, dim=-1)  # (..., 2^g)
            mean_probs = probs.mean(0)  # (G, sub-groups, 2^g)
            codebook = -(mean_probs * torch.log(mean_probs.clamp_min(1e-12))).sum((-1, -2)).mean()
        if self.sphere_dims != self.codebook_dim:  # BSQ, one sphere per token
            groups = z.shape[-2]
            per_sample, codebook = per_sample * groups, codebook * groups
        return per_sample, codebook

    def _loss(self, z: Tensor, q: Tensor, batch: int) -> tuple[Tensor, dict[str, Tensor]]:
        per_image = z[0].numel() / self.sphere_dims if self.reduction == "sum" else 1.0  # entropy units
        commitment = reduce_loss((z - q.detach()).square(), batch, self.reduction)
        per_sample, codebook = self.entropies(z.movedim(1, -2))  # (B, H, W, G, k)
        entropy_weight = self.entropy_weight  # × the ramp, as tensor ops: reading the step counter would sync
        if self.entropy_ramp:
            ramp = 1.0 + self.entropy_ramp * (1.0 - self.train_steps.double() / self.entropy_ramp_steps).clamp_min(0.0)
            entropy_weight = (ramp * self.entropy_weight).float()
        entropy = per_image * (self.sample_weight * per_sample - self.codebook_weight * codebook)
        loss = self.commitment_weight * commitment + entropy_weight * entropy
        stats = {"commitment": commitment.detach(), "sample_entropy": per_sample.detach(),
                 "codebook_entropy": codebook.detach(), "aux_loss": loss.detach()}
        return loss, stats

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", entropy_weight={self.entropy_weight:g}, temperature={self.temperature:g}"
                + f", entropy_group_size={self.entropy_group_size}")
