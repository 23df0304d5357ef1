"""What to do with a job that may have run before: skip it, evaluate it again, or train it (again).

A job is *done* when its job folder holds a finished record (metrics.json, status "finished") written with the
same evaluation settings: its training signature is the folder's name, and the record keeps the identity of the
`eval` settings it was measured with. The sweeper (gqbench.sweeper) asks this before launching anything, and every
job asks it again when it starts (a job run on its own, or launched by another sweeper), so both agree.

    rerun=none   (default) skip done jobs; evaluate finished jobs whose eval settings changed; resume the rest
    rerun=eval   evaluate again even when done (same job folder, same MLflow run)
    rerun=all    train again from scratch: a finished job's files move to previous/<time>/ and a new MLflow run
                 starts. An unfinished job resumes from its checkpoint (that is how a requeued job continues)
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .jobdir import JobDir

RERUN_CHOICES = ("none", "eval", "all")

# eval keys that change where things are kept, not what is measured
EVAL_IDENTITY_EXCLUDED = ("cache_dir",)


def eval_identity(cfg: DictConfig) -> str:
    """12 hex chars of sha1 over the resolved `eval` settings that decide the numbers."""
    settings = OmegaConf.to_container(cfg.eval, resolve=True)
    for key in EVAL_IDENTITY_EXCLUDED:
        settings.pop(key, None)
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def rerun_choice(cfg: DictConfig) -> str:
    choice = cfg.get("rerun", "none")
    choice = "none" if choice is None else str(choice)
    if choice not in RERUN_CHOICES:
        raise ValueError(f"rerun={choice!r} is not one of {', '.join(RERUN_CHOICES)}: use rerun=none (skip finished "
                         "jobs), rerun=eval (evaluate them again) or rerun=all (train them again)")
    return choice


@dataclass(frozen=True)
class Plan:
    action: str          # "skip" | "evaluate" | "train"
    reason: str
    record: dict[str, Any] | None  # the finished record, when there is one


def plan(cfg: DictConfig, jobdir: JobDir) -> Plan:
    choice = rerun_choice(cfg)
    record = jobdir.finished_record()
    if record is None:
        reason = "resuming from its checkpoint" if jobdir.checkpoint.exists() else "new"
        return Plan("train", reason, None)
    if choice == "all":
        return Plan("train", "rerun=all: training again from scratch", record)
    if choice == "eval":
        return Plan("evaluate", "rerun=eval: evaluating again", record)
    if record.get("eval_identity") != eval_identity(cfg):
        return Plan("evaluate", "finished, evaluation settings changed: evaluating again", record)
    return Plan("skip", "finished with these settings", record)


def archive_finished(jobdir: JobDir) -> str:
    """Move a finished job's files (checkpoint, record, grid, run ids ...) to previous/<time>/, so that training
    starts from scratch and nothing is lost. Returns the folder's name."""
    target = jobdir.path / JobDir.PREVIOUS / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=False)
    for path in jobdir.path.iterdir():
        if path.name not in (JobDir.PREVIOUS, JobDir.LOCK):
            path.rename(target / path.name)
    return str(target.relative_to(jobdir.path))


def summary(record: dict[str, Any]) -> str:
    metrics = record.get("metrics", {})
    parts = [f"{name} {metrics[key]:.4g}" for name, key in (("PSNR", "psnr"), ("SSIM", "ssim"), ("rFID", "rfid"),
                                                            ("LPIPS", "lpips")) if key in metrics]
    return ", ".join(parts) + (f"; MLflow run {record['mlflow_run_id']}" if record.get("mlflow_run_id") else "")
