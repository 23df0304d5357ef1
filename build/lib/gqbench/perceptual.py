"""LPIPS for the training loss (and, with the evaluation issue, the LPIPS metric).

lpips downloads its torchvision backbone (VGG16 / AlexNet) on first use. Where there is no network and no
cached file, we fail with the reason and the file to provide; we never fall back to a random backbone.
"""
from __future__ import annotations

import torch
from torch import nn

BACKBONE_FILES = {  # what torchvision looks for in $TORCH_HOME/hub/checkpoints/
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


class LPIPSUnavailable(RuntimeError):
    """The LPIPS weights could not be loaded; the message says why and what to provide."""


def load_lpips(net: str, device: torch.device | str = "cpu") -> nn.Module:
    """A frozen lpips.LPIPS(net) in eval mode, inputs in [-1, 1], output (B, 1, 1, 1)."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS net={net!r} is not one of {sorted(BACKBONE_FILES)}")
    try:
        import lpips

        model = lpips.LPIPS(net=net, verbose=False)
    except Exception as exc:  # no network and no cached backbone, or lpips/torchvision missing
        raise LPIPSUnavailable(
            f"LPIPS({net}) is unavailable: {type(exc).__name__}: {exc}. Put the torchvision backbone file "
            f"{BACKBONE_FILES[net]} in $TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/) "
            "or set loss.perceptual_weight=0"
        ) from exc
    return model.eval().requires_grad_(False).to(device)
