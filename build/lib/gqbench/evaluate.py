"""Evaluation of a trained autoencoder on the validation split: reconstruction metrics (quantized path, and
the continuous path where the method has one), codebook usage/entropy/perplexity, the quantizer's own stats
(TDC bits for GQ), and a reconstruction grid PNG.

In a multi-process job rank r evaluates batches r, r + W, r + 2W, ... and the per-rank results merge in one
collective at the end (gather_objects), so ranks that see different numbers of batches cannot hang. Batch b
is always the same images, and the RNG is seeded from (seed, b) before it (GQ's continuous path draws a
posterior sample), so every metric is the same for any number of processes.

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

    q = model.quantizer
    counter = M.CodebookCounter(q.codebook_size, q.num_codebooks)
    quant_stats = StatAccumulator()
    per_batch: dict[int, tuple[list, list, list, list]] = {}  # batch number -> per-image psnr, ssim (+ continuous)
    grid_rows: list[torch.Tensor] = []
    tokens_per_image = None
    batches = my_batches(len(val_set), batch_size)
    loader = DataLoader(val_set, batch_sampler=[indices for _, indices in batches])
    for (b, _), x in tqdm(zip(batches, loader), total=len(batches), desc="eval", disable=not sys.stderr.isatty(),
                          dynamic_ncols=True):
        x = x.to(device)
        torch.manual_seed(batch_seed(seed, b))  # GQ's continuous path draws a posterior sample
        out = model(x)
        p, s = M.psnr_ssim_per_image(x, out.x_hat)
        p_c, s_c = M.psnr_ssim_per_image(x, out.x_hat_continuous) if out.x_hat_continuous is not None else ([], [])
        per_batch[b] = (list(p), list(s), list(p_c), list(s_c))
        counter.update(out.quant.indices)
        quant_stats.update(out.quant.stats, len(x))
        tokens_per_image = out.quant.indices.shape[2] * out.quant.indices.shape[3]
        if b == 0:
            k = min(grid_images, len(x))
            grid_rows = [x[:k], out.x_hat[:k]] + ([out.x_hat_continuous[:k]] if out.x_hat_continuous is not None else [])

    shards = gather_objects((per_batch, counter.counts, quant_stats, tokens_per_image))
    merged = {b: lists for part in shards for b, lists in part[0].items()}
    psnr, ssim, psnr_c, ssim_c = ([v for b in sorted(merged) for v in merged[b][i]] for i in range(4))
    counter = M.CodebookCounter(q.codebook_size, q.num_codebooks)
    quant_stats = StatAccumulator()
    for part in shards:
        counter.merge_(part[1])
        quant_stats.merge(part[2])
    tokens_per_image = next(part[3] for part in shards if part[3] is not None)

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
