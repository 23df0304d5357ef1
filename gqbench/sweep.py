"""Entry point: `python -m gqbench.sweep [overrides]` runs one job (train, then evaluate);
`python -m gqbench.sweep -m +experiment=<name>` runs a sweep defined in sweeps/<name>.yaml.

Multi-process jobs: `torchrun --nproc_per_node=N -m gqbench.sweep ...`, or a submitit launcher with
`hydra.launcher.tasks_per_node=N` (gqbench.runtime). What a job does is gqbench.job.run_job.
"""
from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from .job import run_job

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    return run_job(cfg)


if __name__ == "__main__":
    main()
