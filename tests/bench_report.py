"""Wall time of `python -m gqbench.report` on a store with more runs than one MLflow page, every run with the
artefacts a finished job logs (per-image CSV, a reconstruction grid, GQ's KL histogram, a training history),
side by side with the floor (the paged search alone) and with the saved CSVs (`--from`).

    python tests/bench_report.py [--runs 1037] [--images 100]

Prints seconds per stage and the ratios to the search alone; not a test (timings vary by machine).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gqbench import report  # noqa: E402
from gqbench.report.load import load_runs  # noqa: E402
from gqbench.tracking import PARENT_TAG, ROLE_TAG, silence_mlflow_noise  # noqa: E402

METHODS = ("gq", "vq", "fsq", "lfq", "bsq", "tokenbridge")


def build_store(root: Path, runs: int, images: int) -> str:
    import torch
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from torchvision.utils import save_image

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("big", artifact_location=str(root / "artifacts"))
    parent = client.create_run(exp, tags={ROLE_TAG: "sweep"}).info.run_id
    rng = np.random.default_rng(0)
    now = int(time.time() * 1000)
    files = root / "files"
    files.mkdir()
    save_image(torch.rand(8, 3, 16, 16), files / "reconstructions.png", nrow=4, padding=1)
    pd.DataFrame({"bin_lo": np.arange(0, 12, 0.125), "bin_hi": np.arange(0.125, 12.125, 0.125),
                  "count": rng.integers(0, 100, 96), "target_bits": 8.0, "tolerance_bits": 0.5}).to_csv(
        files / "kl_bits.csv", index=False)
    for i in range(runs):
        method, bits, seed = METHODS[i % 6], (8.0, 16.0, 32.0)[(i // 6) % 3], i // 18
        run_id = client.create_run(exp, start_time=now + i, tags={PARENT_TAG: parent}).info.run_id
        psnr = rng.normal(20.0 + bits / 16, 2.0, images)
        client.log_batch(run_id, metrics=[Metric("psnr", float(psnr.mean()), now, 400),
                                          Metric("bits_per_token", bits, now, 400),
                                          Metric("eval_images", float(images), now, 400)]
                         + [Metric("train/loss_rec", 1.0 / (s + 1), now, s) for s in range(0, 400, 25)],
                         params=[Param("quantizer.name", method), Param("seed", str(seed)), Param("data.image_size", "16")],
                         tags=[RunTag(ROLE_TAG, "job"), RunTag("signature", f"s{i}")])
        pd.DataFrame({"image": range(images), "psnr": psnr, "ssim": psnr / 40}).to_csv(files / "per_image.csv", index=False)
        client.log_artifact(run_id, str(files / "per_image.csv"))
        client.log_artifact(run_id, str(files / "reconstructions.png"))
        if method == "gq":
            client.log_artifact(run_id, str(files / "kl_bits.csv"))
        client.set_terminated(run_id, "FINISHED")
    return uri


def timed(label: str, action, floor: float | None = None) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        action()
    seconds = time.perf_counter() - started
    ratio = f"  ({seconds / floor:.1f}x the search alone)" if floor else ""
    print(f"{label:<48} {seconds:8.2f} s{ratio}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1037)
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args()
    silence_mlflow_noise()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        uri = build_store(root, args.runs, args.images)
        print(f"store: {args.runs} runs with artefacts, built in {time.perf_counter() - started:.1f} s")
        floor = timed("paged search (load_runs, the floor)", lambda: load_runs("big", uri))
        out = root / "report"
        timed("report from MLflow, tables only (--no-artefacts)",
              lambda: report.main(["--experiment", "big", "--tracking-uri", uri, "--out", str(out), "--no-artefacts",
                                   "--no-plots", "--no-log"]), floor)
        timed("report from MLflow, everything", lambda: report.main(
            ["--experiment", "big", "--tracking-uri", uri, "--out", str(out)]), floor)
        timed("report --from the saved CSVs, everything", lambda: report.main(
            ["--from", str(out / "big.runs.csv"), "--out", str(root / "again")]), floor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
