"""LPIPS networks, for the training loss (VGG, as taming) and the evaluation metric (AlexNet, as the paper).

lpips ships its linear heads; the trunk (VGG16 / AlexNet / SqueezeNet features) is torchvision's, which downloads
it into $TORCH_HOME/hub/checkpoints/ on first use. Offline, give the torchvision file itself (`weights=PATH`,
eval.lpips_weights / loss.perceptual_weights): it is loaded with weights_only=True into the trunk lpips builds.
Where there is no file and no network we fail with the reason and the file to provide; we never fall back to a
random trunk.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

BACKBONE_FILES = {  # what torchvision looks for in $TORCH_HOME/hub/checkpoints/
    "vgg": "vgg16-397923af.pth",
    "alex": "alexnet-owt-7be5be79.pth",
    "squeeze": "squeezenet1_1-b8a52dc0.pth",
}


class LPIPSUnavailable(RuntimeError):
    """The LPIPS weights could not be loaded; the message says why and what to provide."""


def load_lpips(net: str, device: torch.device | str = "cpu", weights: str | Path | None = None,
               option: str = "loss.perceptual_weights") -> nn.Module:
    """A frozen lpips.LPIPS(net) in eval mode, inputs in [-1, 1], output (B, 1, 1, 1). `weights`: the torchvision
    backbone file (else torchvision's cache or download); `option` names the config key in error messages."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS net={net!r} is not one of {sorted(BACKBONE_FILES)}")
    import lpips

    with warnings.catch_warnings():  # lpips calls torchvision with its deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models")
        return _build(lpips, net, device, weights, option)


def _build(lpips, net: str, device, weights, option: str) -> nn.Module:
    if weights is not None:
        from .checkpoint import load_untrusted

        trunk = load_untrusted(Path(weights).expanduser(), option)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        load_trunk(model, trunk, option, weights)
        return model.eval().requires_grad_(False).to(device)
    try:
        model = lpips.LPIPS(net=net, verbose=False)
    except Exception as exc:  # no network and no cached backbone
        raise LPIPSUnavailable(
            f"LPIPS({net}) is unavailable: {type(exc).__name__}: {str(exc)[:200]}. Put the torchvision backbone file "
            f"{BACKBONE_FILES[net]} in {Path(torch.hub.get_dir()) / 'checkpoints'} (or set TORCH_HOME), pass "
            f"{option}=PATH, or set loss.perceptual_weight=0 / eval.lpips=false"
        ) from exc
    return model.eval().requires_grad_(False).to(device)


def load_trunk(model: nn.Module, trunk: dict[str, torch.Tensor], option: str, path) -> None:
    """lpips keeps torchvision's `features[i]` layers as `slice<k>.<i>`: map the file's keys onto them."""
    mapped = {}
    for name in model.net.state_dict():
        source = re.sub(r"^slice\d+\.", "features.", name)
        if source not in trunk:
            raise ValueError(f"{option}={path} lacks {source!r}: it is not the torchvision {model.pnet_type}net file "
                             f"({BACKBONE_FILES.get(model.pnet_type, '?')})")
        mapped[name] = trunk[source]
    model.net.load_state_dict(mapped)
