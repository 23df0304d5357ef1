"""Re-runnable sweeps: what a job that ran before does (gqbench.rerun), the sweeper that launches nothing twice and
keeps one parent MLflow run per sweep (gqbench.sweeper), many first writers on a fresh store, a real `mlflow
server`. The SLURM half is tests/test_slurm.py."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import FAST_OVERRIDES, ROOT, compose_config
from gqbench.jobdir import JobDir
from gqbench.rerun import archive_finished, eval_identity, plan
from gqbench.sweeper import swept_keys, swept_values, sweep_signature


def finished_job(tmp_path: Path, *overrides: str):
    cfg = compose_config(FAST_OVERRIDES + list(overrides), tmp_path)
    jobdir = JobDir.for_config(cfg).create()
    jobdir.checkpoint.write_bytes(b"weights")
    jobdir.metrics.write_text(json.dumps({"status": "finished", "eval_identity": eval_identity(cfg),
                                          "metrics": {"psnr": 20.0}, "mlflow_run_id": "abc"}))
    return cfg, jobdir


def test_plan_skips_finished_jobs_and_redoes_what_changed_or_was_asked_for(tmp_path):
    cfg, jobdir = finished_job(tmp_path)
    assert plan(cfg, jobdir).action == "skip"
    changed = compose_config(FAST_OVERRIDES + ["eval.num_images=8"], tmp_path)
    assert JobDir.for_config(changed).path == jobdir.path  # eval settings are not part of the training signature
    assert plan(changed, jobdir).action == "evaluate" and "settings changed" in plan(changed, jobdir).reason
    moved_cache = compose_config(FAST_OVERRIDES + [f"eval.cache_dir={tmp_path / 'elsewhere'}"], tmp_path)
    assert plan(moved_cache, jobdir).action == "skip"  # where the rFID cache lives changes no number
    assert plan(compose_config(FAST_OVERRIDES + ["rerun=eval"], tmp_path), jobdir).action == "evaluate"
    assert plan(compose_config(FAST_OVERRIDES + ["rerun=all"], tmp_path), jobdir).action == "train"

    jobdir.metrics.write_text(json.dumps({"status": "failed"}))
    assert plan(cfg, jobdir) .action == "train" and "resuming" in plan(cfg, jobdir).reason
    jobdir.checkpoint.unlink()
    assert plan(cfg, jobdir).reason == "new"
    with pytest.raises(ValueError, match=r"rerun='again' is not one of none, eval, all"):
        plan(compose_config(FAST_OVERRIDES + ["rerun=again"], tmp_path), jobdir)


def test_rerun_all_moves_the_finished_training_aside_and_keeps_the_lock(tmp_path):
    _, jobdir = finished_job(tmp_path)
    jobdir.lock.write_text("")
    moved = archive_finished(jobdir)
    assert sorted(p.name for p in jobdir.path.iterdir()) == [JobDir.LOCK, JobDir.PREVIOUS]
    assert sorted(p.name for p in (jobdir.path / moved).iterdir()) == [JobDir.CHECKPOINT, JobDir.METRICS]
    assert jobdir.finished_record() is None


def test_swept_keys_are_those_whose_values_differ():
    jobs = [["a=1", "b=x", "c=3"], ["a=1", "b=y", "c=4"]]
    assert swept_keys(jobs) == ["b", "c"] and swept_values(jobs[1], ["b", "c"]) == "b=y c=4"
    assert sweep_signature("e", ["s2", "s1"]) == sweep_signature("e", ["s1", "s2", "s1"]) != sweep_signature("f", ["s1"])


def cli(args: list[str], timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "gqbench.sweep", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
    done.output = done.stdout + done.stderr
    return done


def runs_by_role(uri: str, experiment: str):
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, {role: [r for r in found if r.data.tags.get("gqbench.role") == role] for role in ("job", "sweep")}


@pytest.mark.slow
@pytest.mark.job
def test_a_sweep_run_again_launches_nothing_and_adds_no_run(tmp_path):
    runs, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    sweep = FAST_OVERRIDES + [f"paths.runs={runs}", "tracking.experiment=idem", "quantizer.codebook_dim=2,4", "-m"]
    first = cli(sweep + [f"hydra.sweep.dir={tmp_path / 's1'}"])
    assert first.returncode == 0, first.output[-3000:]
    client, found = runs_by_role(uri, "idem")
    (parent,), children = found["sweep"], found["job"]
    assert len(children) == 2 and parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.runName"] == "idem sweep: 2 jobs over quantizer.codebook_dim"
    assert "quantizer.codebook_dim" in parent.data.tags["mlflow.note.content"]
    assert parent.data.params["swept.quantizer.codebook_dim"] == "2,4"
    for child in children:  # each a child of the sweep, readable, with its dataset and source
        dim = child.data.params["quantizer.codebook_dim"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["swept"] == f"quantizer.codebook_dim={dim}"
        assert f"(dims per group {dim})" in child.data.tags["mlflow.note.content"]
        assert child.data.tags["mlflow.source.name"] == "gqbench.sweep" and child.data.tags["mlflow.source.git.commit"]
        (dataset,) = child.inputs.dataset_inputs
        assert dataset.dataset.name == "synthetic-16px" and dataset.tags[0].value == "training"
    ids = sorted(r.info.run_id for r in children)

    # again, into a new sweep folder: nothing launched, nothing logged
    again = cli(sweep + [f"hydra.sweep.dir={tmp_path / 's2'}"])
    assert again.returncode == 0 and "nothing to launch" in again.output, again.output[-3000:]
    assert "launching" not in again.output.lower().replace("nothing to launch", "")
    _, found = runs_by_role(uri, "idem")
    assert sorted(r.info.run_id for r in found["job"]) == ids and len(found["sweep"]) == 1

    # rerun=eval: evaluated again into the same runs under the same parent; psnr logged twice at the last step
    evaluated = cli(sweep + [f"hydra.sweep.dir={tmp_path / 's3'}", "rerun=eval"])
    assert evaluated.returncode == 0, evaluated.output[-3000:]
    assert "already finished" in evaluated.output and not re.search(r"step \d+/12 loss", evaluated.output)
    _, found = runs_by_role(uri, "idem")
    assert sorted(r.info.run_id for r in found["job"]) == ids and len(found["sweep"]) == 1
    assert len(client.get_metric_history(ids[0], "psnr")) == 2

    # the sweep extended by one value: only the new job runs (under a new parent: another sweep)
    extended = cli(FAST_OVERRIDES + [f"paths.runs={runs}", "tracking.experiment=idem", "quantizer.codebook_dim=1,2,4",
                                     "-m", f"hydra.sweep.dir={tmp_path / 's4'}"])
    assert extended.returncode == 0 and "launching 1 of 3 jobs (2 finished earlier)" in extended.output
    _, found = runs_by_role(uri, "idem")
    assert len(found["job"]) == 3 and len(found["sweep"]) == 2

    # rerun=all on one job: trained again from step 0 into a new run; the first training moved to previous/
    retrained = cli(FAST_OVERRIDES + [f"paths.runs={runs}", "tracking.experiment=idem", "quantizer.codebook_dim=2",
                                      "rerun=all"])
    assert retrained.returncode == 0 and "step 4/12" in retrained.output, retrained.output[-3000:]
    _, found = runs_by_role(uri, "idem")
    assert len(found["job"]) == 4
    job_dir = next(p for p in (runs / "jobs").iterdir()
                   if json.loads((p / "metrics.json").read_text())["metrics"]["codebook_dim"] == 2)
    (previous,) = (job_dir / "previous").iterdir()
    assert (previous / "metrics.json").exists() and (previous / "last.pt").exists()


@pytest.mark.slow
@pytest.mark.job
def test_sixteen_jobs_start_at_once_on_a_fresh_sqlite_store(tmp_path):
    """16 processes through the normal entry point, all first writers of one store that does not exist yet."""
    runs = tmp_path / "runs"
    args = FAST_OVERRIDES + [f"paths.runs={runs}", "train.max_steps=2", "eval.num_images=8", "eval.rfid=false",
                             "eval.lpips=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "gqbench.sweep", *args, f"seed={i}"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(16)]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    failed = [(i, e[-1500:]) for i, (p, e) in enumerate(zip(procs, errors)) if p.returncode != 0]
    assert not failed, failed
    assert not [e for e in errors if "Traceback" in e or "database is locked" in e]
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "gqbench"]
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 16 and {r.info.status for r in found} == {"FINISHED"}
    assert sorted(int(r.data.params["seed"]) for r in found) == list(range(16))
    assert all("psnr" in r.data.metrics for r in found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on a free localhost port, its own sqlite store and artifact root; stopped by PID."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("mlflow server did not start: " + (tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.job
def test_a_sweep_logs_to_a_real_mlflow_server(mlflow_server, tmp_path):
    result = cli(FAST_OVERRIDES + [f"paths.runs={tmp_path / 'runs'}", f"tracking.uri={mlflow_server}",
                                   "tracking.experiment=served", "train.max_steps=4", "quantizer.codebook_dim=2,4", "-m",
                                   f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert result.returncode == 0, result.output[-3000:]
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing went to the local default store
    client, found = runs_by_role(mlflow_server, "served")
    (parent,) = found["sweep"]
    assert len(found["job"]) == 2 and {r.info.status for r in found["job"]} == {"FINISHED"}
    for run in found["job"]:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "config.yaml"}
    assert len(list((tmp_path / "server-artifacts").rglob("metrics.json"))) == 2  # uploaded through the server
