"""Binary spherical quantization (BSQ), Zhao et al. 2024 (arXiv 2406.07548); defaults as the official BSQ-ViT code.

LFQ on the unit sphere (quantizers/lfq.py has the shared machinery). A token's L channels (all of its
num_codebooks · log2 K bits) are l2-normalised together, then quantized to the nearest corner of the hypercube
scaled onto the sphere:

    u = z / ‖z‖,   û = sign(u) / √L   (0 goes to −1),   z_q = (u + sg(sign(u) − u)) / √L,   index as LFQ

so the code's value is û and its gradient is 1/√L (the official `zq = (z + (zhat − z).detach()) * q_scale`).
Each group of log2 K bits is one index (dim 0 MSB). Every code has norm 1 and ‖u − û‖² ≤ 2 − 2/√L, which is
why BSQ drops the commitment term (commitment_weight = 0). Entropy terms, as in the official analytical mode:
p(û_i = +1/√L | u) = σ(4 u_i / (√L τ)); the per-sample entropy is the sum of the L binary entropies and the
codebook entropy is taken per bit (entropy_group_size = 1, the b18g18 ImageNet config) and summed over the
token's bits; the entropy weight is ramped ×3 → ×1 over the first 2000 steps (codebook_rampup).

Defaults = the official code (zhaoyue-zephyrus/bsq-vit): τ = 1 (inv_temperature 1), entropy_weight 0.1
(codebook_weight), sample/codebook weights 1 (gamma0, gamma), per-element means. Named deviations:
- sphere="group": each log2 K-bit group on its own sphere (codes ±1/√log2 K); our behaviour before 2026-11.
- straight_through_scale=False: gradient 1 through the code instead of 1/√L.
- entropy_group_size=g > 1: codebook entropy on g-bit sub-codes (2^g softmax), an upper bound of the joint.
- temperature=0.01: the GQ authors' BSQ baseline (protocol=gq_paper). The official code also divides the entropy
  penalty by 1/τ; at its τ = 1 that is the identity, and we do not apply it for other τ.
"""
from __future__ import annotations

from .lfq import LookupFreeQuant
from .registry import register_quantizer


@register_quantizer("bsq")
class BinarySphericalQuant(LookupFreeQuant):
    spherical = True

    def __init__(self, *, commitment_weight: float = 0.0, temperature: float = 1.0, entropy_group_size: int = 1,
                 entropy_ramp: float = 2.0, **kwargs):
        if "scale" in kwargs:
            raise ValueError(f"scale={kwargs['scale']!r}: BSQ codes are fixed at ±1/√L; remove the scale option")
        super().__init__(commitment_weight=commitment_weight, temperature=temperature,
                         entropy_group_size=entropy_group_size, entropy_ramp=entropy_ramp, **kwargs)
