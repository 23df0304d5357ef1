"""Evaluation inside whole jobs and as `python -m gqbench.evaluate`: rFID/LPIPS with generated weight files, the
reference cache across jobs, offline runs that record why a metric is missing, required metrics that stop a job
before training, the standalone evaluator (same numbers as the job, MLflow run, untrusted files), and the GQ
authors' checkpoint layout."""
from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import FAST_OVERRIDES, ROOT, compose_config
from gqbench import report
from gqbench.checkpoint_evaluation import main as evaluate_main
from gqbench.job import assemble, run_job
from gqbench.tracking import default_tracking_uri

pytestmark = pytest.mark.job

AT_32_PX = FAST_OVERRIDES + ["data.image_size=32", "model.attn_resolutions=[16]", "train.max_steps=4",
                             "eval.num_images=12", "eval.batch_size=4"]
COMPARED = ("psnr", "psnr_std", "ssim", "continuous_psnr", "codebook_usage", "perplexity", "effective_bits_per_token",
            "q_bits_mean", "rfid", "lpips")


def runs_of(runs_dir):
    client = MlflowClient(default_tracking_uri(runs_dir))
    exp = client.get_experiment_by_name("gqbench")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def with_weights(weight_files) -> list[str]:
    return [f"eval.inception_weights={weight_files['inception']}", f"eval.lpips_weights={weight_files['alex']}"]


def test_offline_job_completes_and_records_rfid_and_lpips_as_unavailable_with_the_reason(fast_cfg, tmp_path):
    metrics = run_job(fast_cfg, output_dir=tmp_path / "out")
    assert "rfid" not in metrics and "lpips" not in metrics and metrics["psnr"] > 0
    client, runs = runs_of(tmp_path / "runs")
    tags = runs[0].data.tags
    assert tags["unavailable.rfid"].startswith("no Inception weights: eval.download_weights=false and no file; put "
                                               "weights-inception-2015-12-05-6726825d.pth in")
    assert tags["unavailable.lpips"].startswith("no LPIPS-alex weights:")
    job_dir = tmp_path / "runs" / "jobs" / tags["signature"]
    record = json.loads((job_dir / "metrics.json").read_text())
    assert set(record["unavailable"]) == {"rfid", "lpips"} and "protocol.psnr_ssim" in record["protocol"]
    # per-image values, in dataset order, are what the headline numbers average
    per_image = pd.read_csv(job_dir / "per_image.csv", index_col="image")
    assert len(per_image) == 16 and {"psnr", "ssim", "continuous_psnr"} <= set(per_image.columns)
    assert per_image["psnr"].mean() == pytest.approx(metrics["psnr"], rel=1e-9)
    # GQ's per-group KL histogram: every (image, token, group) counted once, its mean near the logged one
    kl = pd.read_csv(job_dir / "kl_bits.csv")
    tokens = metrics["tokens_per_image"] * metrics["num_codebooks"] * 16
    assert kl["count"].sum() == tokens and set(kl["target_bits"]) == {4.0}
    centre = ((kl["bin_lo"] + kl["bin_hi"]) / 2 * kl["count"]).sum() / tokens
    if kl["count"].iloc[-1] == 0:  # nothing in the open-ended last bin: bin centres are within half a bin
        assert centre == pytest.approx(metrics["q_bits_mean"], abs=0.0625 + 1e-6)
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"per_image.csv", "kl_bits.csv", "reconstructions.png", "metrics.json", "config.yaml"} <= logged
    # the table says why the cell is empty
    table = report.comparison_table(report.load_runs("gqbench", default_tracking_uri(tmp_path / "runs")))
    assert table["rFID↓"].tolist() == ["n/a (no Inception weights)"]
    assert table["LPIPS↓"].tolist() == ["n/a (no LPIPS-alex weights)"]


def test_training_does_not_depend_on_whether_evaluation_weights_exist(weight_files, tmp_path):
    """Building Inception/LPIPS initialises layers from the global RNG; the job forks it, so the same job trains
    to the same weights with and without the weight files (GQ draws its posterior samples from that RNG)."""
    without = run_job(compose_config(AT_32_PX, tmp_path / "a"), output_dir=tmp_path / "oa")
    with_them = run_job(compose_config(AT_32_PX + with_weights(weight_files), tmp_path / "b"), output_dir=tmp_path / "ob")
    assert "lpips" in with_them and "lpips" not in without
    for key in ("train_final_loss", "psnr", "ssim", "codebook_usage", "continuous_psnr", "q_bits_mean"):
        assert with_them[key] == without[key], key


def test_a_required_metric_without_weights_stops_the_job_before_any_training_step(tmp_path):
    runs = tmp_path / "runs"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gqbench.sweep", *FAST_OVERRIDES, "eval.require_rfid=true",
                           f"paths.runs={runs}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    print(f"eval.require_rfid=true without weights: exit {proc.returncode} after {elapsed:.1f} s (process start included)")
    assert proc.returncode != 0
    assert "eval.require_rfid=true but rfid cannot be computed" in proc.stderr
    assert "eval.inception_weights=PATH" in proc.stderr
    assert not list(runs.glob("jobs/*/last.pt"))  # no training step ran, so nothing was checkpointed
    client, [run] = runs_of(runs)
    assert run.info.status == "FAILED" and "eval.require_rfid" in run.data.tags["error"]
    assert not [k for k in run.data.metrics if k.startswith("train/")]


def test_jobs_measure_rfid_and_lpips_share_the_reference_and_the_evaluator_repeats_them(weight_files, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first = run_job(compose_config(AT_32_PX + with_weights(weight_files), tmp_path), output_dir=tmp_path / "o1")
    second = run_job(compose_config(AT_32_PX + with_weights(weight_files) + ["train.max_steps=5"], tmp_path),
                     output_dir=tmp_path / "o2")
    client, runs = runs_of(tmp_path / "runs")
    assert [r.data.tags["rfid_reference_cache"] for r in runs] == ["miss", "hit"]
    assert runs[0].data.tags["rfid_reference"] == runs[1].data.tags["rfid_reference"]
    assert "cache hit" in caplog.text
    for metrics, run in zip((first, second), runs):
        assert metrics["rfid"] > 0 and 0 < metrics["lpips"] < 1
        assert run.data.metrics["rfid"] == metrics["rfid"] and "unavailable.rfid" not in run.data.tags
        assert "12 images at 32 px" in run.data.tags["protocol.rfid"]
        assert run.data.tags["protocol.lpips"].startswith("lpips 0.1.4 net=alex")
    assert first["rfid"] != second["rfid"]

    # the standalone evaluator on the first job's folder: the same numbers, logged into the job's own run
    job_dir = tmp_path / "runs" / "jobs" / runs[0].data.tags["signature"]
    out = tmp_path / "evaluation"
    assert evaluate_main([f"ckpt={job_dir}", f"out={out}"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for key in COMPARED:
        assert again["metrics"][key] == pytest.approx(first[key], rel=1e-9, abs=1e-12), key
    assert again["mlflow_run_id"] == runs[0].info.run_id and len(runs_of(tmp_path / "runs")[1]) == 2
    assert (out / "per_image.csv").read_text() == (job_dir / "per_image.csv").read_text()

    # other settings: a new run, a child of the training run, never overwriting its numbers
    assert evaluate_main([f"ckpt={job_dir / 'last.pt'}", "eval.num_images=8", f"out={tmp_path / 'eval8'}"]) == 0
    client, runs = runs_of(tmp_path / "runs")
    assert len(runs) == 3
    child = runs[2]
    assert child.data.tags["mlflow.parentRunId"] == runs[0].info.run_id and child.data.metrics["eval_images"] == 8
    assert runs[0].data.metrics["eval_images"] == 12 and runs[0].data.metrics["rfid"] == first["rfid"]


def test_the_evaluator_refuses_unsafe_or_unknown_input_with_one_clear_error(fast_cfg, tmp_path, capsys):
    run_job(fast_cfg, output_dir=tmp_path / "out")
    job_dir = next((tmp_path / "runs" / "jobs").iterdir())
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"config": {}, "model": RunsCode()}, f)
    assert evaluate_main([f"ckpt={evil}"]) == 2
    assert "torch.load(weights_only=True) refused it" in capsys.readouterr().err and not marker.exists()
    assert evaluate_main([f"ckpt={job_dir}", "eval.num_imagse=4"]) == 2
    assert "'eval.num_imagse' is not a key of the checkpoint's config (known here: batch_size," in capsys.readouterr().err
    assert evaluate_main([f"ckpt={tmp_path / 'missing.pt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert evaluate_main([f"ckpt={job_dir}", "model.ch=8"]) == 2
    assert "its weights do not fit the model its config builds" in capsys.readouterr().err
    assert evaluate_main(["eval.num_images=4"]) == 2
    assert "ckpt=PATH is required" in capsys.readouterr().err


# The reference code's names for the paper's model (tongdaxu/VQ-VAE-from-Gaussian-VAE, pit/modules/unet.py):
# attention only at the 32² level, the decoder's up.0 at full resolution, no mid attention, no temb_proj.
AUTHORS_KEYS = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down.0.block.1.conv2.weight": (128, 128, 3, 3),
    "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "encoder.down.2.downsample.conv.weight": (512, 512, 3, 3),
    "encoder.down.3.attn.1.proj_out.weight": (512, 512, 1, 1),
    "encoder.mid.block_2.norm2.weight": (512,),
    "encoder.conv_out.weight": (32, 512, 3, 3),
    "decoder.conv_in.weight": (512, 16, 3, 3),
    "decoder.up.3.attn.2.q.weight": (512, 512, 1, 1),
    "decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
    "decoder.up.1.block.0.nin_shortcut.weight": (256, 512, 1, 1),
    "decoder.up.0.block.2.conv1.weight": (128, 128, 3, 3),
    "decoder.norm_out.bias": (128,),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}


def test_the_authors_key_names_and_shapes_are_our_paper_model_and_its_config_is_read_off_the_weights():
    from gqbench.authors_checkpoint import model_config_from_weights

    cfg = compose_config(["model=unet_sd3", "quantizer.codebook_size=65536", "quantizer.codebook_dim=16",
                          "data.image_size=256", "device=cpu"])
    ours = assemble(cfg).model.state_dict()
    for key, shape in AUTHORS_KEYS.items():
        assert tuple(ours[key].shape) == shape, key
    assert not [k for k in ours if "mid.attn" in k or "temb" in k or "quant_conv" in k]
    model = model_config_from_weights({k: v for k, v in ours.items() if not k.startswith("quantizer.")}, 256)
    assert {k: model[k] for k in ("z_channels", "ch", "ch_mult", "num_res_blocks", "attn_resolutions")} == {
        "z_channels": 16, "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [32]}


def test_an_authors_style_lightning_checkpoint_evaluates_like_the_same_weights_in_gqbench(tmp_path):
    """A small model in the authors' checkpoint layout (Lightning "state_dict" with training-only loss.* keys and
    no quantizer state): the evaluator infers the model, loads it, and gives the numbers of the same weights
    evaluated through gqbench directly."""
    from gqbench.checkpoint_evaluation import evaluate_checkpoint

    data = ["data=synthetic", "data.image_size=32", "data.num_val=8", "eval.batch_size=4", "device=cpu",
            "eval.download_weights=false", f"paths.runs={tmp_path / 'runs'}"]
    cfg = compose_config(data + ["model=unet_sd3", "model.ch=32", "model.ch_mult=[1,2]", "model.attn_resolutions=[16]",
                                 "quantizer.codebook_size=65536", "quantizer.codebook_dim=16"])
    torch.manual_seed(0)
    weights = {k: v for k, v in assemble(cfg).model.state_dict().items() if not k.startswith("quantizer.")}
    lightning = {"state_dict": {**weights, "loss.logvar": torch.zeros(()),
                                "loss.discriminator.main.0.weight": torch.zeros(160, 3, 4, 4),
                                "loss.perceptual_loss.lin0.model.1.weight": torch.zeros(1, 64, 1, 1)},
                 "epoch": 25, "global_step": 400_000, "pytorch-lightning_version": "2.2.2"}
    ckpt = tmp_path / "sd3unet_gq_0.25.ckpt"
    torch.save(lightning, ckpt)
    result = evaluate_checkpoint(ckpt, data, out=str(tmp_path / "authors"))

    from gqbench.evaluate import evaluate

    parts = assemble(cfg)
    parts.model.load_state_dict(weights, strict=False)
    direct = evaluate(parts.model, parts.data.val, num_images=None, batch_size=4, grid_images=2,
                      device=torch.device("cpu"), grid_file=None, seed=cfg.seed)
    for key in ("psnr", "ssim", "codebook_usage", "bits_per_token", "continuous_psnr"):
        assert result.metrics[key] == pytest.approx(direct.metrics[key], rel=1e-9), key
    assert result.metrics["bits_per_token"] == 16 and result.metrics["tokens_per_image"] == 16 * 16


def test_the_evaluator_on_two_torchrun_processes_gives_the_one_process_numbers(fast_cfg, tmp_path, weight_files):
    import os

    run_job(fast_cfg, output_dir=tmp_path / "out")
    job_dir = next((tmp_path / "runs" / "jobs").iterdir())
    common = [f"ckpt={job_dir}", "eval.batch_size=6", f"eval.inception_weights={weight_files['inception']}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "gqbench.evaluate", *common, f"out={tmp_path / 'two'}", f"eval.cache_dir={tmp_path / 'c2'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "gqbench.evaluate", *common, f"out={tmp_path / 'one'}",
                             f"eval.cache_dir={tmp_path / 'c1'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=400)  # the same thread count as each rank: the same summation order
    assert single.returncode == 0, single.stderr[-3000:]
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in ("one", "two"))
    assert two["eval_images"] == 16  # 3 batches of 6: rank 0 takes two, rank 1 one
    assert two.pop("rfid") == pytest.approx(one.pop("rfid"), rel=1e-7)
    assert two == pytest.approx(one, rel=1e-12, abs=1e-12)
