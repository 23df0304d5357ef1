"""Training throughput of one job on this machine's CPU cores: 1 process × N threads against N processes × 1
thread (torchrun, gloo), measured side by side in one run, plus the host syncs per training step of each method.

    python tests/bench_multiprocess.py [--steps 60] [--image-size 32] [--batch 16]

Steps/s come from the MLflow timestamps of the `train/loss` entries (startup and evaluation excluded).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def job_overrides(args) -> list[str]:
    return ["data=synthetic", f"data.image_size={args.image_size}", "data.num_train=256", "data.num_val=16",
            "quantizer=gq", f"model.attn_resolutions=[{args.image_size // 4}]", f"train.batch_size={args.batch}", f"train.max_steps={args.steps}",
            f"train.log_every={args.steps // 6}", "eval.batch_size=16", "device=cpu"]


def steps_per_second(runs: Path) -> float:
    from mlflow.tracking import MlflowClient

    from gqbench.tracking import default_tracking_uri

    client = MlflowClient(default_tracking_uri(runs))
    (run,) = client.search_runs([client.get_experiment_by_name("gqbench").experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    first, last = history[0], history[-1]
    return (last.step - first.step) / ((last.timestamp - first.timestamp) / 1000)


def timed_job(launcher: list[str], threads: int, args, runs: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    command = [*launcher, "-m", "gqbench.sweep", *job_overrides(args), f"paths.runs={runs}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return steps_per_second(runs)


def syncs_per_step(name: str) -> tuple[int, int]:
    """(syncs on a non-logging step outside the code search, inside it) for a 9-step run of `name`."""
    import torch
    from conftest import BASELINE_OVERRIDES, FAST_OVERRIDES, compose_config
    from host_syncs import HostSyncs

    from gqbench.job import assemble
    from gqbench.jobdir import JobDir
    from gqbench.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(FAST_OVERRIDES + [f"quantizer={name}"] + BASELINE_OVERRIDES.get(name, [])
                             + ["train.max_steps=6", "train.log_every=4", "train.checkpoint_every=100"], Path(tmp))
        torch.manual_seed(0)
        parts = assemble(cfg)
        marks: dict[int, int] = {}
        with HostSyncs() as syncs:
            train(cfg, parts.model, parts.data.train, JobDir(Path(tmp) / "job").create(), torch.device("cpu"),
                  lambda metrics, step: None, on_step=lambda done: marks.__setitem__(done, syncs.mark()))
        step3 = syncs.events[marks[2]:marks[3]]
    search = sum(where.startswith("kernels/") for _, where in step3)
    return len(step3) - search, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one = timed_job([sys.executable], cores, args, Path(tmp) / "one")
        many = timed_job([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cores}"],
                         1, args, Path(tmp) / "many")
    print(f"GQ, unet_tiny, {args.image_size}px, global batch {args.batch}, {cores} cores")
    print(f"  1 process x {cores} threads : {one:6.2f} steps/s")
    print(f"  {cores} processes x 1 thread : {many:6.2f} steps/s   ratio {many / one:.2f}")
    print("host syncs per training step (non-logging step): outside the code search / inside it")
    for name in ("gq", "vq", "fsq", "lfq", "bsq", "tokenbridge"):
        outside, inside = syncs_per_step(name)
        print(f"  {name:12s} {outside} / {inside}")


if __name__ == "__main__":
    main()
