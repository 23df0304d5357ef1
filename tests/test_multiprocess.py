"""Multi-process jobs (gqbench.runtime), launched as a user would: torchrun and submitit with 2 CPU ranks (gloo).

- a 2-process job ends with the metrics of a 1-process job of the same global batch (to float summation order),
  in one MLflow run tagged with the world size;
- a killed rank takes the job down within seconds, recorded as FAILED, and the job then resumes on 1 process
  from the 2-process checkpoint to where an uninterrupted run ends;
- a training step reads nothing back from the device except on logging steps (and inside the exact code search).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import BASELINE_OVERRIDES, FAST_OVERRIDES, ROOT, compose_config
from gqbench.checkpoint import load_checkpoint
from gqbench.job import assemble, run_job
from gqbench.jobdir import JobDir
from gqbench.tracking import default_tracking_uri
from gqbench.train import train
from host_syncs import HostSyncs, summarize

pytestmark = pytest.mark.job

STEPS = 20
OVERRIDES = [o for o in FAST_OVERRIDES if not o.startswith("train.max_steps")] + [f"train.max_steps={STEPS}"]
# DDP averages two half-batch gradients where one process sums one batch: the same numbers up to summation
# order, which training amplifies: ~1e-7 relative after 20 steps, ~5e-6 after 60, ~3e-4 after 200 (GQ, measured).
TOLERANCE = dict(rel=1e-5, abs=1e-6)  # 20 steps
TOLERANCE_60_STEPS = dict(rel=1e-4, abs=1e-5)
COMPARED = ("psnr", "psnr_std", "ssim", "codebook_usage", "perplexity", "index_entropy_bits", "train_final_loss")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def sweep_command(launcher: list[str], overrides: list[str], runs: Path) -> list[str]:
    return [*launcher, "-m", "gqbench.sweep", *overrides, f"paths.runs={runs}"]


def environment() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1", PYTHONPATH=str(ROOT))


def run_cli(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout)


def the_run(runs: Path):
    """The job's one MLflow run (a sweep adds its parent run beside it: tagged gqbench.role=sweep)."""
    client = MlflowClient(default_tracking_uri(runs))
    found = client.search_runs([client.get_experiment_by_name("gqbench").experiment_id])
    jobs = [r for r in found if r.data.tags.get("gqbench.role") != "sweep"]
    assert len(jobs) == 1 and len(found) - len(jobs) <= 1, [r.info.run_id for r in found]
    return jobs[0]


def assert_same_metrics(got: dict[str, float], want: dict[str, float], tolerance=TOLERANCE, close_keys=(),
                        other_tolerance=None) -> None:
    """Every compared metric within `tolerance`; with `other_tolerance`, only `close_keys` are held to it."""
    keys = [*COMPARED, *(k for k in want if k.startswith(("q_", "continuous_")))]
    assert all(k in got for k in keys), sorted(set(keys) - set(got))
    for key in keys:
        bound = tolerance if other_tolerance is None or key in close_keys else other_tolerance
        assert got[key] == pytest.approx(want[key], **bound), key


# VQ with dead-code restarts from the global batch, but its default uniform init: after k-means the codewords sit
# at their clusters' centroids, where their gradient is ~0 and Adam's first steps (≈ lr·sign(g)) turn summation-
# order noise into ±lr moves, so runs of any two world sizes (or thread counts) agree only to ~1 % (measured).
GAN_AND_LOGVAR = ["loss.learn_logvar=true", "loss.gan.enabled=true", "loss.gan.start_step=2", "loss.gan.ndf=8",
                  "loss.gan.n_layers=1"]
MULTIPROCESS_OVERRIDES = {
    "gq": ["quantizer=gq"],
    "vq": ["quantizer=vq", "quantizer.codebook_size=16", "quantizer.codebook_dim=2", "quantizer.dead_code_threshold=0.1"],
    # gradients outside DDP (log-variance, discriminator), the adaptive GAN weight and ActNorm's init over ranks
    "gq-gan": ["quantizer=gq", *GAN_AND_LOGVAR],
}
# With the GAN on, the adaptive weight amplifies summation-order noise in the evaluation metrics (SSIM ~1e-3
# relative, measured), while the training-side numbers stay close: train_final_loss 4e-7, KL loss 2e-6. The
# same run without averaging the discriminator's gradients over ranks moves them by 1.5e-3 and 8e-4 (measured),
# so the GAN case is judged on those at 1e-4, and on the evaluation metrics only at 1e-2.
GAN_TOLERANCES = ({"train_final_loss", "q_kl_loss", "q_bits_mean", "q_lam"}, dict(rel=1e-4), dict(rel=1e-2, abs=1e-4))


@pytest.mark.parametrize("name", sorted(MULTIPROCESS_OVERRIDES))
def test_torchrun_job_matches_one_process_in_one_mlflow_run(name, tmp_path):
    overrides = OVERRIDES + MULTIPROCESS_OVERRIDES[name]
    one = run_job(compose_config(overrides, tmp_path / "one"), output_dir=tmp_path / "one" / "out")

    done = run_cli(sweep_command(TORCHRUN, overrides, tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-4000:]
    run = the_run(tmp_path / "two")
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["launcher"] == "torchrun"
    if name == "gq-gan":
        close, tolerance, others = GAN_TOLERANCES
        assert_same_metrics(run.data.metrics, one, tolerance, close_keys=close, other_tolerance=others)
    else:
        assert_same_metrics(run.data.metrics, one)
    history = MlflowClient(default_tracking_uri(tmp_path / "two")).get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(4, STEPS + 1, 4))  # rank 0 alone logs
    assert load_checkpoint(JobDir(Path(run.data.tags["job_dir"])).checkpoint)["step"] == STEPS


@pytest.mark.parametrize("name", ["gq", "vq"])
def test_submitit_local_tasks_per_node_runs_one_job_over_two_ranks(name, tmp_path):
    overrides = OVERRIDES + MULTIPROCESS_OVERRIDES[name]
    one = run_job(compose_config(overrides, tmp_path / "one"), output_dir=tmp_path / "one" / "out")

    command = sweep_command([sys.executable], ["-m", "hydra/launcher=submitit_local",
                                               "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10",
                                               *overrides], tmp_path / "two")
    done = run_cli(command)
    logs = "\n".join(p.read_text() for p in (tmp_path / "two").rglob("*_log.err"))
    assert done.returncode == 0, done.stderr[-3000:] + logs[-3000:]
    run = the_run(tmp_path / "two")
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == "2" and run.data.tags["launcher"] == "submitit"
    assert_same_metrics(run.data.metrics, one)


def _rank_pids(parent: int, rank: int) -> list[int]:
    """Processes under `parent` whose environment says RANK=<rank> (torchrun's workers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            found.append(int(proc.name))
    return found


def test_a_killed_rank_fails_the_job_quickly_and_it_resumes_on_one_process(tmp_path):
    steps = 60
    overrides = [o for o in OVERRIDES if not o.startswith(("train.max_steps", "train.checkpoint_every"))] + [
        "quantizer=gq", f"train.max_steps={steps}", "train.checkpoint_every=5", "train.log_every=20"]
    straight = run_job(compose_config(overrides, tmp_path / "one"), output_dir=tmp_path / "one" / "out")

    cfg = compose_config(overrides, tmp_path / "two")
    runs = Path(cfg.paths.runs)
    job = JobDir.for_config(cfg)
    launcher = subprocess.Popen(sweep_command(TORCHRUN, overrides, runs), cwd=ROOT, env=environment(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (job.checkpoint.exists() and load_checkpoint(job.checkpoint)["step"] >= 10):
            assert launcher.poll() is None, launcher.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint at step 10 within 4 minutes"
            time.sleep(0.05)
        (victim,) = _rank_pids(launcher.pid, rank=1)
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        output, _ = launcher.communicate(timeout=60)
        elapsed = time.time() - killed
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.1f} s to stop after a rank died"
    run = the_run(runs)
    assert run.info.status == "FAILED", run.info.status
    assert "rank" in run.data.tags.get("error", ""), run.data.tags
    stopped_at = load_checkpoint(job.checkpoint)["step"]
    print(f"rank 1 killed; the job stopped {elapsed:.1f} s later; last checkpoint at step {stopped_at}; "
          f"error: {run.data.tags['error'][:200]}")
    assert 10 <= stopped_at < steps

    steps_seen = []
    resumed = run_job(cfg, output_dir=runs / "out", on_step=steps_seen.append)
    assert steps_seen[0] == stopped_at + 1 and steps_seen[-1] == steps  # resumed from the 2-process checkpoint
    assert the_run(runs).info.status == "FINISHED"  # the same MLflow run, resumed
    assert_same_metrics(resumed, straight, TOLERANCE_60_STEPS)
    record = json.loads(job.metrics.read_text())
    assert record["status"] == "finished" and record["mlflow_run_id"] == run.info.run_id


# -- host syncs per training step ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gq", "vq", "fsq", "lfq", "bsq", "tokenbridge"])
def test_a_training_step_syncs_with_the_host_only_on_logging_steps(name, tmp_path):
    """Before this was fixed a GQ step made 14 syncs (the TDC controller's .item()s, the stats, the loss)."""
    cfg = compose_config(FAST_OVERRIDES + [f"quantizer={name}"] + BASELINE_OVERRIDES.get(name, []) + GAN_AND_LOGVAR
                         + ["train.max_steps=9", "train.log_every=4", "train.checkpoint_every=100"], tmp_path)
    torch.manual_seed(0)
    parts = assemble(cfg)
    per_step: dict[int, list] = {}
    with HostSyncs() as syncs:
        start = [0]

        def on_step(done: int) -> None:
            per_step[done] = syncs.since(start[0])
            start[0] = syncs.mark()

        train(cfg, parts.model, parts.data.train, JobDir(tmp_path / "job").create(), torch.device("cpu"),
              lambda metrics, step: None, on_step=on_step)
    # step 1: k-means init (VQ); step 3: the discriminator's first step (ActNorm's initialised flag, read once)
    quiet_steps = [s for s in per_step if s not in (1, 3) and s % 4 and s != 9]
    assert quiet_steps == [2, 5, 6, 7]
    for step in quiet_steps:
        outside_search = [e for e in per_step[step] if not e[1].startswith("kernels/")]
        assert outside_search == [], (step, summarize(per_step[step]))
        if name not in ("vq",):  # only VQ searches while training; its exact search reads its certificate back
            assert per_step[step] == [], (step, summarize(per_step[step]))
    for step in (4, 8, 9):  # logging / final steps: all stats in one read-back
        reads = [e for e in per_step[step] if not e[1].startswith("kernels/")]
        assert [op for op, _ in reads] == ["tolist"], summarize(reads)


def test_sigterm_to_one_rank_stops_every_rank_after_a_checkpoint_of_the_same_step(tmp_path):
    """SLURM signals every task, but not at the same instant: the ranks agree on the step to stop after."""
    overrides = [o for o in OVERRIDES if not o.startswith(("train.max_steps", "train.checkpoint_every"))] + [
        "quantizer=gq", "train.max_steps=100000", "train.checkpoint_every=1000"]
    cfg = compose_config(overrides, tmp_path)
    job = JobDir.for_config(cfg)
    launcher = subprocess.Popen(sweep_command(TORCHRUN, overrides, Path(cfg.paths.runs)), cwd=ROOT,
                                env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in launcher.stdout:  # rank 0 logs every 4 steps
            if "step 8/" in line:
                break
        (rank1,) = _rank_pids(launcher.pid, rank=1)
        os.kill(rank1, signal.SIGTERM)
        output, _ = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    run = the_run(Path(cfg.paths.runs))
    assert run.info.status == "KILLED", (run.info.status, run.data.tags.get("error"), output[-2000:])
    step = load_checkpoint(job.checkpoint)["step"]
    assert 8 <= step < 1000  # the stop step's own checkpoint, not a periodic one
    assert f"stop signal: checkpoint at step {step} written" in output
