"""The one interface every quantizer implements.

A quantizer sits between an encoder and a decoder that both work on (B, C, H, W) feature maps:

    h = encoder(x)                 # (B, in_channels, H, W)
    out = quantizer(h)             # out.z_q: (B, out_channels, H, W), out.indices: (B, num_codebooks, H, W)
    x_hat = decoder(out.z_q)

`in_channels` may differ from `out_channels` (GQ reads a mean and a log-variance per latent channel).
A token is one spatial position; it carries `num_codebooks` indices, each into a codebook of
`codebook_size` entries, so `bits_per_token = num_codebooks * log2(codebook_size)`.

Invariant (tested for every registered method): in eval mode `decode(encode(h))` equals `forward(h).z_q`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """What `Quantizer.forward` returns.

    z_q:        (B, out_channels, H, W) decoder input. For methods that do not quantize while training
                (GQ), this is the training-time latent (a posterior sample).
    indices:    (B, num_codebooks, H, W) int64 codes, or None where the method skips the search in
                training mode (GQ).
    loss:       scalar, already weighted; add it to the reconstruction loss.
    stats:      detached 0-dim tensors (or plain floats) for logging: loss terms, controller state, ...
                Turning them into numbers is a device->host sync, so the trainer does it on logging steps only.
    continuous: optional (B, out_channels, H, W) un-quantized latent of the same model (GQ's
                "Gaussian VAE" reconstruction path); None for methods that have none.
    group_bits: optional (B, num_codebooks, H, W) KL of each token's group posterior from the prior, in bits
                (detached): what GQ's TDC holds near log2 K; None for methods without a posterior.
    """

    z_q: Tensor
    indices: Tensor | None
    loss: Tensor
    stats: dict[str, Tensor | float] = field(default_factory=dict)
    continuous: Tensor | None = None
    group_bits: Tensor | None = None


class Quantizer(nn.Module):
    """Base class: subclasses set the four size attributes in __init__ and implement forward, encode and
    _decode (the public decode checks the indices, then calls _decode)."""

    in_channels: int
    out_channels: int
    codebook_size: int
    num_codebooks: int
    # The NaN/inf input check reads a flag back from the device (a host sync per forward). A trainer that
    # cannot afford that sets it False on its instance and checks its loss instead (gqbench.train does).
    check_finite_inputs: bool = True

    @classmethod
    def default_codebook_dim(cls, codebook_size: int | None, **options) -> int | None:
        """Dims per group the method uses when codebook_dim is None (None: the caller must choose)."""
        return None

    @property
    def bits_per_token(self) -> float:
        return self.num_codebooks * math.log2(self.codebook_size)

    def forward(self, h: Tensor) -> QuantizerOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, h: Tensor) -> Tensor:  # pragma: no cover - abstract
        """(B, in_channels, H, W) -> (B, num_codebooks, H, W) int64."""
        raise NotImplementedError

    def decode(self, indices: Tensor) -> Tensor:
        """(B, num_codebooks, H, W) int64 -> (B, out_channels, H, W), after checking the indices."""
        self.check_indices(indices)
        return self._decode(indices)

    def _decode(self, indices: Tensor) -> Tensor:  # pragma: no cover - abstract
        """decode without the checks: for indices the quantizer just produced itself (no extra sync)."""
        raise NotImplementedError

    def input_groups(self, h: Tensor, layout: str) -> Tensor:
        """(B, in_channels, H, W) -> (B, G, H, W, in_channels / G) fp32 with the shared strided map, after
        checking the shape (the message names `layout`, e.g. "2 group(s) of 4 dims") and finiteness."""
        from ._utils import channels_to_groups

        if not (h.dim() == 4 and h.shape[1] == self.in_channels):
            raise ValueError(f"{type(self).__name__} input of shape {tuple(h.shape)} must be "
                             f"(B, in_channels={self.in_channels}, H, W): {layout}")
        z = channels_to_groups(h.float(), self.num_codebooks)
        if self.check_finite_inputs and not bool(torch.isfinite(z).all()):
            raise ValueError(f"{type(self).__name__} input contains NaN or inf")
        return z

    def check_indices(self, indices: Tensor) -> None:
        """decode's input check: (B, num_codebooks, H, W), an integer dtype, every value in [0, codebook_size)."""
        if not (indices.dim() == 4 and indices.shape[1] == self.num_codebooks):
            raise ValueError(f"indices of shape {tuple(indices.shape)} must be (B, num_codebooks={self.num_codebooks}, H, W)")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor (int64), got {indices.dtype}")
        if indices.numel():
            lo, hi = torch.aminmax(indices)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= self.codebook_size:
                raise ValueError(f"indices range over [{lo}, {hi}] but codebook_size={self.codebook_size} allows "
                                 f"[0, {self.codebook_size - 1}]")

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"codebook_size={self.codebook_size}, num_codebooks={self.num_codebooks}, "
            f"bits_per_token={self.bits_per_token:g}"
        )
