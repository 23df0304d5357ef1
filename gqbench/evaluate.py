"""Evaluation of a trained autoencoder on the validation split: reconstruction metrics (quantized path, and
the continuous path where the method has one), codebook usage/entropy/perplexity, the quantizer's own stats
(TDC bits for GQ), and a reconstruction grid PNG.

In a multi-process job every rank evaluates a contiguous shard of the images and the per-rank results merge
in one collective at the end (gather_objects), so ranks that see different numbers of batches cannot hang and
the merged per-image lists are in the 1-process order. The quantized path's metrics equal a 1-process
evaluation; GQ's continuous path draws a posterior sample, and the ranks' noise differs from one process's.

rFID and LPIPS arrive with the evaluation issue: they plug in as further per-batch accumulators here.
"""
from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.utils import save_image
from tqdm import tqdm

from . import metrics as M
from .models.autoencoder import Autoencoder
from .runtime import gather_objects, is_distributed

log = logging.getLogger(__name__)


class StatAccumulator:
    """Combines per-batch quantizer stats: means weighted by batch size, *_min by min, *_max by max."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def update(self, stats: dict[str, torch.Tensor | float], n: int) -> None:
        batch = StatAccumulator()
        batch.sums = {k: v if k.endswith(("_min", "_max")) else v * n for k, v in M.as_numbers(stats).items()}
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


def shard(n: int) -> range:
    """This rank's contiguous share of n items (all of them in a single process)."""
    if not is_distributed():
        return range(n)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return range(rank * n // world, (rank + 1) * n // world)


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
) -> dict[str, float]:
    """The metrics of `model` on the first `num_images` validation images; writes the grid to `grid_file`
    (None: no grid, e.g. on ranks other than 0). Every rank returns the merged metrics."""
    if num_images is not None:
        if num_images < 1:
            raise ValueError(f"eval.num_images={num_images} must be >= 1 (or null for the whole validation split)")
        val_set = Subset(val_set, range(min(num_images, len(val_set))))
    if len(val_set) == 0:
        raise ValueError("the validation split is empty; check the data config")
    image_size = val_set[0].shape[-1]
    model.eval().to(device)
    torch.manual_seed(seed)  # GQ's continuous path draws a posterior sample: make it reproducible

    q = model.quantizer
    counter = M.CodebookCounter(q.codebook_size, q.num_codebooks)
    quant_stats = StatAccumulator()
    psnr, ssim, psnr_c, ssim_c = [], [], [], []
    grid_rows: list[torch.Tensor] = []
    tokens_per_image = None
    loader = DataLoader(Subset(val_set, shard(len(val_set))), batch_size=batch_size, shuffle=False)
    for x in tqdm(loader, desc="eval", disable=not sys.stderr.isatty(), dynamic_ncols=True):
        x = x.to(device)
        out = model(x)
        p, s = M.psnr_ssim_per_image(x, out.x_hat)
        psnr.extend(p), ssim.extend(s)
        if out.x_hat_continuous is not None:
            p, s = M.psnr_ssim_per_image(x, out.x_hat_continuous)
            psnr_c.extend(p), ssim_c.extend(s)
        counter.update(out.quant.indices)
        quant_stats.update(out.quant.stats, len(x))
        tokens_per_image = out.quant.indices.shape[2] * out.quant.indices.shape[3]
        if not grid_rows:
            k = min(grid_images, len(x))
            grid_rows = [x[:k], out.x_hat[:k]] + ([out.x_hat_continuous[:k]] if out.x_hat_continuous is not None else [])

    shards = gather_objects((psnr, ssim, psnr_c, ssim_c, counter.counts, quant_stats, tokens_per_image))
    psnr, ssim, psnr_c, ssim_c = ([v for part in shards for v in part[i]] for i in range(4))
    counter = M.CodebookCounter(q.codebook_size, q.num_codebooks)
    quant_stats = StatAccumulator()
    for part in shards:
        counter.merge_(part[4])
        quant_stats.merge(part[5])
    tokens_per_image = next(part[6] for part in shards if part[6] is not None)

    results: dict[str, float] = {"eval_images": float(len(psnr))}
    results[M.PSNR], results[M.PSNR_STD] = M.summarize(psnr)
    results[M.SSIM] = float(np.mean(ssim))
    if psnr_c:
        results[M.CONTINUOUS + M.PSNR], results[M.CONTINUOUS + M.PSNR_STD] = M.summarize(psnr_c)
        results[M.CONTINUOUS + M.SSIM] = float(np.mean(ssim_c))
    results.update(counter.summary())
    results.update({f"q_{k}": v for k, v in quant_stats.summary().items()})
    results.update(M.rate(q.bits_per_token, tokens_per_image, image_size))
    results.update(M.code_shape(q))

    if grid_file is not None and grid_rows:
        grid_file.parent.mkdir(parents=True, exist_ok=True)
        rows = torch.cat(grid_rows).clamp(-1, 1).add(1).div(2).cpu()
        save_image(rows, grid_file, nrow=len(grid_rows[0]), padding=1)
    return results
