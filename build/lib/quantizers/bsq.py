"""Binary spherical quantization (BSQ), Zhao et al. 2024 (arXiv 2406.07548).

LFQ on the unit sphere (quantizers/lfq.py has the shared machinery). Each group of L = log2 K channels is
l2-normalised, then quantized to the nearest corner of the hypercube scaled onto the sphere:

    u = z / ‖z‖,   û = sign(u) / √L   (0 goes to −1),   z_q = u + sg(û − u),   index as LFQ (dim 0 MSB)

Every code has norm 1 and ‖u − û‖² = 2 − 2 Σ|u_i| / √L ≤ 2 − 2/√L for any input, which is why BSQ drops the
commitment term (commitment_weight = 0, as in every shipped BSQ config). The entropy terms are LFQ's with codes
±1/√L: p(û_i = +1/√L | u) = σ(4 u_i / (√L τ)), and the codebook entropy on `entropy_group_size`-bit sub-codes.

Choice: τ = 0.01, the GQ authors' BSQ baseline; the official BSQ code leaves τ = 1 (very soft assignments at
|u_i| ≈ 1/√L) and divides the penalty by 1/τ. Sweep `quantizer.temperature` to compare.
"""
from __future__ import annotations

from .lfq import LookupFreeQuant
from .registry import register_quantizer


@register_quantizer("bsq")
class BinarySphericalQuant(LookupFreeQuant):
    spherical = True

    def __init__(self, *, commitment_weight: float = 0.0, **kwargs):
        if "scale" in kwargs:
            raise ValueError(f"scale={kwargs['scale']!r}: BSQ codes are fixed at ±1/√L; remove the scale option")
        super().__init__(commitment_weight=commitment_weight, **kwargs)
