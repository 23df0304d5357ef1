"""Encoder -> quantizer -> decoder, the model every method trains. The backbone (model.arch: the SD3-style conv
"unet" or the BSQ-ViT "vit") asks the quantizer for its channel counts: the encoder emits `quantizer.in_channels`,
the decoder reads `quantizer.out_channels`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from quantizers import Quantizer, QuantizerOutput

from .unet import Decoder, Encoder
from .vit import ViTDecoder, ViTEncoder

if TYPE_CHECKING:  # keeps the model importable without Hydra (e.g. on a bare GPU box)
    from omegaconf import DictConfig


@dataclass
class AutoencoderOutput:
    x_hat: Tensor  # reconstruction from z_q: quantized in eval mode, the training latent in train mode
    quant: QuantizerOutput
    x_hat_continuous: Tensor | None = None  # eval mode, methods with a continuous path (GQ's Gaussian VAE)


class Autoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, quantizer: Quantizer, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder

    def forward(self, x: Tensor) -> AutoencoderOutput:
        quant = self.quantize(self.encoder(x))
        x_hat = self.decoder(quant.z_q)
        x_cont = self.decoder(quant.continuous) if quant.continuous is not None else None
        return AutoencoderOutput(x_hat=x_hat, quant=quant, x_hat_continuous=x_cont)

    def quantize(self, h: Tensor) -> QuantizerOutput:
        # indices and the search are fp32/int64 even when the backbone runs under autocast
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.quantizer(h.float())

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images -> (B, num_codebooks, H, W) int64 tokens."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.quantizer.encode(self.encoder(x).float())

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        return self.decoder(self.quantizer.decode(indices))

    @property
    def last_layer(self) -> Tensor:
        return self.decoder.last_layer


def build_autoencoder(model_cfg: "DictConfig", quantizer: Quantizer, image_size: int) -> Autoencoder:
    if getattr(model_cfg, "z_channels", None) is not None and quantizer.out_channels != model_cfg.z_channels:
        raise ValueError(
            f"model.z_channels={model_cfg.z_channels} but the quantizer decodes to {quantizer.out_channels} channels "
            f"(codebook_dim={getattr(quantizer, 'codebook_dim', '?')} x num_codebooks={quantizer.num_codebooks}); "
            "make them equal, or set quantizer.num_codebooks=null to derive it from model.z_channels"
        )
    arch = getattr(model_cfg, "arch", "unet")  # the UNet configs predate the key: keeps their run signatures
    if arch == "unet":
        backbone = dict(
            ch=model_cfg.ch, ch_mult=tuple(model_cfg.ch_mult), num_res_blocks=model_cfg.num_res_blocks,
            attn_resolutions=tuple(model_cfg.attn_resolutions), resolution=image_size, dropout=model_cfg.dropout,
        )
        encoder = Encoder(in_channels=3, out_channels=quantizer.in_channels, **backbone)
        decoder = Decoder(out_channels=3, in_channels=quantizer.out_channels, **backbone)
    elif arch == "vit":
        backbone = dict(
            resolution=image_size, patch_size=model_cfg.patch_size, width=model_cfg.width, layers=model_cfg.layers,
            heads=model_cfg.heads, mlp_ratio=model_cfg.mlp_ratio, dropout=model_cfg.dropout,
        )
        encoder = ViTEncoder(in_channels=3, out_channels=quantizer.in_channels, **backbone)
        decoder = ViTDecoder(out_channels=3, in_channels=quantizer.out_channels,
                             output_clamp=model_cfg.output_clamp, **backbone)
    else:
        raise ValueError(f"model.arch={arch!r} is unknown; choose 'unet' (SD3-style conv VAE) or 'vit' (BSQ-ViT)")
    return Autoencoder(encoder, quantizer, decoder)
