"""Render an MLflow experiment as comparison tables: `python -m gqbench.report --experiment quickstart`.

Reads finished runs with pandas (mlflow.search_runs), keeps the newest run per signature (re-evaluations of
the same trained job), and writes `<out>/<experiment>.md` and `.csv` atomically. Failed runs are listed
below the table with their error, never silently dropped.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import pandas as pd

from .checkpoint import atomic_write_bytes
from .tracking import default_tracking_uri, silence_mlflow_noise

# (column in search_runs, header, format)
COLUMNS = [
    ("params.quantizer.name", "method", None),
    ("params.model.name", "backbone", None),
    ("params.quantizer.codebook_size", "K", None),
    ("params.quantizer.codebook_dim", "m", None),
    ("metrics.bits_per_token", "bits/token", "{:.0f}"),
    ("metrics.bits_per_pixel", "bpp", "{:.4f}"),
    ("metrics.psnr", "PSNR↑", "{:.2f}"),
    ("metrics.ssim", "SSIM↑", "{:.4f}"),
    ("metrics.codebook_usage", "usage↑", "{:.3f}"),
    ("metrics.perplexity", "perplexity", "{:.1f}"),
    ("metrics.q_bits_mean", "KL bits", "{:.2f}"),
    ("metrics.q_bits_in_band", "in band", "{:.3f}"),
    ("metrics.continuous_psnr", "PSNR (continuous)", "{:.2f}"),
    ("params.seed", "seed", None),
    ("params.train.max_steps", "steps", None),
]


def load_runs(experiment: str, tracking_uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise SystemExit(f"no MLflow experiment named {experiment!r} in {tracking_uri}; run the sweep first")
    return mlflow.search_runs(experiment_names=[experiment], max_results=100_000)


def comparison_table(runs: pd.DataFrame) -> pd.DataFrame:
    done = runs[runs["status"] == "FINISHED"].sort_values("start_time")
    if "tags.signature" in done:
        done = done.drop_duplicates("tags.signature", keep="last")
    table = pd.DataFrame({header: done[col] if col in done else None for col, header, _ in COLUMNS})
    for _, header, fmt in COLUMNS:
        if fmt is not None:
            table[header] = table[header].map(lambda v, f=fmt: "–" if pd.isna(v) else f.format(v))
    sort_keys = [h for h in ("method", "bits/token", "K", "m", "seed") if h in table]
    return table.sort_values(sort_keys, key=lambda s: pd.to_numeric(s, errors="coerce").fillna(0) if s.name != "method" else s)


def failed_jobs(runs: pd.DataFrame) -> pd.DataFrame:
    bad = runs[runs["status"].isin(["FAILED", "KILLED"])]
    cols = {"tags.mlflow.runName": "run", "status": "status", "tags.error": "error"}
    return pd.DataFrame({v: bad[k] if k in bad else None for k, v in cols.items()})


def render(experiment: str, runs: pd.DataFrame) -> str:
    table = comparison_table(runs)
    lines = [f"# {experiment}", "", f"{len(table)} finished job(s).", "", table.to_markdown(index=False), ""]
    failed = failed_jobs(runs)
    if len(failed):
        lines += [f"## Failed or interrupted jobs ({len(failed)})", "", failed.to_markdown(index=False), ""]
    lines += ["PSNR/SSIM: per image on the 0–255 scale, mean over validation images; usage/perplexity over all "
              "validation indices; KL bits: mean per-group KL on validation (GQ); bpp is nominal.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (tracking.experiment)")
    parser.add_argument("--runs-dir", default="runs", help="the project's run folder (paths.runs)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<runs-dir>/mlflow.db")
    parser.add_argument("--out", default="reports/generated", help="folder for <experiment>.md/.csv")
    args = parser.parse_args(argv)

    silence_mlflow_noise()
    uri = args.tracking_uri or default_tracking_uri(Path(args.runs_dir))
    runs = load_runs(args.experiment, uri)
    text = render(args.experiment, runs)
    out = Path(args.out)
    atomic_write_bytes(out / f"{args.experiment}.md", lambda f: f.write(text.encode()))
    csv = comparison_table(runs).to_csv(index=False).encode()
    atomic_write_bytes(out / f"{args.experiment}.csv", lambda f: f.write(csv))
    print(text)
    print(f"written: {out / (args.experiment + '.md')}, {out / (args.experiment + '.csv')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
