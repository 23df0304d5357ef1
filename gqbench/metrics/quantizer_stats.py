"""The quantizer's own per-batch stats (GQ/TDC: KL bits per group, mean/min/max, in-band fraction), averaged over
the evaluated images and logged as q_<name>."""
from __future__ import annotations

from .base import EvalBatch, Metric, StatAccumulator, as_numbers


class QuantizerStats(Metric):
    def __init__(self):
        self.batches: list[tuple[dict, int]] = []  # read back once, in state(): no host sync per batch

    def update(self, batch: EvalBatch) -> None:
        self.batches.append((dict(batch.out.quant.stats), len(batch.x)))

    def state(self) -> StatAccumulator:
        acc = StatAccumulator()
        for stats, n in self.batches:
            acc.update(as_numbers(stats), n)
        return acc

    def merge(self, states) -> None:
        self.total = StatAccumulator()
        for acc in states:
            self.total.merge(acc)

    def summary(self) -> dict[str, float]:
        return {f"q_{k}": v for k, v in self.total.summary().items()}
