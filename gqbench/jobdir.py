"""The job folder: `<paths.runs>/jobs/<signature>/`, one per training-relevant config, and the names of the files
in it. Every module that reads or writes a job's files asks this object for the path.

    last.pt                      training checkpoint (gqbench.checkpoint), written atomically by rank 0
    metrics.json                 the job's final record: status, signature, MLflow run id, metrics
    config.yaml                  the resolved config the job ran with
    reconstructions.png          the evaluation grid (originals, reconstructions[, continuous path])
    per_image.csv                PSNR/SSIM/LPIPS of every evaluated image (the report's paired comparisons)
    kl_bits.csv                  GQ/TokenBridge: histogram of the per-group KL against the TDC band
    mlflow_run_id.<experiment>   the job's MLflow run in that experiment, so a resumed job logs into it
    .lock                        held by the job's rank 0 while it runs (one process group per job folder)
    previous/<time>/             an earlier finished training, moved aside by rerun=all (gqbench.rerun)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .config import run_signature


class JobDir:
    CHECKPOINT = "last.pt"
    METRICS = "metrics.json"
    CONFIG = "config.yaml"
    GRID = "reconstructions.png"
    PER_IMAGE = "per_image.csv"
    KL_BITS = "kl_bits.csv"
    RUN_ID = "mlflow_run_id"
    LOCK = ".lock"
    PREVIOUS = "previous"

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.signature = self.path.name

    @classmethod
    def for_config(cls, cfg: DictConfig) -> "JobDir":
        return cls(Path(cfg.paths.runs).resolve() / "jobs" / run_signature(cfg))

    def create(self) -> "JobDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    @property
    def checkpoint(self) -> Path:
        return self.path / self.CHECKPOINT

    @property
    def metrics(self) -> Path:
        return self.path / self.METRICS

    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def grid(self) -> Path:
        return self.path / self.GRID

    @property
    def per_image(self) -> Path:
        return self.path / self.PER_IMAGE

    @property
    def kl_bits(self) -> Path:
        return self.path / self.KL_BITS

    @property
    def lock(self) -> Path:
        return self.path / self.LOCK

    def finished_record(self) -> dict[str, Any] | None:
        """metrics.json when it says the job finished (written atomically, so it is whole or absent)."""
        try:
            record = json.loads(self.metrics.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("status") == "finished" else None

    def run_id_file(self, experiment_id: str) -> Path:
        return self.path / f"{self.RUN_ID}.{experiment_id}"

    def remove_stale_temporaries(self) -> list[Path]:
        """Atomic writes that a `kill -9` interrupted leave `.<name>.*.tmp` behind (the target itself is intact);
        called by the lock holder when the job starts again, so nobody else can be writing them."""
        stale = sorted(self.path.glob(".*.tmp"))
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def __repr__(self) -> str:
        return f"JobDir({str(self.path)!r})"
