"""ViT encoder and decoder (the GQ paper's second backbone, from BSQ-ViT; gq-reference §3.2).

    encoder:  x (b, 3, H, W) -> patches (b, n, 3·p·p) -> Linear (no bias) -> + pos -> LN -> L pre-LN blocks
              -> LN -> Linear(width -> out_channels) -> (b, out_channels, H/p, W/p)
    decoder:  z (b, in_channels, h, w) -> tokens -> Linear(in_channels -> width) -> + pos -> LN -> L blocks
              -> LN -> Linear(width -> mlp_ratio·width) -> tanh -> Linear(-> 3·p·p) -> unpatchify

n = (H/p)·(W/p) positions, learned positional embeddings, blocks are torch's pre-LN TransformerEncoderLayer
(GELU MLP of mlp_ratio·width). The paper's ViT-B/8: p = 8, width 768, 12 layers, 12 heads, MLP ratio 4, so a 256²
image gives the same 32×32 token grid as the f = 8 UNet. The latent leaves the encoder as a (b, c, h, w) map, so
every quantizer (and its strided channel -> group map) sees the same layout for both backbones. `output_clamp`
clamps the decoder's output (the paper's ViT configs use [-1, 1]; the UNet has none).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ViTDecoder", "ViTEncoder"]


def _check(resolution: int, patch_size: int, width: int, heads: int, layers: int, mlp_ratio: float) -> None:
    if patch_size < 1 or resolution % patch_size:
        raise ValueError(f"resolution={resolution} is not divisible by patch_size={patch_size}; pick a patch size "
                         f"that divides the image size")
    if width < 1 or heads < 1 or width % heads:
        raise ValueError(f"width={width} must be a positive multiple of heads={heads}")
    if layers < 1 or mlp_ratio <= 0:
        raise ValueError(f"layers={layers} must be >= 1 and mlp_ratio={mlp_ratio} > 0")


def _blocks(width: int, heads: int, layers: int, mlp_ratio: float, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class _ViT(nn.Module):
    def __init__(self, *, resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, dropout: float):
        super().__init__()
        _check(resolution, patch_size, width, heads, layers, mlp_ratio)
        self.resolution, self.patch_size = resolution, patch_size
        self.grid = resolution // patch_size
        self.pos = nn.Parameter(torch.randn(1, self.grid * self.grid, width) * 0.02)
        self.ln_pre = nn.LayerNorm(width)
        self.blocks = _blocks(width, heads, layers, mlp_ratio, dropout)
        self.ln_post = nn.LayerNorm(width)

    @property
    def downsample_factor(self) -> int:
        return self.patch_size

    def transform(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != self.pos.shape[1]:
            side = int(round(tokens.shape[1] ** 0.5))
            raise ValueError(f"input gives {tokens.shape[1]} positions (about {side}x{side}) but this ViT was built "
                             f"for resolution={self.resolution} ({self.grid}x{self.grid}); set data.image_size to match")
        return self.ln_post(self.blocks(self.ln_pre(tokens + self.pos)))


class ViTEncoder(_ViT):
    """Image (b, in_channels, H, W) -> latent (b, out_channels, H/p, W/p)."""

    def __init__(self, *, out_channels: int, resolution: int, in_channels: int = 3, patch_size: int = 8,
                 width: int = 768, layers: int = 12, heads: int = 12, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__(resolution=resolution, patch_size=patch_size, width=width, layers=layers, heads=heads,
                         mlp_ratio=mlp_ratio, dropout=dropout)
        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, width, bias=False)
        self.head = nn.Linear(width, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} is not divisible by patch_size={p}")
        patches = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        z = self.head(self.transform(self.patch_embed(patches)))  # (b, n, out_channels)
        return z.transpose(1, 2).reshape(b, -1, hh // p, ww // p)


class ViTDecoder(_ViT):
    """Latent (b, in_channels, h, w) -> image (b, out_channels, h·p, w·p)."""

    def __init__(self, *, in_channels: int, resolution: int, out_channels: int = 3, patch_size: int = 8,
                 width: int = 768, layers: int = 12, heads: int = 12, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 output_clamp: float | None = None):
        super().__init__(resolution=resolution, patch_size=patch_size, width=width, layers=layers, heads=heads,
                         mlp_ratio=mlp_ratio, dropout=dropout)
        if output_clamp is not None and output_clamp <= 0:
            raise ValueError(f"output_clamp={output_clamp} must be > 0 (or None for no clamp)")
        self.out_channels, self.output_clamp = out_channels, output_clamp
        self.embed = nn.Linear(in_channels, width)
        self.ffn = nn.Sequential(nn.Linear(width, int(width * mlp_ratio)), nn.Tanh())
        self.to_pixels = nn.Linear(int(width * mlp_ratio), out_channels * patch_size * patch_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        p, c = self.patch_size, self.out_channels
        pixels = self.to_pixels(self.ffn(self.transform(self.embed(z.flatten(2).transpose(1, 2)))))
        x = pixels.reshape(b, h, w, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h * p, w * p)
        return x.clamp(-self.output_clamp, self.output_clamp) if self.output_clamp is not None else x

    @property
    def last_layer(self) -> nn.Parameter:
        """Weight of the final linear map: where the GAN loss measures gradient norms for its adaptive weight."""
        return self.to_pixels.weight
