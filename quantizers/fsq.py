"""Finite scalar quantization (FSQ), Mentzer et al. 2023 (arXiv 2309.15505).

Each group of d = len(levels) channels is bounded and rounded per dimension; the implicit codebook is the grid
of all level combinations, ∏ L_i points, and nothing is learned or stored. Per dimension i with L = L_i levels:

    half  = (L − 1)(1 − ε)/2,   offset = ½ if L is even else 0,   shift = artanh(offset / half)
    b(z)  = tanh(z + shift) · half − offset                       ∈ (−⌊L/2⌋ − ½, ⌈L/2⌉ − ½)
    q     = round(b(z))  with a straight-through gradient        ∈ {−⌊L/2⌋, …, ⌈L/2⌉ − 1}
    ẑ     = q / ⌊L/2⌋                                            ∈ [−1, 1]
    index = Σ_i (q_i + ⌊L_i/2⌋) · basis_i,   basis = (1, L_1, L_1 L_2, …)      (dim 0 least significant)

Named option: levels_per_dim = L (a power of 2) replaces Table 1 by d = log2 K / log2 L dims of L levels each,
exactly log2 K bits: the GQ authors' FSQ baseline behind their paper numbers is 16⁴ at 16 bits (z = 4), 16⁸ at
32, 16¹⁶ at 64 (protocol=gq_paper; their repository's HEAD config has [8,8,8,5,5,5] instead).

There is no auxiliary loss. The paper writes the shift with arctanh; its reference notebook has `tan`, a typo its
author confirmed. ε = 1e-3 keeps every level reachable. Bits per group are log2 ∏ L_i, not always whole: the
recommended level sets (paper Table 1) give 7.91, 9.97, 12.10, 13.91 and 15.97 bits for nominal 2^8 … 2^16.

The encoder emits num_codebooks · d channels; groups use the strided channel map every method shares.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._utils import check, groups_to_channels
from .base import Quantizer, QuantizerOutput
from .registry import register_quantizer

# Paper Table 1: levels for a nominal codebook size 2^bits.
RECOMMENDED_LEVELS = {
    2 ** 8: (8, 6, 5),
    2 ** 10: (8, 5, 5, 5),
    2 ** 12: (7, 5, 5, 5, 5),
    2 ** 14: (8, 8, 8, 6, 5),
    2 ** 16: (8, 8, 8, 5, 5, 5),
}


def _choose_levels(codebook_size: int | None, levels, levels_per_dim: int | None = None) -> tuple[int, ...]:
    if levels is None and levels_per_dim is not None:
        check(levels_per_dim in (4, 8, 16, 32, 64, 128, 256) and levels is None,
              f"levels_per_dim={levels_per_dim!r} must be a power of 2 from 4 to 256 (and levels null)")
        bits, per_dim = math.log2(codebook_size or 0) if codebook_size else 0.0, int(math.log2(levels_per_dim))
        check(bits > 0 and bits.is_integer() and int(bits) % per_dim == 0,
              f"codebook_size={codebook_size!r} is not a power of {levels_per_dim} (levels_per_dim={levels_per_dim}: "
              f"2^bits with bits a multiple of {per_dim}); use e.g. {levels_per_dim ** 4} or set levels_per_dim=null")
        return (levels_per_dim,) * (int(bits) // per_dim)
    if levels is None:
        if codebook_size not in RECOMMENDED_LEVELS:
            known = ", ".join(f"{k} -> {list(v)}" for k, v in RECOMMENDED_LEVELS.items())
            raise ValueError(
                f"FSQ has no recommended levels for codebook_size={codebook_size!r}; give levels explicitly "
                f"(e.g. levels=[8,5,5,5]) or use one of: {known}"
            )
        return RECOMMENDED_LEVELS[codebook_size]
    levels = tuple(levels)
    check(len(levels) >= 1 and all(isinstance(v, int) and v >= 3 for v in levels),
          f"levels={list(levels)} must be a non-empty list of integers >= 3 (2 levels would be the asymmetric "
          "{-1, 0} and has no finite shift with the paper's (1 - eps) bound; use lfq for 1-bit dims)")
    size = math.prod(levels)
    check(codebook_size is None or codebook_size == size,
          f"codebook_size={codebook_size} does not match levels={list(levels)} (∏ = {size}); "
          f"set codebook_size to {size} or null")
    return levels


@register_quantizer("fsq")
class FiniteScalarQuant(Quantizer):
    def __init__(
        self,
        *,
        codebook_size: int | None = None,  # nominal 2^bits (picks the paper's levels) or ∏ levels; null with levels
        codebook_dim: int | None = None,  # must be len(levels) when given
        num_codebooks: int = 1,  # FSQ groups per token (each gets its own index)
        levels: list[int] | None = None,  # L_1..L_d; None = the paper's recommendation for codebook_size
        levels_per_dim: int | None = None,  # e.g. 16: codebook_size as 16^d (the GQ authors' FSQ 16⁴); None = Table 1
        eps: float = 1e-3,
    ):
        super().__init__()
        self.levels = _choose_levels(codebook_size, levels, levels_per_dim)
        d = len(self.levels)
        check(codebook_dim is None or codebook_dim == d,
              f"codebook_dim={codebook_dim} must equal len(levels)={d} for FSQ (levels={list(self.levels)}), or be null")
        check(isinstance(num_codebooks, int) and num_codebooks >= 1, f"num_codebooks={num_codebooks!r} must be an integer >= 1")
        check(0 <= eps < 0.5, f"eps={eps} must be in [0, 0.5)")
        self.codebook_dim = d
        self.num_codebooks = num_codebooks
        self.codebook_size = math.prod(self.levels)
        self.in_channels = self.out_channels = d * num_codebooks
        self.eps = float(eps)

        L = torch.tensor(self.levels, dtype=torch.float64)
        half = (L - 1) * (1 - self.eps) / 2
        offset = torch.where(L % 2 == 0, 0.5, 0.0).double()
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1], dtype=torch.int64), 0)
        # derived from the levels: not persistent, checkpoints hold nothing
        self.register_buffer("half_range", half.float(), persistent=False)
        self.register_buffer("offset", offset.float(), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half).float(), persistent=False)
        self.register_buffer("half_width", (L // 2).float(), persistent=False)  # ⌊L/2⌋
        self.register_buffer("basis", basis, persistent=False)
        self.register_buffer("num_levels", L.long(), persistent=False)

    @classmethod
    def default_codebook_dim(cls, codebook_size, levels=None, levels_per_dim=None, **options):
        return len(_choose_levels(codebook_size, levels, levels_per_dim))

    # -- the three interface methods ------------------------------------------------------------

    def forward(self, h: Tensor) -> QuantizerOutput:
        bounded = self._bound(self._groups(h))  # (B, G, H, W, d) fp32
        q = bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding
        indices = self._index(torch.round(bounded.detach()))
        zero = h.new_zeros(())
        if not self.training:
            return QuantizerOutput(z_q=self._decode(indices), indices=indices, loss=zero)
        return QuantizerOutput(z_q=groups_to_channels(q / self.half_width), indices=indices, loss=zero)

    @torch.no_grad()
    def encode(self, h: Tensor) -> Tensor:
        return self._index(torch.round(self._bound(self._groups(h))))

    def _decode(self, indices: Tensor) -> Tensor:
        digits = (indices.long()[..., None] // self.basis) % self.num_levels  # (B, G, H, W, d)
        return groups_to_channels((digits.float() - self.half_width) / self.half_width)

    # -- internals -------------------------------------------------------------------------------

    def _groups(self, h: Tensor) -> Tensor:
        return self.input_groups(h, f"{self.num_codebooks} group(s) of len(levels)={self.codebook_dim} dims")

    def _bound(self, z: Tensor) -> Tensor:
        """b(z) = tanh(z + shift) · half − offset, per dimension; rounds to the L levels."""
        return torch.tanh(z + self.shift) * self.half_range - self.offset

    def _index(self, q: Tensor) -> Tensor:
        """Rounded levels (B, G, H, W, d), fp32 integers -> (B, G, H, W) int64 mixed-radix index."""
        return ((q.long() + self.half_width.long()) * self.basis).sum(-1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", levels={list(self.levels)}"
