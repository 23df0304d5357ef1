"""Entry point: `python -m gqbench.sweep [overrides]` runs one job (train, then evaluate);
`python -m gqbench.sweep -m +experiment=<name>` runs a sweep defined in sweeps/<name>.yaml.

A job's state lives in `<paths.runs>/jobs/<signature>/` where the signature hashes the training-relevant
config (gqbench.config.SIGNATURE_KEYS): running the same job again resumes from its last checkpoint, and a
finished job is evaluated again without retraining. Hydra's own output folder gets the logs, the resolved
config and a copy of metrics.json.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from quantizers import build_quantizer

from .checkpoint import write_json
from .config import check_targets, flatten, quantizer_kwargs, run_signature, safe_instantiate
from .evaluate import GRID_FILE, evaluate
from .models.autoencoder import build_autoencoder
from .tracking import Tracker, silence_mlflow_noise
from .train import train

log = logging.getLogger("gqbench")

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
METRICS_FILE = "metrics.json"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device=cpu or device=auto")
    return device


class Terminated(BaseException):
    """SIGTERM arrived (SLURM time limit, scancel, kill). The job records it (KILLED) like a failure, but it is a
    BaseException, like KeyboardInterrupt, so a local multirun stops instead of starting the next job (Hydra's
    launcher catches only Exception, which is what keeps a sweep going past a failed job)."""


@contextlib.contextmanager
def sigterm_raises():
    """Turn SIGTERM into Terminated for the job's duration, unless someone else (e.g. submitit, which needs
    SIGTERM for its requeue logic) already handles it, or we are not on the main thread."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"received signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def exclusive_job(job_dir: Path):
    """One process per job folder: two sweeps that contain the same job must not train into one checkpoint."""
    with open(job_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RuntimeError(
                f"job folder {job_dir} is in use by another process ({f.read().strip() or 'unknown'}); "
                "the same job is running elsewhere — wait for it, its result will be reused"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_job(cfg: DictConfig, output_dir: Path | None = None, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Train and evaluate the job `cfg` describes; returns its final metrics (also in metrics.json + MLflow)."""
    started = time.time()
    check_targets(cfg)
    if output_dir is None:
        output_dir = Path(HydraConfig.get().runtime.output_dir)
    runs_dir = Path(cfg.paths.runs).resolve()
    signature = run_signature(cfg)
    job_dir = runs_dir / "jobs" / signature
    job_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Triton launches on the current device
    with exclusive_job(job_dir), sigterm_raises():
        return _run_locked_job(cfg, output_dir, runs_dir, job_dir, signature, device, started, on_step)


def _run_locked_job(cfg, output_dir, runs_dir, job_dir, signature, device, started, on_step) -> dict[str, float]:
    silence_mlflow_noise()
    tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, runs_dir, job_dir)
    tracker.start(cfg.tracking.run_name, tags={
        "signature": signature, "quantizer": cfg.quantizer.name, "model": cfg.model.name,
        "data": cfg.data._target_.rsplit(".", 1)[-1], "output_dir": str(output_dir), "job_dir": str(job_dir),
        # CPU results are bit-reproducible only for the same torch build and thread count (summation order)
        "torch_version": torch.__version__, "torch_threads": str(torch.get_num_threads()), "device": str(device),
    })
    log.info("job %s  signature %s  device %s  job folder %s", cfg.job_name, signature, device, job_dir)
    log.info("MLflow: %s  run %s", tracker.uri, tracker.run_id)
    try:  # from here on a failure is recorded in MLflow and metrics.json before it propagates
        tracker.log_params(flatten(cfg))
        seed_everything(cfg.seed)
        data = safe_instantiate(cfg.data, path="data")
        quantizer = build_quantizer(**quantizer_kwargs(cfg.quantizer, cfg.model.z_channels))
        model = build_autoencoder(cfg.model, quantizer, cfg.data.image_size)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("data: %s", data.description)
        log.info("model: %s, %.2fM parameters; quantizer: %s", cfg.model.name, n_params / 1e6, quantizer.extra_repr())
        tracker.log_metrics({"model_parameters": n_params}, 0)
        train_stats = train(cfg, model, data.train, job_dir, device, tracker.log_metrics, on_step=on_step)
        metrics = evaluate(
            model, data.val, num_images=cfg.eval.num_images, batch_size=cfg.eval.batch_size,
            grid_images=cfg.eval.grid_images, device=device, out_dir=job_dir, seed=cfg.seed,
        )
        metrics["train_final_loss"] = train_stats.get("loss", float("nan"))
        metrics["wall_seconds"] = time.time() - started
        tracker.log_metrics(metrics, cfg.train.max_steps)
        record = {"status": "finished", "signature": signature, "mlflow_run_id": tracker.run_id, "metrics": metrics}
        for folder in {job_dir, output_dir}:
            write_json(folder / METRICS_FILE, record)
        config_file = job_dir / "config.yaml"
        config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
        for artifact in (job_dir / METRICS_FILE, job_dir / GRID_FILE, config_file):
            tracker.log_artifact(artifact)
        tracker.end("FINISHED")
        kl = ("  KL bits %.3f [%.3f, %.3f]" % (metrics["q_bits_mean"], metrics["q_bits_min"], metrics["q_bits_max"])
              if "q_bits_mean" in metrics else "")
        log.info("PSNR %.2f dB  SSIM %.4f  usage %.3f  perplexity %.1f  bits/token %.4g%s  -> %s",
                 metrics["psnr"], metrics["ssim"], metrics["codebook_usage"], metrics["perplexity"],
                 metrics["bits_per_token"], kl, output_dir)
        return metrics
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, (KeyboardInterrupt, Terminated)) else "FAILED"
        error = f"{type(exc).__name__}: {exc}"
        write_json(output_dir / METRICS_FILE, {"status": status.lower(), "signature": signature, "error": error})
        tracker.record_failure(error, status)
        raise


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    return run_job(cfg)


if __name__ == "__main__":
    main()
