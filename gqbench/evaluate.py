"""Evaluation of a trained autoencoder on the validation split: a loop over gqbench.metrics' accumulators
(PSNR/SSIM of the quantized and, where the method has one, the continuous path; codebook usage and effective
rate; the quantizer's own stats; rFID and LPIPS where their weights are available), plus a reconstruction grid
PNG and a per-image CSV.

In a multi-process job rank r evaluates batches r, r + W, r + 2W, ... and every metric's state merges in one
collective at the end (gather_objects), so ranks that see different numbers of batches cannot hang. Batch b
is always the same images, and the RNG is seeded from (seed, b) before it (GQ's continuous path draws a
posterior sample), so every metric is the same for any number of processes.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from . import metrics as M
from .checkpoint import atomic_write_bytes
from .models.autoencoder import Autoencoder
from .runtime import gather_objects, is_distributed

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    protocol: dict[str, str] = field(default_factory=dict)  # tag -> how a metric was measured
    unavailable: dict[str, str] = field(default_factory=dict)  # metric -> "label: reason"

    def tags(self) -> dict[str, str]:
        return {**self.protocol, **{M.UNAVAILABLE_TAG + k: v for k, v in self.unavailable.items()}}


def my_batches(n: int, batch_size: int) -> list[tuple[int, list[int]]]:
    """(batch number, item indices) of the batches of n items that this rank evaluates: every W-th one."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if is_distributed() else (0, 1)
    return [(b, batches[b]) for b in range(rank, len(batches), world)]


def batch_seed(seed: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


@torch.no_grad()
def evaluate(
    model: Autoencoder,
    val_set: Dataset,
    *,
    num_images: int | None,
    batch_size: int,
    grid_images: int,
    device: torch.device,
    grid_file: Path | None,
    seed: int,
    metrics: list[M.Metric] | None = None,
    unavailable: dict[str, M.MetricUnavailable] | None = None,
    per_image_file: Path | None = None,
    kl_file: Path | None = None,
) -> Evaluation:
    """The metrics of `model` on the first `num_images` validation images. `metrics`: from
    gqbench.metrics.build_metrics (default: those that need no weights). Writes the grid to `grid_file`, the
    per-image values to `per_image_file` and, for methods with a Gaussian posterior, the per-group KL histogram
    to `kl_file` (None: not written, e.g. on ranks other than 0). Every rank returns the merged result."""
    if num_images is not None:
        if num_images < 1:
            raise ValueError(f"eval.num_images={num_images} must be >= 1 (or null for the whole validation split)")
        val_set = Subset(val_set, range(min(num_images, len(val_set))))
    if len(val_set) == 0:
        raise ValueError("the validation split is empty; check the data config")
    if metrics is None:
        metrics, unavailable = M.build_metrics({M.RFID: False, M.LPIPS: False}, model.quantizer)
    image_size = val_set[0].shape[-1]
    model.eval().to(device)
    unavailable = dict(unavailable or {})
    for metric in list(metrics):
        try:
            metric.begin(val_set, device)
        except M.MetricUnavailable as exc:  # e.g. images too small for the network
            unavailable[exc.metric] = exc
            metrics = [m for m in metrics if m is not metric]

    grid_rows: list[torch.Tensor] = []
    tokens_per_image = None
    batches = my_batches(len(val_set), batch_size)
    loader = DataLoader(val_set, batch_sampler=[indices for _, indices in batches])
    for (b, _), x in tqdm(zip(batches, loader), total=len(batches), desc="eval", disable=not sys.stderr.isatty(),
                          dynamic_ncols=True):
        x = x.to(device)
        torch.manual_seed(batch_seed(seed, b))  # GQ's continuous path draws a posterior sample
        out = model(x)
        batch = M.EvalBatch(b, x, out)
        for metric in metrics:
            metric.update(batch)
        tokens_per_image = out.quant.indices.shape[2] * out.quant.indices.shape[3]
        if b == 0:
            k = min(grid_images, len(x))
            grid_rows = [x[:k], out.x_hat[:k]] + ([out.x_hat_continuous[:k]] if out.x_hat_continuous is not None else [])

    shards = gather_objects(([metric.state() for metric in metrics], tokens_per_image))
    result = Evaluation({"eval_images": float(len(val_set))},
                        unavailable={k: v.describe() for k, v in unavailable.items()})
    for i, metric in enumerate(metrics):
        metric.merge([shard[0][i] for shard in shards])
        try:
            result.metrics.update(metric.summary())
            result.protocol.update(metric.protocol())
        except M.MetricUnavailable as exc:
            result.unavailable[exc.metric] = exc.describe()
    tokens_per_image = next(shard[1] for shard in shards if shard[1] is not None)
    q = model.quantizer
    result.metrics.update(M.rate(q.bits_per_token, tokens_per_image, image_size))
    result.metrics.update(M.code_shape(q))
    for name, why in result.unavailable.items():
        log.warning("%s unavailable: %s", name, why)

    if grid_file is not None and grid_rows:
        from torchvision.utils import save_image  # torchvision costs seconds to import: only when writing a grid

        grid_file.parent.mkdir(parents=True, exist_ok=True)
        rows = torch.cat(grid_rows).clamp(-1, 1).add(1).div(2).cpu()
        save_image(rows, grid_file, nrow=len(grid_rows[0]), padding=1)
    if per_image_file is not None:
        write_per_image(per_image_file, metrics)
    if kl_file is not None:
        for metric in metrics:
            if isinstance(metric, M.KlDistribution) and metric.counts.sum() > 0:
                write_csv(kl_file, metric.table())
    return result


def write_per_image(path: Path, metrics: list[M.Metric]) -> None:
    """One row per evaluated image (in dataset order), one column per per-image metric: what a report needs
    for paired comparisons between methods without re-running a model."""
    columns = {k: v for metric in metrics if hasattr(metric, "per_image") for k, v in metric.per_image().items()}
    table = pd.DataFrame(columns)
    table.index.name = "image"
    write_csv(path, table, index=True)


def write_csv(path: Path, table: pd.DataFrame, index: bool = False) -> None:
    text = table.to_csv(float_format="%.9g", index=index).encode()
    atomic_write_bytes(path, lambda f: f.write(text))


if __name__ == "__main__":  # python -m gqbench.evaluate ckpt=PATH ...  (gqbench/checkpoint_evaluation.py)
    from gqbench.checkpoint_evaluation import main

    raise SystemExit(main())
