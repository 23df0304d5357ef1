"""One job: assemble (data, quantizer, model) from a config, train, evaluate, record.

`assemble` is the one place that turns a config into the job's parts; training and the standalone evaluator
both call it. `run_job` is what every process of a job runs (see gqbench.runtime for ranks): rank 0 owns the
MLflow run, the checkpoint and the job folder's files; every rank trains on its slice of the global batch and
evaluates its shard of the validation images.

A job's state lives in its JobDir (`<paths.runs>/jobs/<signature>/`): running the same job again resumes from
its last checkpoint; a finished job is skipped, or evaluated again without retraining when its evaluation
settings changed (gqbench.rerun; `rerun=eval|all` on purpose), always into the same MLflow run. Hydra's own
output folder gets the logs, the resolved config and a copy of metrics.json.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from quantizers import Quantizer

from . import runtime
from .checkpoint import write_json
from .config import check_targets, flatten, quantizer_from_config, safe_instantiate
from .evaluate import Evaluation, evaluate
from .metrics import build_metrics
from .jobdir import JobDir
from .rerun import archive_finished, eval_identity, plan, summary
from .models.autoencoder import Autoencoder, build_autoencoder
from .tracking import DESCRIPTION_TAG, PARENT_TAG, ROLE_TAG, Tracker, silence_mlflow_noise
from .train import train

log = logging.getLogger("gqbench")


@dataclass
class JobParts:
    data: Any  # gqbench.data.DataSplits: .train, .val, .description
    quantizer: Quantizer
    model: Autoencoder


def assemble(cfg: DictConfig) -> JobParts:
    """Data, quantizer and autoencoder from a composed config (the model's initial weights come from the
    global torch RNG: seed it first for a reproducible job)."""
    data = safe_instantiate(cfg.data, path="data")
    quantizer = quantizer_from_config(cfg)
    model = build_autoencoder(cfg.model, quantizer, cfg.data.image_size)
    return JobParts(data=data, quantizer=quantizer, model=model)


def run_job(cfg: DictConfig, output_dir: Path | None = None, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Train and evaluate the job `cfg` describes; returns its final metrics (also in metrics.json + MLflow).
    In a multi-process job every rank returns the same metrics."""
    started = time.time()
    check_targets(cfg)
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = Path(HydraConfig.get().runtime.output_dir)
    ranks = runtime.ranks_from_environment()
    device = runtime.resolve_device(cfg.device, ranks)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # Triton launches on the current device
    jobdir = JobDir.for_config(cfg).create()
    timeout = cfg.get("runtime", {}).get("collective_timeout_s", 600)
    with runtime.process_group(ranks, device, timeout), runtime.job_lock(ranks, jobdir.lock), \
            runtime.StopSignals() as stop:
        job_plan = plan(cfg, jobdir) if ranks.is_main else None
        if ranks.is_main:
            log.info("job %s  %s: %s", cfg.job_name, jobdir.signature, job_plan.reason)
            if job_plan.action == "skip":
                log.info("nothing to do (%s); rerun=eval or rerun=all to redo it", summary(job_plan.record))
                write_json(Path(output_dir) / JobDir.METRICS, job_plan.record)
            if job_plan.action == "train" and job_plan.record is not None:
                log.info("moved the finished training to %s", archive_finished(jobdir))
            for stale in jobdir.remove_stale_temporaries():
                log.info("removed %s, left by an interrupted write", stale.name)
        job_plan = runtime.broadcast_object(job_plan)  # after rank 0 moved files: every rank sees the same folder
        if job_plan.action == "skip":
            return dict(job_plan.record["metrics"])
        return _run_locked(cfg, ranks, device, jobdir, Path(output_dir), started, on_step, stop)


def _run_locked(cfg, ranks: runtime.Ranks, device, jobdir: JobDir, output_dir: Path, started: float, on_step,
                stop: runtime.StopSignals) -> dict[str, float]:
    silence_mlflow_noise()
    tracker = None
    if ranks.is_main:
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, cfg.paths.runs, jobdir)
        provenance = runtime.provenance_tags()  # again on every restart: host, commit, SLURM ids may change
        tracker.start(cfg.tracking.run_name, tags={
            "signature": jobdir.signature, "quantizer": cfg.quantizer.name, "model": cfg.model.name,
            "data": cfg.data._target_.rsplit(".", 1)[-1], "output_dir": str(output_dir), "job_dir": str(jobdir.path),
            # CPU results are bit-reproducible only for the same torch build and thread count (summation order)
            "torch_version": torch.__version__, "torch_threads": str(torch.get_num_threads()), "device": str(device),
            "world_size": str(ranks.world_size), "launcher": ranks.launcher, **provenance,
            **tracking_tags(cfg, jobdir, provenance["git_commit"]),
        })
        log.info("job %s  signature %s  device %s  ranks %d (%s)  job folder %s", cfg.job_name, jobdir.signature,
                 device, ranks.world_size, ranks.launcher, jobdir.path)
        log.info("MLflow: %s  run %s", tracker.uri, tracker.run_id)
    try:  # from here on a failure is recorded in MLflow and metrics.json before it propagates
        if tracker is not None:
            tracker.log_params(flatten(cfg))
        runtime.seed_everything(cfg.seed)
        parts = assemble(cfg)
        model = parts.model
        n_params = sum(p.numel() for p in model.parameters())
        log.info("data: %s", parts.data.description)
        log.info("model: %s, %.2fM parameters; quantizer: %s", cfg.model.name, n_params / 1e6, parts.quantizer.extra_repr())
        # weights for rFID/LPIPS are found (or found missing) before training: eval.require_* fails here. Building
        # the networks initialises layers from the global RNG: fork it, so training never depends on eval settings
        with torch.random.fork_rng(devices=[]):
            eval_metrics, unavailable = build_metrics(cfg.eval, parts.quantizer, is_main=ranks.is_main)
        if tracker is not None:
            tracker.log_dataset(*dataset_input(cfg), context="training")
        log_metrics = tracker.log_metrics if tracker is not None else (lambda metrics, step: None)
        log_metrics({"model_parameters": n_params}, 0)
        train_stats = train(cfg, model, parts.data.train, jobdir, device, log_metrics, ranks=ranks, on_step=on_step,
                            stop=stop)
        evaluation = evaluate(
            model, parts.data.val, num_images=cfg.eval.num_images, batch_size=cfg.eval.batch_size,
            grid_images=cfg.eval.grid_images, device=device, grid_file=jobdir.grid if ranks.is_main else None,
            seed=cfg.seed, metrics=eval_metrics, unavailable=unavailable,
            per_image_file=jobdir.per_image if ranks.is_main else None,
            kl_file=jobdir.kl_bits if ranks.is_main else None,
        )
        metrics = evaluation.metrics
        metrics["train_final_loss"] = train_stats.get("loss", float("nan"))
        metrics["wall_seconds"] = time.time() - started
        if tracker is not None:
            _record_finished(cfg, tracker, jobdir, output_dir, evaluation)
        return metrics
    except BaseException as exc:
        with runtime.stop_signals_ignored():
            _record_failure(cfg, exc, ranks, tracker, jobdir, output_dir)
        raise


def tracking_tags(cfg: DictConfig, jobdir: JobDir, git_commit: str) -> dict[str, str]:
    """What MLflow's UI shows of a job: its parent sweep run, a description a person can read, the source."""
    q, t = cfg.quantizer, cfg.train
    swept = cfg.tracking.get("swept") or ""
    description = (f"{q.name} with codebook size {q.codebook_size} (dims per group {q.codebook_dim}) on {cfg.model.name}, "
                   f"{t.max_steps} steps at batch {t.batch_size}, seed {cfg.seed}"
                   + (f"; swept: {swept}" if swept else "") + f". Job folder {jobdir.path}.")
    tags = {DESCRIPTION_TAG: description, "mlflow.source.name": "gqbench.sweep", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": git_commit, ROLE_TAG: "job"}
    if swept:
        tags["swept"] = swept
    if cfg.tracking.get("parent_run_id"):
        tags[PARENT_TAG] = cfg.tracking.parent_run_id
    return tags


def dataset_input(cfg: DictConfig):
    """(name, digest, source) of the job's data for MLflow's Dataset column: the builder and image size, the
    sha1 of the resolved data config (the data part of the job's signature), and where the images come from."""
    import hashlib
    import json

    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.filesystem_dataset_source import FileSystemDatasetSource

    data = OmegaConf.to_container(cfg.data, resolve=True)
    builder = str(data.get("_target_", "data")).rsplit(".", 1)[-1]
    digest = hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]
    if data.get("root"):
        source = FileSystemDatasetSource(str(Path(data["root"]).resolve()))
    else:
        source = CodeDatasetSource({k: str(v) for k, v in data.items()})
    return f"{builder}-{data.get('image_size')}px", digest, source


def _record_finished(cfg: DictConfig, tracker: Tracker, jobdir: JobDir, output_dir: Path, evaluation: Evaluation) -> None:
    metrics = evaluation.metrics
    tracker.log_metrics(metrics, cfg.train.max_steps)
    tracker.set_tags(evaluation.tags())
    record = {"status": "finished", "signature": jobdir.signature, "mlflow_run_id": tracker.run_id, "metrics": metrics,
              "eval_identity": eval_identity(cfg), "protocol": evaluation.protocol,
              "unavailable": evaluation.unavailable}
    for path in {jobdir.metrics, output_dir / JobDir.METRICS}:
        write_json(path, record)
    jobdir.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    for artifact in (jobdir.metrics, jobdir.grid, jobdir.config, jobdir.per_image, jobdir.kl_bits):
        if artifact.exists():  # kl_bits.csv: methods with a Gaussian posterior only
            tracker.log_artifact(artifact)
    tracker.end("FINISHED")
    kl = ("  KL bits %.3f [%.3f, %.3f]" % (metrics["q_bits_mean"], metrics["q_bits_min"], metrics["q_bits_max"])
          if "q_bits_mean" in metrics else "")
    perceptual = "  ".join(f"{name} {metrics[key]:.4g}" if key in metrics else f"{name} n/a"
                           for name, key in (("rFID", "rfid"), ("LPIPS", "lpips")))
    log.info("PSNR %.2f dB  SSIM %.4f  %s  usage %.3f  perplexity %.1f  bits/token %.4g (effective %.2f)%s  -> %s",
             metrics["psnr"], metrics["ssim"], perceptual, metrics["codebook_usage"], metrics["perplexity"],
             metrics["bits_per_token"], metrics["effective_bits_per_token"], kl, output_dir)


def _record_failure(cfg, exc: BaseException, ranks: runtime.Ranks, tracker: Tracker | None, jobdir: JobDir,
                    output_dir: Path) -> None:
    """KILLED for an interrupt of a single process, or a stop signal that every rank acted on together after a
    checkpoint; FAILED otherwise. In a multi-process job any other interrupt is how the launcher stops the
    surviving ranks after one failed (torchrun, submitit), so it is FAILED too.
    Rank 0 writes metrics.json and the run's `error` tag; another rank adds `error.rank<N>` to the same run."""
    interrupted = isinstance(exc, (KeyboardInterrupt, runtime.Terminated))
    stopped_together = getattr(exc, "checkpointed", False)
    status = "KILLED" if interrupted and (stopped_together or not ranks.distributed) else "FAILED"
    error = runtime.peer_failure_hint(exc, ranks)
    if interrupted and ranks.distributed and not stopped_together:
        error = (f"rank {ranks.rank} of {ranks.world_size} was stopped ({type(exc).__name__}); the launcher stops "
                 f"every rank when one fails — see the other ranks' error tags and logs")
    log.error("job %s failed on rank %d: %s", jobdir.signature, ranks.rank, error)
    if ranks.is_main:
        write_json(output_dir / JobDir.METRICS, {"status": status.lower(), "signature": jobdir.signature, "error": error})
        if tracker is not None:
            tracker.record_failure(error, status)
        return
    Tracker.record_failure_of_existing_run(cfg.tracking.uri, cfg.tracking.experiment, cfg.paths.runs, jobdir,
                                           error, status, tag=f"error.rank{ranks.rank}")
