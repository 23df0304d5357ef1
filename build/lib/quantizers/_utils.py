"""Helpers shared by the quantizer modules: argument checks and the channel <-> group layout."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def check(condition: bool, message: str) -> None:
    """Raise a ValueError with `message` when a caller-supplied value is wrong (asserts are for our own bugs)."""
    if not condition:
        raise ValueError(message)


def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n > 0 and (n & (n - 1)) == 0


def check_codebook_size(codebook_size: int) -> None:
    check(
        isinstance(codebook_size, int) and not isinstance(codebook_size, bool) and codebook_size >= 2,
        f"codebook_size={codebook_size!r} must be an integer >= 2",
    )
    if not is_power_of_two(codebook_size):
        lower = 1 << (codebook_size.bit_length() - 1)
        raise ValueError(
            f"codebook_size={codebook_size} is not a power of 2, so a token's bits are not whole; "
            f"use {lower} or {lower * 2}"
        )


def whole_bits(codebook_size) -> int | None:
    """log2 K for a power-of-two K (the dims of a one-bit-per-dim code), else None."""
    return codebook_size.bit_length() - 1 if is_power_of_two(codebook_size) else None


def reduce_loss(elementwise: Tensor, batch: int, reduction: str) -> Tensor:
    """"sum": over every element, divided by the batch (the summed-NLL convention); "mean": per element."""
    return elementwise.sum() / batch if reduction == "sum" else elementwise.mean()


def groups_for_channels(channels: int, codebook_dim: int) -> int:
    """How many codebook_dim-sized groups `channels` latent channels split into (error if it does not divide)."""
    check(codebook_dim >= 1, f"codebook_dim={codebook_dim} must be >= 1")
    if channels % codebook_dim:
        raise ValueError(
            f"latent channels={channels} are not divisible by codebook_dim={codebook_dim}; "
            f"choose a codebook_dim that divides {channels} or change model.z_channels"
        )
    return channels // codebook_dim


# Strided channel -> group map, as in the GQ reference code: channel c = d * num_groups + j holds dim d
# of group j. Keeping it lets us load the authors' released checkpoints; every method uses the same map.
def channels_to_groups(x: Tensor, num_groups: int) -> Tensor:
    """(B, m*G, H, W) -> (B, G, H, W, m)."""
    b, c, h, w = x.shape
    return x.reshape(b, c // num_groups, num_groups, h, w).permute(0, 2, 3, 4, 1)


def groups_to_channels(g: Tensor) -> Tensor:
    """(B, G, H, W, m) -> (B, m*G, H, W); the inverse of channels_to_groups."""
    b, ng, h, w, m = g.shape
    return g.permute(0, 4, 1, 2, 3).reshape(b, m * ng, h, w)


def batch_randn_like(x: Tensor) -> Tensor:
    """torch.randn_like(x) for a (B, ...) tensor that is this rank's slice of a multi-process training batch.

    Every rank draws the noise of the whole global batch (W·B rows; every rank's generator is in the same
    state) and keeps its own slice, so the draws, and the generator state afterwards, are those of one process
    training on the global batch. Needs equal slices on every rank (the trainer splits the batch evenly)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return torch.randn_like(x)
    world, rank, b = dist.get_world_size(), dist.get_rank(), x.shape[0]
    full = torch.randn((world * b, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return full[rank * b : (rank + 1) * b]
