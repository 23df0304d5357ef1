"""What every evaluation metric is: an accumulator that updates per batch, merges across ranks, summarises.

    metric.begin(val_set, device)   once, before the first batch
    metric.update(batch)            on each rank, for each of its batches (tensors stay on the device)
    state = metric.state()          picklable, what one collective gathers from every rank
    metric.merge([s0, s1, ...])     every rank's state, own included, in rank order -> this metric's totals
    metric.summary()                {name: float}; the same on every rank after the merge
    metric.protocol()               {tag: text}: how the number was measured (logged beside it)

A metric whose model weights are missing is not built: `MetricUnavailable` carries a short label for tables
("no Inception weights") and the full reason with what to do; the evaluation records it instead of a number.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

UNAVAILABLE_TAG = "unavailable."  # MLflow tag prefix: unavailable.<metric> = "<label>: <reason>"


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (e.g. no weights offline). `label` is what a table cell shows."""

    def __init__(self, metric: str, label: str, reason: str):
        super().__init__(f"{metric} is unavailable ({label}): {reason}")
        self.metric, self.label, self.reason = metric, label, reason

    def describe(self) -> str:
        """"<label>: <reason>", the value of the metric's unavailable.<metric> tag (tables show the label)."""
        return f"{self.label}: {self.reason}"


@dataclass
class EvalBatch:
    """One evaluated batch: its number (batch b is the same images on any number of ranks), the originals and
    the model's output (gqbench.models.autoencoder.AutoencoderOutput)."""
    number: int
    x: Tensor
    out: Any


class Metric:
    """Base class; see the module docstring for the life cycle."""

    def begin(self, val_set, device) -> None:
        """Before the first batch (move networks to the device, look up cached reference statistics)."""

    def update(self, batch: EvalBatch) -> None:
        raise NotImplementedError

    def state(self) -> Any:
        raise NotImplementedError

    def merge(self, states: list[Any]) -> None:
        raise NotImplementedError

    def summary(self) -> dict[str, float]:
        raise NotImplementedError

    def protocol(self) -> dict[str, str]:
        return {}


class PerImageValues:
    """Per-image values keyed by batch number, so a merge puts every image back in dataset order."""

    def __init__(self):
        self.batches: dict[int, Tensor] = {}

    def add(self, batch_number: int, values: Tensor) -> None:
        self.batches[batch_number] = values.detach()

    def state(self) -> dict[int, Tensor]:
        return {b: v.double().cpu() for b, v in self.batches.items()}

    def merge(self, states: list[dict[int, Tensor]]) -> None:
        self.batches = {b: v for state in states for b, v in state.items()}

    def values(self) -> Tensor:
        """All values, in dataset order, float64 on the CPU."""
        if not self.batches:
            return torch.zeros(0, dtype=torch.float64)
        return torch.cat([self.batches[b].double().cpu() for b in sorted(self.batches)])


class StatAccumulator:
    """Combines per-batch scalar stats: means weighted by batch size, *_min by min, *_max by max."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, stats: dict[str, float], n: int) -> None:
        batch = StatAccumulator()
        batch.sums = {k: v if k.endswith(("_min", "_max")) else v * n for k, v in stats.items()}
        batch.count = n
        self.merge(batch)

    def merge(self, other: "StatAccumulator") -> None:
        """Add another shard's accumulator (a rank's, in distributed evaluation)."""
        for k, v in other.sums.items():
            if k.endswith("_min"):
                self.sums[k] = min(self.sums.get(k, math.inf), v)
            elif k.endswith("_max"):
                self.sums[k] = max(self.sums.get(k, -math.inf), v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += other.count

    def summary(self) -> dict[str, float]:
        return {k: (v if k.endswith(("_min", "_max")) else v / max(self.count, 1)) for k, v in self.sums.items()}


def as_numbers(stats: dict[str, Tensor | float], reduce=None) -> dict[str, float]:
    """Stats as Python floats, with one device->host copy for all of them. `reduce`, if given, is applied in
    place to the stacked float64 vector first (the trainer averages it over ranks)."""
    keys = list(stats)
    if not keys:
        return {}
    device = next((v.device for v in stats.values() if isinstance(v, Tensor)), torch.device("cpu"))
    vector = torch.stack([(v.detach() if isinstance(v, Tensor) else torch.tensor(v, dtype=torch.float64))
                          .reshape(()).to(device, torch.float64) for v in stats.values()])
    if reduce is not None:
        reduce(vector)
    return dict(zip(keys, vector.tolist()))
