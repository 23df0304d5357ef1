"""The training loop: one function, read top to bottom.

Per step: encoder -> quantizer -> decoder, loss = reconstruction + quantizer.loss (+ adaptive-weighted GAN
loss after loss.gan.start_step), one Adam step for the autoencoder, then (with the GAN on) one for the
discriminator. Deviation from the paper's schedule (gq-reference §3.3): the reference alternates the two
optimizers by batch, so its autoencoder updates on every other batch; we update both on every batch and skip
the discriminator entirely before start_step. Step counts are therefore autoencoder updates.

Resume: the batch at step s is a pure function of (seed, s) (StepBatchSampler) and the checkpoint holds the
model (TDC λs included), optimizers, RNG state and step, so on CPU an interrupted run that resumes from its
last checkpoint ends bit-exactly where an uninterrupted one does (tested). On CUDA it resumes the same
trajectory up to the non-determinism of cuDNN/atomics (no deterministic mode is forced).

Several processes (gqbench.runtime): the autoencoder is wrapped in DistributedDataParallel; the gradients of
the parameters outside it (learned log-variance, discriminator) are averaged with one all_reduce each. Rank r
trains on slice r of each global batch of `train.batch_size` images (the step -> batch map does not depend on
the world size), every rank draws the same random numbers (runtime docstring), and rank 0 alone logs and
writes checkpoints. So a run resumes on any world size that divides the batch, and N processes follow the
1-process trajectory up to float summation order (tested on CPU with gloo). Not equal across world sizes:
LFQ/BSQ's codebook entropy is a statistic of each rank's batch (as in Open-MAGVIT2 and the BSQ code), and
dropout masks (off by default) are drawn per rank.

Host syncs: the quantizers return their stats as device tensors and the trainer turns them into numbers only
on logging steps (one sync for all of them), and checks there that the loss is finite; on other steps a
training step reads nothing back from the device except what an exact code search needs (kernels: one
readback per search call; GQ does not search while training).
"""
from __future__ import annotations

import logging
import math
import sys
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from torch.nn.parallel import DistributedDataParallel

from .checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from .config import safe_instantiate
from .jobdir import JobDir
from .losses import GANLoss, ReconstructionLoss
from .metrics import as_numbers
from .models.autoencoder import Autoencoder
from .perceptual import load_lpips
from .runtime import Ranks, StopSignals, average_across_ranks_, average_gradients

log = logging.getLogger(__name__)

# bf16 only: fp16 would need a GradScaler, and bf16 is what Hopper/Ampere training uses anyway
AMP_DTYPES = {None: None, "bf16": torch.bfloat16}


class StepBatchSampler(Sampler[list[int]]):
    """Yields the batches of steps [start_step, end_step); epoch e is randperm(n) seeded from (seed, e).

    The (seed, e) -> generator seed map goes through numpy's SeedSequence, so seed 1 is not seed 0 one epoch
    later (as it would be with seed + e). With world_size > 1, rank r gets slice r of each global batch of
    `batch_size` items, so the global batch at each step does not depend on the world size.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, end_step: int,
                 rank: int = 0, world_size: int = 1):
        if num_items < batch_size:
            raise ValueError(
                f"train.batch_size={batch_size} is larger than the training set ({num_items} images); "
                "lower train.batch_size or use more data"
            )
        if batch_size % world_size:
            raise ValueError(
                f"train.batch_size={batch_size} (the global batch) does not split evenly over {world_size} processes; "
                f"use a batch size divisible by {world_size} or another number of processes"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.end_step = start_step, end_step
        self.batches_per_epoch = num_items // batch_size  # drop_last: every batch is full
        self.local_batch = batch_size // world_size
        self.offset = rank * self.local_batch

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start_step, self.end_step):
            e, i = divmod(step, self.batches_per_epoch)
            if e != epoch:
                epoch_seed = int(np.random.SeedSequence([self.seed, e]).generate_state(1, dtype=np.uint64)[0] >> 1)
                epoch, perm = e, torch.randperm(self.num_items, generator=torch.Generator().manual_seed(epoch_seed))
            start = i * self.batch_size + self.offset
            yield perm[start : start + self.local_batch].tolist()


class TrainingParts(torch.nn.Module):
    """Everything with trainable state besides the autoencoder: reconstruction loss (learned log-variance)
    and the GAN loss (discriminator)."""

    def __init__(self, loss_cfg: DictConfig, device: torch.device):
        super().__init__()
        perceptual = load_lpips(loss_cfg.perceptual_net, device, loss_cfg.get("perceptual_weights")) if loss_cfg.perceptual_weight > 0 else None
        self.reconstruction = ReconstructionLoss(
            kind=loss_cfg.reconstruction, perceptual_weight=loss_cfg.perceptual_weight, perceptual=perceptual,
            learn_logvar=loss_cfg.learn_logvar, reduction=loss_cfg.reduction,
        )
        gan = loss_cfg.gan
        self.gan = GANLoss(disc_weight=gan.disc_weight, start_step=gan.start_step, ndf=gan.ndf, n_layers=gan.n_layers) if gan.enabled else None


def train(
    cfg: DictConfig,
    model: Autoencoder,
    train_set: Dataset,
    jobdir: JobDir,
    device: torch.device,
    log_metrics: Callable[[dict[str, float], int], None],
    ranks: Ranks = Ranks(),
    on_step: Callable[[int], None] | None = None,
    stop: StopSignals | None = None,
) -> dict[str, float]:
    """Train to cfg.train.max_steps, resuming from the job folder's checkpoint when present. Returns the last
    step's stats (as numbers). Every rank of a multi-process job calls this; rank 0 logs and checkpoints.

    on_step(step) is called after every finished step (tests use it to simulate an interruption). A stop
    signal (runtime.StopSignals) that arrives during a step is acted on after it, with a checkpoint of that step.
    """
    tcfg = cfg.train
    ckpt_path = jobdir.checkpoint
    parts = TrainingParts(cfg.loss, device).to(device)
    model.to(device)
    lr = tcfg.lr * tcfg.get("lr_scale", 1.0)  # a protocol's per-method rate (conf/recipe)
    opt_ae = safe_instantiate(tcfg.optimizer, path="train.optimizer")(
        [p for p in list(model.parameters()) + list(parts.reconstruction.parameters()) if p.requires_grad], lr=lr
    )
    opt_d = safe_instantiate(tcfg.optimizer, path="train.optimizer")(parts.gan.parameters(), lr=lr) if parts.gan else None
    if parts.gan is not None:
        for group in opt_d.param_groups:
            group["lr"] = cfg.loss.gan.lr

    # ---- resume ---------------------------------------------------------------------------------
    start_step, last_stats = 0, {}
    stateful = {"model": model, "parts": parts, "opt_ae": opt_ae, "opt_d": opt_d}
    ckpt = load_checkpoint(ckpt_path)
    if ckpt is not None:
        start_step = restore_training_state(ckpt, stateful, device)
        last_stats = ckpt.get("stats", {})
        log.info("resuming from %s at step %d", ckpt_path, start_step)

    def checkpoint(step: int, stats: dict[str, float]) -> None:
        if ranks.is_main:
            save_checkpoint(ckpt_path, training_state(
                step, stateful, device, stats=stats, config=OmegaConf.to_container(cfg, resolve=True)))

    if start_step >= tcfg.max_steps:
        log.info("training already finished (%d steps): evaluating only", start_step)
        return last_stats

    # ---- data -----------------------------------------------------------------------------------
    sampler = StepBatchSampler(len(train_set), tcfg.batch_size, cfg.seed, start_step, tcfg.max_steps,
                               rank=ranks.rank, world_size=ranks.world_size)
    loader = DataLoader(
        train_set, batch_sampler=sampler, num_workers=tcfg.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG we checkpoint
    )
    if tcfg.amp not in AMP_DTYPES:
        raise ValueError(f"train.amp={tcfg.amp!r} is not supported; use null (fp32) or bf16")
    amp_dtype = AMP_DTYPES[tcfg.amp]
    if amp_dtype is not None and device.type != "cuda":
        raise ValueError(f"train.amp={tcfg.amp} needs a CUDA device (device={device}); use train.amp=null on CPU")

    # ---- loop -----------------------------------------------------------------------------------
    model.train()
    parts.train()
    model.quantizer.check_finite_inputs = False  # a host sync per step; the loss is checked on logging steps
    net = model
    if ranks.distributed:  # buffers (TDC λs, VQ codebook state) are kept equal by the quantizers themselves
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                      forward_sync_buffers=False)
    bar = tqdm(total=tcfg.max_steps, initial=start_step, desc="train", dynamic_ncols=True,
               disable=not sys.stderr.isatty() or not ranks.is_main, mininterval=1.0)
    step, stats = start_step, last_stats
    last_read = last_checkpoint = start_step  # the last step whose loss was read back / checkpointed
    stop = stop if stop is not None else StopSignals()
    with stop.deferred():
        for step, x in enumerate(loader, start=start_step):
            x = x.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = net(x)
                rec_loss, rec_stats = parts.reconstruction(x, out.x_hat)
            loss = rec_loss + out.quant.loss
            stats = {"loss_rec": rec_loss.detach(), **rec_stats, **{f"q_{k}": v for k, v in out.quant.stats.items()}}
            if parts.gan is not None:
                g_loss, g_stats = parts.gan.generator_loss(out.x_hat, rec_loss, model.last_layer, step)
                loss = loss + g_loss
                stats.update(g_stats)

            opt_ae.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(parts.reconstruction.parameters())
            if tcfg.grad_clip:
                stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt_ae.step()

            if parts.gan is not None and step >= parts.gan.start_step:
                d_loss, d_stats = parts.gan.discriminator_loss(x, out.x_hat.detach(), step)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                average_gradients(parts.gan.parameters())
                opt_d.step()
                stats.update(d_stats)
            stats["loss"] = loss.detach()

            done = step + 1
            logging_step = done % tcfg.log_every == 0 or done == tcfg.max_steps
            checkpoint_step = done % tcfg.checkpoint_every == 0 or done == tcfg.max_steps
            if logging_step or checkpoint_step:
                stats = as_numbers(stats, reduce=average_across_ranks_)  # the global batch's stats, on every rank
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(
                        f"the training loss became {stats['loss']} between steps {last_read + 1} and {done} "
                        f"(non-finite stats: {_nonfinite(stats)}); last good checkpoint: "
                        + (f"step {last_checkpoint} (kept)" if last_checkpoint else "none yet")
                        + "; try a lower train.lr or set train.grad_clip (train.log_every=1 finds the step)")
                last_read = done
            if logging_step:
                log_metrics({f"train/{k}": v for k, v in stats.items()}, done)
                if ranks.is_main:
                    log.info("step %d/%d loss %.4g rec %.4g %s", done, tcfg.max_steps, stats["loss"], stats["loss_rec"],
                             _quantizer_summary(stats))
                bar.set_postfix(loss=f"{stats['loss']:.4g}", refresh=False)
            if checkpoint_step:
                checkpoint(done, stats)
                last_checkpoint = done
            bar.update(1)
            if on_step is not None:
                on_step(done)
            if stop.requested():  # SIGTERM / SIGUSR2 during this step: keep it, then stop (or requeue)
                stats = as_numbers(stats, reduce=average_across_ranks_)
                if math.isfinite(stats["loss"]):  # never a checkpoint of diverged weights
                    checkpoint(done, stats)
                    log.info("stop signal: checkpoint at step %d written", done)
                stop.proceed(checkpointed=True)
    bar.close()
    model.quantizer.check_finite_inputs = True
    return as_numbers(stats)


def _nonfinite(stats: dict[str, float]) -> str:
    return ", ".join(f"{k}={v}" for k, v in stats.items() if not math.isfinite(v)) or "none"


def _quantizer_summary(stats: dict[str, float]) -> str:
    """The quantizer's own training stats for the log line: GQ's KL bits and λ, other methods' loss terms."""
    if "q_bits_mean" in stats:
        text = "bits %.3f [%.3f, %.3f]" % (stats["q_bits_mean"], stats["q_bits_min"], stats["q_bits_max"])
        return text + (" lam %.3g" % stats["q_lam"] if "q_lam" in stats else "")
    return " ".join(f"{k[2:]} {v:.4g}" for k, v in stats.items() if k.startswith("q_") and "/" not in k)
