"""Entry point: `python -m gqbench.sweep [overrides]` runs one job (train, then evaluate);
`python -m gqbench.sweep +experiment=<name> -m [more overrides]` runs a sweep defined in sweeps/<name>.yaml.

Multi-process jobs: `torchrun --nproc_per_node=N -m gqbench.sweep ...`, or a submitit launcher with
`hydra.launcher.tasks_per_node=N` (gqbench.runtime). What a job does is gqbench.job.run_job.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig



def register_sweeper() -> None:
    """Hydra finds plugins by walking the hydra_plugins namespace, which misses an editable install's import hook:
    register gqbench's sweeper (hydra_plugins/gqbench_sweeper) explicitly, whatever the install."""
    from hydra.core.plugins import Plugins
    from hydra_plugins.gqbench_sweeper import GqbenchSweeper

    Plugins.instance().register(GqbenchSweeper)


register_sweeper()


def config_dir() -> Path:
    """The Hydra tree: conf/ of the source checkout, or the copy an installed wheel carries (gqbench_conf)."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "config.yaml").is_file():
        return checkout
    import gqbench_conf

    return Path(next(iter(gqbench_conf.__path__)))


CONF_DIR = config_dir()

# Hydra's command-line flags (hydra/_internal/utils.py: get_args_parser), with whether they take a value
HYDRA_FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
                          "--package", "-p", "--experimental-rerun", "--shell-completion", "-sc"}
HYDRA_FLAGS = {"--multirun", "-m", "--run", "-r", "--resolve", "--help", "-h", "--hydra-help", "--version"}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def hydra_flags_first(argv: list[str]) -> list[str]:
    """Move Hydra's flags (with their values) before the overrides, keeping both in order: argparse accepts
    `a=1 b=2 -m` and `-m a=1 b=2` but refuses `a=1 -m b=2`, and users append overrides after `-m`."""
    flags, overrides = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        name = token.split("=", 1)[0]
        if name in HYDRA_FLAGS_WITH_VALUE and "=" not in token and i + 1 < len(argv):
            flags += argv[i : i + 2]
            i += 2
            continue
        if name in HYDRA_FLAGS or name in HYDRA_FLAGS_WITH_VALUE:
            flags.append(token)
        elif name == "--info":
            flags.append(token)
            if "=" not in token and i + 1 < len(argv) and argv[i + 1] in INFO_TOPICS:
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(token)
        i += 1
    return flags + overrides


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, float]:
    from .job import run_job  # here, not above: the launch host of a sweep needs neither torch nor the models

    return run_job(cfg)


def exit_at_once() -> None:
    """After a successful run: flush and leave without the interpreter's module teardown, which takes ~3.7 s
    with torch, triton and mlflow loaded (measured: atexit handlers 0.07 s, then 3.7 s to exit). Everything a
    job writes is on disk by now (atomic writes, committed MLflow calls); only the logs need flushing."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.argv[1:] = hydra_flags_first(sys.argv[1:])
    main()  # Hydra exits with status 1 itself when a run fails
    exit_at_once()
