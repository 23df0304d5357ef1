"""N-layer PatchGAN discriminator with ActNorm (pix2pix, arXiv 1611.07004; taming-transformers, arXiv 2012.09841).

The GQ paper (arXiv 2512.06609, gq-reference §3.3) uses ndf 160, n_layers 6, ActNorm and LeakyReLU 0.2 at
256², which gives 2×2 logits. The stack, for input size s:

    conv4×4/2(in -> ndf), LReLU                                              s -> ⌊s/2⌋
    n = 1 .. n_layers-1:  conv4×4/2(ndf·m(n-1) -> ndf·m(n)), norm, LReLU     s -> ⌊s/2⌋
    conv4×4/1(ndf·m(n_layers-1) -> ndf·m(n_layers)), norm, LReLU             s -> s - 1
    conv4×4/1(-> 1)                                                          s -> s - 1     (logits)

with m(n) = min(2^n, 8). The output is ⌊s / 2^n_layers⌋ - 2 per side, so inputs need s >= 3·2^n_layers.

ActNorm (Glow, arXiv 1807.03039) is a per-channel affine map y = scale · (x + loc) whose parameters are set
from the first batch it sees so that each channel starts with zero mean and unit variance. Unlike BatchNorm
it has no batch dependence afterwards, so D(x) of one image does not depend on the rest of the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from gqbench.runtime import average_across_ranks_, is_distributed

__all__ = ["ActNorm", "PatchDiscriminator"]


class ActNorm(nn.Module):
    """Per-channel affine y = scale · (x + loc), initialised from the first batch it sees.

    In a multi-process job the statistics are those of every rank's batch together (equal batch sizes), so
    every rank starts from the same parameters, the ones a single process with the global batch would get.
    """

    def __init__(self, num_features: int, *, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        # a buffer so a checkpoint remembers it is initialised and loading does not re-init from new data
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        # python mirror of the buffer: avoids a device sync (`.item()`) on every forward
        self._initialized_cache = False
        self.register_load_state_dict_post_hook(_forget_initialized_cache)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        # statistics over batch and space, per channel
        if is_distributed():  # the global batch's moments (E[x²] − E[x]² loses a few ulps against x.std)
            moments = torch.stack([x.mean(dim=(0, 2, 3), keepdim=True), x.square().mean(dim=(0, 2, 3), keepdim=True)])
            average_across_ranks_(moments)
            mean, std = moments[0], (moments[1] - moments[0].square()).clamp_min(0).sqrt()
        else:
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.loc.copy_(-mean)
        self.scale.copy_(1.0 / (std + self.eps))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._initialized_cache:
            if int(self.initialized.item()) == 0:
                self.initialize(x)
            self._initialized_cache = True
        return self.scale * (x + self.loc)


def _forget_initialized_cache(module: ActNorm, _incompatible_keys) -> None:
    # a loaded state dict may carry initialized=0; re-read the buffer on the next forward
    module._initialized_cache = False


def _min_input_size(n_layers: int) -> int:
    # ⌊s / 2^n⌋ - 2 >= 1  <=>  s >= 3 · 2^n
    return 3 * 2**n_layers


class PatchDiscriminator(nn.Module):
    """Images (b, in_channels, s, s) -> patch logits (b, 1, ⌊s/2^n_layers⌋ - 2, same for width)."""

    def __init__(self, *, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, use_actnorm: bool = True):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"PatchDiscriminator: in_channels={in_channels} must be >= 1")
        if ndf < 1:
            raise ValueError(f"PatchDiscriminator: ndf={ndf} must be >= 1")
        if n_layers < 1:
            raise ValueError(f"PatchDiscriminator: n_layers={n_layers} must be >= 1")
        self.in_channels, self.ndf, self.n_layers, self.use_actnorm = in_channels, ndf, n_layers, use_actnorm
        self.min_input_size = _min_input_size(n_layers)

        def norm(channels: int) -> nn.Module:
            return ActNorm(channels) if use_actnorm else nn.BatchNorm2d(channels)

        # the convs before a norm have no bias: the norm's own shift (loc / beta) makes it redundant
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            mult_prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * mult_prev, ndf * mult, 4, stride=2, padding=1, bias=False),
                norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        mult_prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * mult_prev, ndf * mult, 4, stride=1, padding=1, bias=False),
            norm(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """pix2pix init: conv weights N(0, 0.02), BatchNorm weight N(1, 0.02) and bias 0; ActNorm inits from data."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDiscriminator: expected input of shape (b, {self.in_channels}, h, w), got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"PatchDiscriminator: input size {tuple(x.shape[-2:])} is too small for n_layers={self.n_layers}; "
                f"it needs at least {self.min_input_size}×{self.min_input_size} (3·2^n_layers), "
                f"so use larger images or fewer layers"
            )
        return self.main(x)
