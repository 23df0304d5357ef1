"""End to end: one job trains, evaluates and lands in a real MLflow sqlite store; resume; CLI; sweep; report."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from conftest import BASELINE_OVERRIDES, FAST_OVERRIDES, ROOT, assert_metrics_recompute, compose_config
from gqbench.checkpoint import load_checkpoint
from gqbench.job import run_job
from gqbench.tracking import default_tracking_uri

pytestmark = pytest.mark.job  # every test here runs whole jobs

REQUIRED_METRICS = {"psnr", "ssim", "codebook_usage", "perplexity", "index_entropy_bits", "bits_per_token",
                    "q_bits_mean", "q_bits_min", "q_bits_max", "q_lam", "q_lam_min", "q_lam_max",
                    "continuous_psnr", "continuous_ssim"}


def only_run(runs_dir):
    client = MlflowClient(default_tracking_uri(runs_dir))
    exp = client.get_experiment_by_name("gqbench")
    runs = client.search_runs([exp.experiment_id])
    return client, runs


def test_one_job_end_to_end(fast_cfg, tmp_path):
    metrics = run_job(fast_cfg, output_dir=tmp_path / "out")
    assert REQUIRED_METRICS <= set(metrics)
    assert metrics["bits_per_token"] == 2 * 4  # 2 groups of log2(16) bits
    assert metrics["eval_images"] == 16
    assert metrics["q_bits_min"] <= metrics["q_bits_mean"] <= metrics["q_bits_max"]

    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["status"] == "finished" and record["metrics"]["psnr"] == metrics["psnr"]
    job_dir = tmp_path / "runs" / "jobs" / record["signature"]
    assert_metrics_recompute(metrics, fast_cfg, job_dir)  # PSNR, usage, perplexity from the checkpoint, by hand
    assert (job_dir / "reconstructions.png").stat().st_size > 0
    assert load_checkpoint(job_dir / "last.pt")["step"] == 12

    client, runs = only_run(tmp_path / "runs")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert REQUIRED_METRICS <= set(run.data.metrics)
    assert run.data.params["quantizer.codebook_size"] == "16"
    assert run.data.tags["signature"] == record["signature"]
    assert run.data.tags["torch_threads"] == str(torch.get_num_threads()) and run.data.tags["device"] == "cpu"
    assert run.data.tags["world_size"] == "1" and run.data.tags["launcher"] == "single"
    assert {"host", "git_commit"} <= set(run.data.tags)
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [4, 8, 12]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "reconstructions.png", "config.yaml"} <= artifacts


GAUSSIAN_VAES = {"tokenbridge"}  # trained continuous like GQ: a continuous path and KL statistics


@pytest.mark.parametrize("name", sorted(BASELINE_OVERRIDES))
def test_each_baseline_trains_evaluates_and_records_its_code(name, tmp_path):
    cfg = compose_config(FAST_OVERRIDES + [f"quantizer={name}"] + BASELINE_OVERRIDES[name], tmp_path)
    metrics = run_job(cfg, output_dir=tmp_path / "out")
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["status"] == "finished"
    k, groups = metrics["codebook_size"], metrics["num_codebooks"]
    assert groups * metrics["codebook_dim"] == 4
    assert metrics["bits_per_token"] == pytest.approx(groups * math.log2(k))
    assert_metrics_recompute(metrics, cfg, tmp_path / "runs" / "jobs" / record["signature"])
    gaussian = name in GAUSSIAN_VAES
    assert ("continuous_psnr" in metrics) == gaussian and ("q_bits_mean" in metrics) == gaussian
    _, runs = only_run(tmp_path / "runs")
    assert runs[0].info.status == "FINISHED" and runs[0].data.params["quantizer.name"] == name


class Interrupt(Exception):
    pass


def _tensors(state):
    """Every tensor in a (nested) state dict, in a fixed order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in _tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in _tensors(v)]
    return []


# learned log-variance and a discriminator that trains before the step-5 checkpoint: resume must restore them
RESUME_OVERRIDES = FAST_OVERRIDES + ["loss.learn_logvar=true", "loss.gan.enabled=true", "loss.gan.start_step=2",
                                     "loss.gan.n_layers=1", "loss.gan.ndf=8"]


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path):
    straight = run_job(compose_config(RESUME_OVERRIDES, tmp_path / "a"), output_dir=tmp_path / "a" / "out")

    cfg = compose_config(RESUME_OVERRIDES, tmp_path / "b")

    def crash_at_step_7(step):
        if step == 7:  # the last checkpoint is at step 5: steps 6-7 are lost and must be redone identically
            raise Interrupt

    with pytest.raises(Interrupt):
        run_job(cfg, output_dir=tmp_path / "b" / "out1", on_step=crash_at_step_7)
    client, runs = only_run(tmp_path / "b" / "runs")
    assert [r.info.status for r in runs] == ["FAILED"]

    steps_seen = []
    resumed = run_job(cfg, output_dir=tmp_path / "b" / "out2", on_step=steps_seen.append)
    assert steps_seen == list(range(6, 13))  # resumed after the step-5 checkpoint
    for key in ("psnr", "ssim", "continuous_psnr", "codebook_usage", "perplexity", "q_bits_mean", "q_lam",
                "q_lam_min", "q_lam_max", "train_final_loss"):
        assert resumed[key] == straight[key], key
    ends = [load_checkpoint(next((tmp_path / run / "runs" / "jobs").iterdir()) / "last.pt") for run in ("a", "b")]
    for part in ("model", "parts", "opt_ae", "opt_d"):  # the loss side too: log-variance, discriminator, its Adam
        flat = [torch.nn.utils.parameters_to_vector([v.float().flatten() for v in _tensors(e[part])]) for e in ends]
        assert torch.equal(flat[0], flat[1]), part
    assert ends[1]["parts"]["reconstruction.logvar"].item() != 0.0
    client, runs = only_run(tmp_path / "b" / "runs")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the same MLflow run, resumed

    # a finished job is neither retrained nor evaluated again (gqbench.rerun; tests/test_sweeps.py)
    steps_again = []
    again = run_job(cfg, output_dir=tmp_path / "b" / "out3", on_step=steps_again.append)
    assert steps_again == [] and again["psnr"] == straight["psnr"]


def test_disallowed_target_is_refused(fast_cfg, tmp_path):
    with open_dict(fast_cfg):
        fast_cfg.data._target_ = "os.system"
    with pytest.raises(ValueError, match=r"data._target_='os.system' is not allowed.*gqbench, quantizers, kernels"):
        run_job(fast_cfg, output_dir=tmp_path / "out")


def test_bad_option_fails_before_training_with_a_clear_error(tmp_path):
    cfg = compose_config(FAST_OVERRIDES + ["quantizer.codebook_size=100"], tmp_path)
    with pytest.raises(ValueError, match=r"codebook_size=100 is not a power of 2"):
        run_job(cfg, output_dir=tmp_path / "out")
    # the failure is recorded, not lost: MLflow run FAILED with the error, metrics.json says so
    client, runs = only_run(tmp_path / "runs")
    assert runs[0].info.status == "FAILED" and "codebook_size=100" in runs[0].data.tags["error"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "failed"


def cli(args, tmp_path, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_job_sweep_and_report(tmp_path):
    db = tmp_path / "elsewhere.db"
    runs = tmp_path / "runs"
    common = FAST_OVERRIDES + [f"paths.runs={runs}", f"tracking.uri=sqlite:///{db}", "train.max_steps=6"]
    single = cli(["gqbench.sweep", *common], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "\r" not in single.stderr + single.stdout  # no progress-bar redraws in a log file (SLURM's .err)
    assert db.exists() and not (runs / "mlflow.db").exists()  # tracking.uri points elsewhere

    # the middle job has a bad option: it fails, is recorded, and the sweep still runs the third job
    # overrides after -m, as users append them (argparse alone would refuse this order)
    sweep = cli(["gqbench.sweep", *common, "-m", "tracking.experiment=sweep_test", "quantizer.codebook_size=8,100,32"], tmp_path)
    assert sweep.returncode != 0 and "codebook_size=100 is not a power of 2" in sweep.stderr
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("sweep_test")
    found = client.search_runs([exp.experiment_id])
    runs_by_k = {r.data.params["quantizer.codebook_size"]: r for r in found if r.data.tags["gqbench.role"] == "job"}
    assert {k: r.info.status for k, r in runs_by_k.items()} == {"8": "FINISHED", "100": "FAILED", "32": "FINISHED"}
    (parent,) = [r for r in found if r.data.tags["gqbench.role"] == "sweep"]  # one failed job fails the sweep run
    assert parent.info.status == "FAILED" and "2 of 3 launched jobs" not in sweep.stderr
    assert "1 of 3 launched jobs failed" in sweep.stderr
    finished = [runs_by_k["8"], runs_by_k["32"]]

    report = cli(["gqbench.report", "--experiment", "sweep_test", "--tracking-uri", f"sqlite:///{db}",
                  "--out", str(tmp_path / "reports")], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    table = (tmp_path / "reports" / "sweep_test.md").read_text()
    assert "2 finished job(s)" in table and "| gq " in table
    assert "Failed or interrupted jobs (1)" in table and "codebook_size=100" in table
    rows = [line for line in table.splitlines() if re.match(r"\| gq\s+\|", line)]
    holes = [row for row in rows if "| failed: " in row]  # the failed job keeps its place in the table
    assert len(rows) == 3 and len(holes) == 1 and "codebook_size=100" in holes[0]
    rows = [row for row in rows if row not in holes]
    psnrs = {float(r["psnr"]) for r in [run.data.metrics for run in finished]}
    assert all(any(f"{p:.2f}" in row for row in rows) for p in psnrs)


def write_fake_squeezenet_weights(torch_home):
    """A squeezenet1_1 state dict with random values under the file name torchvision looks for: exercises the
    offline-weights path without network (the numbers are meaningless, the code path is real)."""
    import torchvision

    from gqbench.perceptual import BACKBONE_FILES

    target = torch_home / "hub" / "checkpoints" / BACKBONE_FILES["squeeze"]
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), target)


def test_lpips_unavailable_names_the_reason_and_the_file(tmp_path, monkeypatch):
    from gqbench.perceptual import LPIPSUnavailable, load_lpips

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    with pytest.raises(LPIPSUnavailable, match=r"squeezenet1_1-b8a52dc0.pth.*perceptual_weight=0"):
        load_lpips("squeeze")


def test_gan_and_lpips_training_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    write_fake_squeezenet_weights(tmp_path / "torch_home")
    cfg = compose_config(FAST_OVERRIDES + [
        "data.image_size=32", "model.attn_resolutions=[16]", "loss.perceptual_weight=1.0", "loss.perceptual_net=squeeze", "loss.learn_logvar=true",
        "loss.gan.enabled=true", "loss.gan.start_step=6", "loss.gan.n_layers=2", "loss.gan.ndf=8",
        "train.grad_clip=1.0", "train.max_steps=8", "train.log_every=2",
    ], tmp_path)
    metrics = run_job(cfg, output_dir=tmp_path / "out")
    assert math.isfinite(metrics["psnr"])
    client, runs = only_run(tmp_path / "runs")
    run_metrics = runs[0].data.metrics
    history = {k: [m.step for m in client.get_metric_history(runs[0].info.run_id, k)] for k in run_metrics if k.startswith("train/")}
    # the discriminator and the adaptive weight appear only from start_step on; LPIPS and logvar from step 1
    disc_keys = [k for k in history if "disc" in k or "d_loss" in k]
    assert disc_keys and all(min(history[k]) >= 6 for k in disc_keys), history
    assert any("perceptual" in k for k in history) and any("logvar" in k for k in history)
    d_weight = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, "train/d_weight")}
    assert d_weight[4] == 0 and d_weight[8] > 0  # adaptive weight is live once the GAN starts
    job_dir = tmp_path / "runs" / "jobs" / runs[0].data.tags["signature"]
    assert load_checkpoint(job_dir / "last.pt")["opt_d"]["state"]  # the discriminator optimizer has stepped


def test_sigterm_checkpoints_the_step_is_recorded_as_killed_and_the_job_folder_is_exclusive(fast_cfg, tmp_path):
    import fcntl
    import os
    import signal

    from gqbench.runtime import Terminated

    def terminate_at_step_3(step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Terminated):
        run_job(fast_cfg, output_dir=tmp_path / "out", on_step=terminate_at_step_3)
    client, runs = only_run(tmp_path / "runs")
    assert runs[0].info.status == "KILLED" and "signal" in runs[0].data.tags["error"]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["status"] == "killed"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    job_dir = tmp_path / "runs" / "jobs" / runs[0].data.tags["signature"]
    assert load_checkpoint(job_dir / "last.pt")["step"] == 3  # the step the signal came in, not the periodic one

    steps = []
    resumed = run_job(fast_cfg, output_dir=tmp_path / "out-resumed", on_step=steps.append)
    assert steps == list(range(4, 13))
    straight = run_job(compose_config(FAST_OVERRIDES, tmp_path / "straight"), output_dir=tmp_path / "straight-out")
    assert resumed["psnr"] == straight["psnr"] and resumed["q_lam"] == straight["q_lam"]

    # while another process holds the job folder, a second copy of the job refuses to start
    with open(job_dir / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match=r"is in use by another process"):
            run_job(fast_cfg, output_dir=tmp_path / "out2")


@pytest.mark.slow
def test_sigterm_stops_a_local_multirun_after_recording_the_running_job(tmp_path):
    import os
    import signal

    db = tmp_path / "sweep.db"
    args = [sys.executable, "-m", "gqbench.sweep", "-m", *FAST_OVERRIDES, f"paths.runs={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{db}", "tracking.experiment=sigterm", "train.max_steps=100000",
            "train.log_every=1", "quantizer.codebook_size=8,32"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    try:
        for line in proc.stdout:  # wait until the first job is training
            seen.append(line)
            if "step 3/" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a sweep that ignored SIGTERM would otherwise train the next job for ever
    output = "".join(seen) + rest
    assert proc.returncode != 0, output[-3000:]
    assert "#1 :" not in output  # the second job never started
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("sigterm").experiment_id])
    statuses = {r.data.tags["gqbench.role"]: r.info.status for r in runs}
    assert len(runs) == 2 and statuses == {"job": "KILLED", "sweep": "KILLED"}, output[-3000:]


def test_a_diverging_run_stops_with_the_step_range_and_keeps_its_last_good_checkpoint(fast_cfg, tmp_path, monkeypatch):
    import gqbench.job

    built = []
    assemble = gqbench.job.assemble
    monkeypatch.setattr(gqbench.job, "assemble", lambda cfg: built.append(assemble(cfg)) or built[-1])

    def diverge_after_step_5(step):  # as a diverging optimizer would leave the weights
        if step == 5:
            with torch.no_grad():
                built[-1].model.decoder.last_layer.fill_(float("nan"))

    with open_dict(fast_cfg):
        fast_cfg.train.log_every = 2
        fast_cfg.train.checkpoint_every = 2
    with pytest.raises(FloatingPointError) as caught:
        run_job(fast_cfg, output_dir=tmp_path / "out", on_step=diverge_after_step_5)
    assert re.search(r"the training loss became nan between steps 5 and 6 .*last good checkpoint: step 4 \(kept\); "
                     r"try a lower train.lr", str(caught.value)), str(caught.value)
    client, runs = only_run(tmp_path / "runs")
    assert runs[0].info.status == "FAILED" and "FloatingPointError" in runs[0].data.tags["error"]
    ckpt = load_checkpoint(tmp_path / "runs" / "jobs" / runs[0].data.tags["signature"] / "last.pt")
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("protocol, method, lr_scale, reduction", [("gq_paper", "vq", 4.0, "sum"),
                                                                  ("gq_paper", "lfq", 0.4, "sum"),
                                                                  ("official", "vq", 1.0, "mean")])
def test_a_protocol_trains_each_method_with_its_recipe(protocol, method, lr_scale, reduction, tmp_path):
    overrides = [o for o in FAST_OVERRIDES if not o.startswith(("quantizer.", "model.z_channels"))]
    size = ["quantizer.codebook_size=16", "quantizer.codebook_dim=4" if method == "lfq" else "quantizer.codebook_dim=2",
            "model.z_channels=4"]
    cfg = compose_config(overrides + size + [f"quantizer={method}", f"protocol={protocol}", "train.lr=1e-3",
                                             "train.max_steps=2"], tmp_path)
    assert cfg.loss.reduction == reduction and cfg.train.lr_scale == lr_scale
    run_job(cfg, output_dir=tmp_path / "out")
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    state = load_checkpoint(tmp_path / "runs" / "jobs" / record["signature"] / "last.pt")
    assert state["opt_ae"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * lr_scale)  # the optimizer got lr · scale
    client, runs = only_run(tmp_path / "runs")
    assert runs[0].data.params["protocol.name"] == protocol
