"""Autoencoder backbones (SD3-style conv VAE) and the PatchGAN discriminator."""

from gqbench.models.discriminator import PatchDiscriminator
from gqbench.models.unet import Decoder, Encoder

__all__ = ["Decoder", "Encoder", "PatchDiscriminator"]
