"""SD3-style convolutional VAE encoder and decoder (the "UNet" of the GQ paper).

Gaussian Quant, arXiv 2512.06609, trains its UNet tokenizer on the SD3 / SGM autoencoder
(`pit/modules/unet.py` upstream, see gq-reference §3.1). Written here from the description, not
copied. With the paper's settings (ch 128, ch_mult (1, 2, 4, 4), 2 blocks per level, attention at
32², 256² input) the encoder maps

    x: (b, 3, 256, 256)  ->  (b, out_channels, 32, 32),     f = 2^(len(ch_mult) - 1) = 8

and the decoder maps a (b, in_channels, 32, 32) latent back to (b, 3, 256, 256). `out_channels` of
the encoder is the quantizer's input width (2·z for GQ: [μ | log σ²]); `in_channels` of the decoder is
the quantizer's output width (z).

Building blocks, with h_l the feature map at level l (resolution `resolution / 2^l`):

    ResnetBlock:  y = shortcut(x) + conv2(drop(silu(gn2(conv1(silu(gn1(x)))))))
    AttnBlock:    y = x + proj(softmax(q kᵀ / √c) v),  q, k, v = 1×1 convs of gn(x), one head over h·w
    Downsample:   stride-2 3×3 conv after padding (left 0, right 1, top 0, bottom 1)
    Upsample:     nearest ×2, then 3×3 conv

Unlike the SD VAE, the paper's code has no attention in the mid block (`mid_attention=False`), and the
decoder ends in a plain conv (no tanh). Submodule names follow the SGM / taming layout (`down.{i}.block.{j}`,
`mid.block_1`, `up.{i}.attn.{j}`, `norm_out`, `conv_out`, ...) so that a state dict from that family of
models maps by name.

einstein legend: b batch, c channels, h height, w width, n = h·w positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "ResnetBlock",
    "Upsample",
    "group_norm",
]


# helper functions


def group_norm(channels: int, *, max_groups: int = 32, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm with `max_groups` groups, or the largest count that divides `channels`.

    gcd(max_groups, channels) is 32 for every width of the paper's model (multiples of 128) and
    degrades gracefully for tiny test widths (e.g. 8 channels -> 8 groups) instead of failing.
    """
    if channels < 1:
        raise ValueError(f"group_norm needs channels >= 1, got channels={channels}")
    return nn.GroupNorm(math.gcd(max_groups, channels), channels, eps=eps, affine=True)


def _level_resolutions(resolution: int, num_levels: int) -> list[int]:
    return [resolution // 2**level for level in range(num_levels)]


def _configure(
    module: nn.Module,
    *,
    who: str,
    in_channels: int,
    out_channels: int,
    ch: int,
    ch_mult: Sequence[int],
    num_res_blocks: int,
    attn_resolutions: Sequence[int],
    resolution: int,
    dropout: float,
) -> None:
    """Validate the arguments Encoder and Decoder share (one ValueError per rule, naming the fix) and set the
    attributes they share."""
    ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
    if len(ch_mult) == 0:
        raise ValueError(f"{who}: ch_mult is empty; give one multiplier per level, e.g. ch_mult=(1, 2, 4, 4)")
    if any(int(m) != m or m < 1 for m in ch_mult):
        raise ValueError(f"{who}: ch_mult={ch_mult} must hold positive integers")
    if ch < 1:
        raise ValueError(f"{who}: ch={ch} must be >= 1")
    if num_res_blocks < 1:
        raise ValueError(f"{who}: num_res_blocks={num_res_blocks} must be >= 1")
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if channels is None or channels < 1:
            raise ValueError(f"{who}: {name}={channels} must be a positive channel count")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{who}: dropout={dropout} must lie in [0, 1)")
    factor = 2 ** (len(ch_mult) - 1)
    if resolution < 1 or resolution % factor != 0:
        raise ValueError(
            f"{who}: resolution={resolution} is not divisible by the downsample factor {factor} "
            f"(= 2^(len(ch_mult) - 1) for ch_mult={ch_mult}); use a multiple of {factor}"
        )
    occurring = _level_resolutions(resolution, len(ch_mult))
    for r in attn_resolutions:
        if r not in occurring:
            raise ValueError(
                f"{who}: attn_resolutions contains {r}, which never occurs; with resolution={resolution} "
                f"and {len(ch_mult)} levels the feature maps have resolutions {occurring}"
            )
    module.in_channels, module.out_channels = in_channels, out_channels
    module.ch_mult, module.attn_resolutions, module.resolution = ch_mult, attn_resolutions, resolution
    module.num_levels = len(ch_mult)
    module.downsample_factor = factor


# building blocks


class ResnetBlock(nn.Module):
    """Pre-activation residual block: two (GroupNorm, SiLU, 3×3 conv) stages, 1×1 shortcut on width change."""

    def __init__(self, in_channels: int, out_channels: int | None = None, *, dropout: float = 0.0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # identity when widths agree, so blocks inside a level add no shortcut parameters
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all h·w positions, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (b, c, h, w) -> (b, 1, n, c): one head, positions as the sequence axis
        q, k, v = (proj(hn).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √c) v, (b, 1, n, c)
        # (b, 1, n, c) -> (b, c, h, w)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve h and w with a stride-2 3×3 conv.

    The padding is asymmetric (right and bottom only) so that an even size n maps to exactly n / 2,
    as in the SD / SGM autoencoders whose weights this layout mirrors.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double h and w: nearest-neighbour ×2, then a 3×3 conv to smooth the blocky result."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block[j]` (+ `attn[j]`), then an optional resampler."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module], resample_name: str, resample: nn.Module | None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)  # empty, or one per block
        if resample is not None:
            self.add_module(resample_name, resample)
        self._resample_name = resample_name

    def forward(self, h: torch.Tensor, *, resample: bool) -> torch.Tensor:
        for j, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[j](h)
        if resample:
            h = getattr(self, self._resample_name)(h)
        return h


class _Mid(nn.Module):
    """Two residual blocks at the latent resolution, with optional attention between them."""

    def __init__(self, channels: int, *, dropout: float, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout=dropout)
        # absent (not Identity) when off, so state dicts without `mid.attn_1` load strictly
        self.attn_1 = AttnBlock(channels) if attention else None
        self.block_2 = ResnetBlock(channels, channels, dropout=dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.block_1(h)
        if self.attn_1 is not None:
            h = self.attn_1(h)
        return self.block_2(h)


def _check_input(who: str, x: torch.Tensor, channels: int, factor: int | None) -> None:
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{who}: expected input of shape (b, {channels}, h, w), got {tuple(x.shape)}")
    if factor is not None and (x.shape[-2] % factor or x.shape[-1] % factor):
        raise ValueError(
            f"{who}: input size {tuple(x.shape[-2:])} is not divisible by the downsample factor {factor}; "
            f"crop or pad images to a multiple of {factor}"
        )


# main classes


class Encoder(nn.Module):
    """Image (b, in_channels, H, W) -> latent (b, out_channels, H / f, W / f), f = 2^(len(ch_mult) - 1).

    Attention placement is decided from `resolution` (the training image size), so attention sits at a
    fixed level even when a different image size is fed at test time.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (32,),
        resolution: int = 256,
        out_channels: int,
        dropout: float = 0.0,
        mid_attention: bool = False,  # off in the paper's code, on in the original SD VAE
    ):
        super().__init__()
        _configure(
            self, who="Encoder", in_channels=in_channels, out_channels=out_channels, ch=ch, ch_mult=ch_mult,
            num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, resolution=resolution, dropout=dropout,
        )
        ch_mult, attn_resolutions = self.ch_mult, self.attn_resolutions

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, res in enumerate(_level_resolutions(resolution, self.num_levels)):
            block_out = ch * ch_mult[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout=dropout))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            last = level == self.num_levels - 1
            self.down.append(_Level(blocks, attns, "downsample", None if last else Downsample(block_in)))
        self.mid = _Mid(block_in, dropout=dropout, attention=mid_attention)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input("Encoder", x, self.in_channels, self.downsample_factor)
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            h = stage(h, resample=level < self.num_levels - 1)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (b, in_channels, h, w) -> image (b, out_channels, h·f, w·f); the mirror of `Encoder`.

    Each level has num_res_blocks + 1 blocks (one more than the encoder), as in the SD / SGM decoder.
    The output is unbounded (no tanh); clamp outside if needed.
    """

    def __init__(
        self,
        *,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (32,),
        resolution: int = 256,
        in_channels: int,
        dropout: float = 0.0,
        mid_attention: bool = False,
    ):
        super().__init__()
        _configure(
            self, who="Decoder", in_channels=in_channels, out_channels=out_channels, ch=ch, ch_mult=ch_mult,
            num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, resolution=resolution, dropout=dropout,
        )
        ch_mult, attn_resolutions = self.ch_mult, self.attn_resolutions

        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(in_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, dropout=dropout, attention=mid_attention)
        # built deepest level first, stored by level index so `up[i]` runs at resolution / 2^i
        levels: list[_Level] = []
        resolutions = _level_resolutions(resolution, self.num_levels)
        for level in reversed(range(self.num_levels)):
            block_out = ch * ch_mult[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout=dropout))
                block_in = block_out
                if resolutions[level] in attn_resolutions:
                    attns.append(AttnBlock(block_in))
            levels.insert(0, _Level(blocks, attns, "upsample", Upsample(block_in) if level > 0 else None))
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the final conv: where the GAN loss measures gradient norms for its adaptive weight."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_input("Decoder", z, self.in_channels, None)
        h = self.mid(self.conv_in(z))
        for level in reversed(range(self.num_levels)):
            h = self.up[level](h, resample=level > 0)
        return self.conv_out(F.silu(self.norm_out(h)))
