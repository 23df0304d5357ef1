"""Where a job's wall time goes: orchestration (interpreter + imports + Hydra, MLflow run set-up and recording,
process exit) against the job's own work (building data and model, training, evaluation), from the job's log
timestamps. Also the launch host's cost of a sweep whose jobs all finished (nothing launched).

    .venv/bin/python tests/bench_orchestration.py [--steps 1] [extra overrides...]

Defaults to the quickstart job (bundled images, tiny UNet, GQ K=256 m=8) with rFID/LPIPS off (no weights here).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_JOB = ["data=bundled", "model=unet_tiny", "quantizer=gq", "quantizer.codebook_size=256",
                  "quantizer.codebook_dim=8", "train.lr=5e-4", "eval.download_weights=false"]

MARKS = [  # (phase that ends at this log line, pattern)
    ("interpreter, imports, Hydra compose", r"\[gqbench\]\[INFO\] - job .*: (new|resuming)"),
    ("MLflow store + run set-up", r"MLflow: .* run [0-9a-f]+"),
    ("data + model build", r"\] - model: "),
    ("training", r"step \d+/\d+ loss"),
    ("evaluation + MLflow record", r"\] - PSNR "),
]


def stamp(line: str) -> float:
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def run(args: list[str]) -> tuple[float, float, str]:
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "gqbench.sweep", *args], cwd=ROOT, capture_output=True, text=True)
    ended = time.time()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return started, ended, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1)
    options, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        args = QUICKSTART_JOB + [f"paths.runs={tmp}/runs", f"train.max_steps={options.steps}",
                                 f"train.log_every={options.steps}", *extra]
        columns = {}
        for label, seed in (("fresh store", 0), ("store exists", 1)):  # the second is every later job of a sweep
            started, ended, log = run(args + [f"seed={seed}"])
            columns[label] = phases(log.splitlines(), started, ended)
        print(f"one quickstart job, {options.steps} training step(s), seconds:")
        print(f"  {'phase':<40}" + "".join(f"{label:>14}" for label in columns))
        for phase in next(iter(columns.values())):
            print(f"  {phase:<40}" + "".join(f"{times[phase]:14.2f}" for times in columns.values()))

        sweep_started = time.time()
        run(args + ["seed=0,1", "-m", f"hydra.sweep.dir={tmp}/again"])
        print(f"both jobs as a sweep again (finished: nothing launched): {time.time() - sweep_started:.2f} s wall")


def phases(lines: list[str], started: float, ended: float) -> dict[str, float]:
    times, previous = {}, started
    for phase, pattern in MARKS:
        found = [stamp(line) for line in lines if re.search(pattern, line) and line.startswith("[")]
        if not found:
            raise SystemExit(f"no log line for {phase!r} ({pattern})\n" + "\n".join(lines[-30:]))
        end = max(found) if phase == "training" else found[0]
        times[phase], previous = end - previous, end
    times["process exit"] = ended - previous
    total = ended - started
    own = times["data + model build"] + times["training"] + times["evaluation + MLflow record"]
    times["orchestration (all but build/train/eval)"] = total - own
    times["total"] = total
    return times


if __name__ == "__main__":
    main()
