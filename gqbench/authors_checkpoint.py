"""The GQ authors' released checkpoint (`sd3unet_gq_0.25.ckpt`, HF `xutongda/GQModel`) as a gqbench job.

What the reference code (tongdaxu/VQ-VAE-from-Gaussian-VAE, `pit/models/autoencoder.py`, `pit/modules/unet.py`,
`pit/quantization/gaussian.py`; read at 1910dc2 and 89df16b) puts in a Lightning checkpoint's "state_dict":
- `encoder.*`, `decoder.*`: the SGM-layout UNet — conv_in, down.{i}.block.{j}.{norm1,conv1,norm2,conv2,
  nin_shortcut}, down.{i}.attn.{j}.{norm,q,k,v,proj_out} (1×1 convs), down.{i}.downsample.conv, mid.block_1,
  mid.block_2 (no mid attention), norm_out, conv_out; the decoder's up.{i} with up.0 the highest resolution and
  up.{i}.upsample.conv. gqbench.models.unet uses the same names, so these keys load as they are.
- `loss.*` (LPIPS-VGG, the discriminator, logvar): training-only, dropped here.
- nothing from the GQ regularizer: its Sobol codebook and prior log-densities are non-persistent buffers and its
  λs are Python floats. Our quantizer's TDC buffers (training-only) keep their initial values; our codebook is
  the same scrambled Sobol(seed 42) → Φ⁻¹ point set, so indices match the reference's.
The encoder's 2C output channels are [μ | log σ²] and groups are strided, as in ours.

The model config is read off the weights' shapes (ch, ch_mult, blocks per level, attention levels, z channels);
GQ's codebook is K = 2^16 with m = 16 (the 0.25-bpp release) unless overridden (quantizer.codebook_dim=8 for
`sd3unet_gq_0.50`). Images are 256² as the paper evaluates (data.image_size overrides).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

TRAINING_ONLY_PREFIXES = ("loss.",)
AUTHORS_GQ = {"codebook_size": 65536, "codebook_dim": 16, "seed": 42, "beta": 1.0}


def is_authors_checkpoint(state: dict[str, Any]) -> bool:
    weights = state.get("state_dict")
    return "config" not in state and isinstance(weights, dict) and any(k.startswith("encoder.") for k in weights)


def _count(weights: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in weights if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def model_config_from_weights(weights: dict[str, torch.Tensor], image_size: int) -> dict[str, Any]:
    ch = weights["encoder.conv_in.weight"].shape[0]
    levels = _count(weights, r"encoder\.down\.(\d+)\.")
    ch_mult = [weights[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)]
    attn_resolutions = [image_size // 2**i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in weights]
    return {
        "name": "unet_sd3_authors", "z_channels": int(weights["decoder.conv_in.weight"].shape[1]), "ch": int(ch),
        "ch_mult": ch_mult, "num_res_blocks": _count(weights, r"encoder\.down\.0\.block\.(\d+)\."),
        "attn_resolutions": attn_resolutions, "dropout": 0.0,
    }


def job_from_authors_checkpoint(state: dict[str, Any], image_size: int = 256) -> tuple[DictConfig, dict[str, torch.Tensor]]:
    """(a gqbench job config, the autoencoder's weights) from the authors' Lightning checkpoint."""
    from hydra import compose, initialize_config_dir

    from .sweep import config_dir

    weights = {k: v.float() for k, v in state["state_dict"].items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    unknown = sorted({k.split(".", 1)[0] for k in weights} - {"encoder", "decoder"})
    if unknown:
        raise ValueError(f"the checkpoint has weights under {unknown} besides encoder./decoder./loss.: not the "
                         "sd3unet_gq configuration this loader knows (VA-VAE alignment or latent stats?)")
    model = model_config_from_weights(weights, image_size)
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=unet_sd3", "quantizer=gq", f"data.image_size={image_size}"])
    cfg.model = OmegaConf.merge(cfg.model, model)
    cfg.quantizer = OmegaConf.merge(cfg.quantizer, AUTHORS_GQ)
    cfg.job_name = "gq-authors-" + model["name"]
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return cfg, weights


def missing_is_allowed(missing: list[str]) -> bool:
    """The authors' checkpoint lacks only our quantizer's training-time buffers (TDC λs)."""
    return all(k.startswith("quantizer.") for k in missing)
