"""Autoencoder backbones (SD3-style conv VAE, BSQ-ViT) and the PatchGAN discriminator."""

from gqbench.models.discriminator import PatchDiscriminator
from gqbench.models.unet import Decoder, Encoder
from gqbench.models.vit import ViTDecoder, ViTEncoder

__all__ = ["Decoder", "Encoder", "PatchDiscriminator", "ViTDecoder", "ViTEncoder"]
