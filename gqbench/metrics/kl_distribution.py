"""The distribution of the per-group KL (bits) over every evaluated token and group, for methods with a Gaussian
posterior (GQ, TokenBridge): a fixed-bin histogram (BIN_BITS wide, from 0 to the last bin that holds the target
band plus BAND_MARGIN_BITS; larger values land in the last bin, non-finite ones nowhere) with the TDC target and
dead band beside it.

The mean and in-band fraction are already scalars (q_bits_*); the histogram shows what they hide — a bimodal
split between dead and overfull groups looks the same in the mean. It is a per-run artefact (kl_bits.csv) that the
report plots against the band; no scalar is logged from it.
"""
from __future__ import annotations

import math

import pandas as pd
import torch

from .base import EvalBatch, Metric

BIN_BITS = 0.125
BAND_MARGIN_BITS = 4.0


class KlDistribution(Metric):
    def __init__(self, target_bits: float, tolerance: float):
        self.target_bits, self.tolerance = float(target_bits), float(tolerance)
        top = math.ceil((self.target_bits + self.tolerance + BAND_MARGIN_BITS) / BIN_BITS) * BIN_BITS
        self.edges = torch.arange(0.0, top + BIN_BITS / 2, BIN_BITS, dtype=torch.float64)
        self.counts = torch.zeros(len(self.edges) - 1, dtype=torch.int64)

    @classmethod
    def of(cls, quantizer) -> "KlDistribution | None":
        """The metric for a quantizer with a TDC (target, band), or None for the others."""
        tdc = getattr(quantizer, "tdc", None)
        return cls(tdc.target_bits, tdc.tolerance) if tdc is not None else None

    def update(self, batch: EvalBatch) -> None:
        bits = batch.out.quant.group_bits
        if bits is None:
            return
        values = bits.detach().double().flatten().cpu()
        bins = torch.bucketize(values[torch.isfinite(values)], self.edges[1:-1], right=True)
        self.counts += torch.bincount(bins, minlength=len(self.counts))

    def state(self) -> torch.Tensor:
        return self.counts.clone()

    def merge(self, states) -> None:
        self.counts = torch.stack(list(states)).sum(0)

    def summary(self) -> dict[str, float]:
        return {}

    def table(self) -> pd.DataFrame:
        """One row per bin: [bin_lo, bin_hi) in bits, the number of (token, group) values in it, and the target band."""
        return pd.DataFrame({"bin_lo": self.edges[:-1].numpy(), "bin_hi": self.edges[1:].numpy(),
                             "count": self.counts.numpy(), "target_bits": self.target_bits,
                             "tolerance_bits": self.tolerance})
