"""LPIPS between each original and its quantized reconstruction, mean over images.

The lpips package (v0.1 linear heads) with AlexNet by default, as the paper evaluates (gq-reference §4); VGG with
eval.lpips_net=vgg. Inputs are in [-1, 1]; reconstructions are not clamped, as in the reference's eval.py.
"""
from __future__ import annotations

from importlib.metadata import version

import numpy as np
import torch

from ..perceptual import BACKBONE_FILES, LPIPSUnavailable, load_lpips
from .base import EvalBatch, Metric, MetricUnavailable, PerImageValues
from .fid import hub_file

LPIPS = "lpips"
MIN_SIZE = 32  # px: AlexNet's strided convs and pools leave nothing of smaller images


def load_lpips_metric_net(net: str, weights: str | None, download: bool = True) -> torch.nn.Module:
    if weights is None and not download and not hub_file(BACKBONE_FILES.get(net, "")).is_file():
        raise MetricUnavailable(LPIPS, f"no LPIPS-{net} weights",
                                f"eval.download_weights=false and no file; put {BACKBONE_FILES.get(net)} in "
                                f"{hub_file(BACKBONE_FILES.get(net, 'x')).parent} (or set TORCH_HOME), or pass eval.lpips_weights=PATH")
    try:
        return load_lpips(net, "cpu", weights, option="eval.lpips_weights")
    except LPIPSUnavailable as exc:
        raise MetricUnavailable(LPIPS, f"no LPIPS-{net} weights", str(exc)) from exc


class Lpips(Metric):
    def __init__(self, net_module: torch.nn.Module, net: str):
        self.model, self.net = net_module, net
        self.values = PerImageValues()

    def begin(self, val_set, device: torch.device) -> None:
        size = int(val_set[0].shape[-1])
        if size < MIN_SIZE:
            raise MetricUnavailable(LPIPS, "images too small", f"{size} px; LPIPS needs at least {MIN_SIZE} px")
        self.model.to(device)

    def update(self, batch: EvalBatch) -> None:
        self.values.add(batch.number, self.model(batch.x, batch.out.x_hat).reshape(-1))

    def state(self):
        return self.values.state()

    def merge(self, states) -> None:
        self.values.merge(states)

    def summary(self) -> dict[str, float]:
        values = self.values.values()
        return {LPIPS: float(values.mean())} if len(values) else {}

    def per_image(self) -> dict[str, np.ndarray]:
        return {LPIPS: self.values.values().numpy()}

    def protocol(self) -> dict[str, str]:
        return {"protocol.lpips": f"lpips {version('lpips')} net={self.net} v0.1, inputs in "
                                  "[-1, 1], reconstructions unclamped, mean over images"}
