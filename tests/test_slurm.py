"""Sweeps on a real SLURM cluster (tests/slurm_cluster.py: private, single node, with accounting) through
`hydra/launcher=submitit_slurm`, as a cluster user runs them: preemption with requeue, idempotent re-runs, a job
killed hard. The module's tests share one cluster and run on one xdist worker (group "slurm")."""
from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import FAST_OVERRIDES, ROOT
from slurm_cluster import SlurmCluster, missing_requirements, private_folder

pytestmark = [pytest.mark.slow, pytest.mark.job, pytest.mark.slurm, pytest.mark.xdist_group("slurm")]

SLURM_LAUNCHER = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug", "hydra.launcher.timeout_min=15",
                  "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


@contextlib.contextmanager
def local_cluster(accounting: bool = True):
    """A private cluster for the block, or the test skipped with the printed reason it cannot start."""
    why = missing_requirements()
    if why:
        print(f"SKIPPED: no local SLURM cluster: {why}")
        pytest.skip(why)
    folder = private_folder()
    try:
        with SlurmCluster(folder, accounting=accounting) as running:
            yield running
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster() as running:
        yield running


def sweep_command(cluster: SlurmCluster, sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "gqbench.sweep", "-m", *FAST_OVERRIDES, *SLURM_LAUNCHER,
            f"hydra.sweep.dir={sweep_dir}", *overrides]


def job_log(sweep_dir: Path, task: int) -> Path | None:
    """The job's log file (Hydra's job logging writes to stdout: <array>_<task>_0_log.out)."""
    found = sorted((sweep_dir / ".submitit").glob(f"*_{task}/*_{task}_0_log.out"))
    if not found and task == 0:  # a one-job sweep is a plain job, not an array: .submitit/<id>/<id>_0_log.out
        found = [p for p in sorted((sweep_dir / ".submitit").glob("*/*_0_log.out")) if "_" not in p.parent.name]
    return found[0] if found else None


def wait_for_log_line(sweep_dir: Path, task: int, pattern: str, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = job_log(sweep_dir, task)
        if log is not None and re.search(pattern, log.read_text(errors="replace")):
            return log
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended ({proc.returncode}) before job {task} logged {pattern!r}:\n"
                                 + proc.stdout.read()[-3000:])
        time.sleep(0.2)
    raise AssertionError(f"job {task} never logged {pattern!r}")


def array_task_id(log: Path) -> str:
    return log.parent.name  # .submitit/<array job>_<task>/ (or .submitit/<job>/)


def runs_in(runs_dir: Path, experiment: str = "gqbench"):
    client = MlflowClient(f"sqlite:///{runs_dir / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return ([r for r in found if r.data.tags.get("gqbench.role") == "job"],
            [r for r in found if r.data.tags.get("gqbench.role") == "sweep"])


def accounted_jobs(cluster: SlurmCluster) -> list[str]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID", "-S", "2000-01-01"], env=cluster.env,
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def release_when_requeued(cluster: SlurmCluster, job: str, timeout: float = 120) -> float:
    """slurmctld makes a requeued job eligible only ~121 s later (EligibleTime; Reason=BeginTime): release it at
    once, as `scontrol update StartTime=now` does on a real cluster, so the test waits for our code, not that.
    Returns the seconds until the job was back in the queue."""
    started = time.time()
    while time.time() - started < timeout:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], env=cluster.env, capture_output=True,
                               text=True).stdout.split()
        if state[:2] == ["PENDING", "BeginTime"]:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster.env, check=True)
            return time.time() - started
        time.sleep(0.2)
    raise AssertionError(f"job {job} was not requeued within {timeout} s\n{cluster.logs()}")


def sweep_with_first_job_killed(cluster: SlurmCluster, command: list[str], sweep_dir: Path) -> tuple[int, str]:
    """Run the sweep, SIGKILL its first job once it trains (as the OOM killer would), wait for the sweep to end."""
    proc = subprocess.Popen(command, cwd=ROOT, env={**cluster.env, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log = wait_for_log_line(sweep_dir, 0, r"step 3/100000", proc)
        subprocess.run(["scancel", "--signal=KILL", array_task_id(log)], env=cluster.env, check=True)
        output, _ = proc.communicate(timeout=240)  # bounded: the sweep must not wait for ever on the dead job
    finally:
        proc.kill()
    return proc.returncode, output


def log_time(line: str) -> datetime:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")


def test_preempted_job_requeues_resumes_into_its_run_and_a_rerun_launches_nothing(cluster, tmp_path):
    """Two copies of one job (different runs folders): the first is preempted with USR2 at step 8 of 24, the
    second runs straight. The first checkpoints at once, is requeued by submitit, resumes from there into the
    same MLflow run and ends with exactly the second's metrics."""
    preempted, straight, sweep_dir = tmp_path / "preempted", tmp_path / "straight", tmp_path / "sweep"
    command = sweep_command(cluster, sweep_dir, "train.max_steps=24", "train.log_every=1",
                            "train.checkpoint_every=1000", f"paths.runs={preempted},{straight}")
    proc = subprocess.Popen(command, cwd=ROOT, env={**cluster.env, "PYTHONUNBUFFERED": "1"}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        log = wait_for_log_line(sweep_dir, 0, r"step 8/24", proc)
        signalled = time.time()
        subprocess.run(["scancel", "--signal=USR2", array_task_id(log)], env=cluster.env, check=True)
        held = release_when_requeued(cluster, array_task_id(log))
        output, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-4000:] + cluster.logs()
    text = log.read_text()
    resumed = re.search(r"^(\[[^\]]+\]).*resuming from .* at step (\d+)", text, re.M)
    assert resumed, text[-3000:]
    resumed_at = int(resumed.group(2))
    assert 8 <= resumed_at < 24  # the checkpoint written on the signal, not a periodic one (every 1000 steps)
    first_step = re.search(rf"^(\[[^\]]+\]).*step {resumed_at + 1}/24", text[resumed.end():], re.M)
    print(f"USR2 -> resumed job's first step: {log_time(first_step.group(1)).timestamp() - signalled:.1f} s, of "
          f"which {held:.1f} s until SLURM had requeued it (resumed at step {resumed_at}; SLURM's own hold of a "
          f"requeued job, ~121 s, released with scontrol)")

    (run,), (parent,) = runs_in(preempted)
    (reference,), _ = runs_in(straight)
    assert run.info.status == "FINISHED" and run.data.tags["slurm_restart_count"] == "1"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.info.status == "FINISHED"
    assert "slurm_array_task_id" in run.data.tags and run.data.tags["swept"] == f"paths.runs={preempted}"
    for key in ("psnr", "ssim", "codebook_usage", "perplexity", "train_final_loss"):
        assert run.data.metrics[key] == reference.data.metrics[key], key

    # the same sweep again: nothing is submitted to SLURM and no MLflow run is added
    before = accounted_jobs(cluster)
    again = subprocess.run(command, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to launch" in again.stdout + again.stderr
    assert accounted_jobs(cluster) == before
    assert [len(r) for r in runs_in(preempted)] == [1, 1] and [len(r) for r in runs_in(straight)] == [1, 1]


def test_without_accounting_a_killed_job_is_still_failed_not_waited_on(tmp_path):
    """Without slurmdbd, `sacct` fails and submitit alone would wait for ever on a job that died: the sweeper
    reads SLURM's state with scontrol instead."""
    with local_cluster(accounting=False) as bare:
        assert subprocess.run(["sacct"], env=bare.env, capture_output=True).returncode != 0
        runs, sweep_dir = tmp_path / "runs", tmp_path / "sweep"
        command = sweep_command(bare, sweep_dir, f"paths.runs={runs}", "train.log_every=1",
                                "train.max_steps=100000")
        returncode, output = sweep_with_first_job_killed(bare, command, sweep_dir)
    assert returncode != 0 and "1 of 1 launched jobs failed" in output, output[-4000:]
    assert "SLURM reports the job" in output
    (killed,), (parent,) = runs_in(runs)
    assert killed.info.status == "FAILED" and "without a result" in killed.data.tags["error"]
    assert parent.info.status == "FAILED"


def test_a_job_killed_hard_is_failed_and_the_sweep_does_not_wait_for_it(cluster, tmp_path):
    runs, sweep_dir = tmp_path / "runs", tmp_path / "sweep"
    command = sweep_command(cluster, sweep_dir, f"paths.runs={runs}", "train.log_every=1",
                            "train.max_steps=100000,12")
    returncode, output = sweep_with_first_job_killed(cluster, command, sweep_dir)
    assert returncode != 0 and "1 of 2 launched jobs failed" in output, output[-4000:]
    jobs, (parent,) = runs_in(runs)
    by_steps = {r.data.params["train.max_steps"]: r for r in jobs}
    assert by_steps["12"].info.status == "FINISHED"
    killed = by_steps["100000"]
    assert killed.info.status == "FAILED" and "without a result" in killed.data.tags["error"]
    assert parent.info.status == "FAILED"
    record = json.loads((runs / "jobs" / by_steps["12"].data.tags["signature"] / "metrics.json").read_text())
    assert record["status"] == "finished"
