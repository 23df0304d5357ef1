"""Render an MLflow experiment as comparison tables: `python -m gqbench.report --experiment quickstart`.

Reads finished runs with pandas (mlflow.search_runs), keeps the newest run per signature (re-evaluations of
the same trained job), and writes `<out>/<experiment>.md` and `.csv` atomically. Failed runs are listed
below the table with their error, never silently dropped.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import mlflow
import pandas as pd

from . import metrics as M
from .checkpoint import atomic_write_bytes
from .tracking import default_tracking_uri, job_runs, silence_mlflow_noise

# (column in search_runs, header, format); metric columns are named by gqbench.metrics' constants
COLUMNS = [
    ("params.quantizer.name", "method", None),
    ("params.protocol.name", "protocol", None),
    ("deviations", "deviations", None),
    ("params.model.name", "backbone", None),
    (f"metrics.{M.CODEBOOK_SIZE}", "K", "{:.0f}"),
    (f"metrics.{M.CODEBOOK_DIM}", "m", "{:.0f}"),
    (f"metrics.{M.NUM_CODEBOOKS}", "groups", "{:.0f}"),
    (f"metrics.{M.BITS_PER_TOKEN}", "bits/token", "{:.4g}"),
    (f"metrics.{M.EFFECTIVE_RATE}", "effective bits", "{:.2f}"),
    (f"metrics.{M.BPP}", "bpp", "{:.4f}"),
    (f"metrics.{M.PSNR}", "PSNR↑", "{:.2f}"),
    (f"metrics.{M.SSIM}", "SSIM↑", "{:.4f}"),
    (f"metrics.{M.LPIPS}", "LPIPS↓", "{:.4f}"),
    (f"metrics.{M.RFID}", "rFID↓", "{:.2f}"),
    (f"metrics.{M.CODEBOOK_USAGE}", "usage↑", "{:.3f}"),
    (f"metrics.{M.USAGE_RELATIVE}", "usage/uniform", "{:.3f}"),
    (f"metrics.{M.PERPLEXITY}", "perplexity", "{:.1f}"),
    ("metrics.q_bits_mean", "KL bits", "{:.2f}"),
    ("metrics.q_bits_in_band", "in band", "{:.3f}"),
    (f"metrics.{M.CONTINUOUS}{M.PSNR}", "PSNR (continuous)", "{:.2f}"),
    ("params.seed", "seed", None),
    ("params.train.max_steps", "steps", None),
    ("metrics.eval_images", "eval images", "{:.0f}"),
]


# keys that size a code or pick a search kernel: not training settings, never listed as deviations
NOT_SETTINGS = {"name", "codebook_size", "codebook_dim", "num_codebooks", "levels", "search_backend", "search_exact"}


def deviations(runs: pd.DataFrame) -> pd.Series:
    """Per run, the quantizer options it set away from its method's official defaults (quantizers.official_defaults),
    e.g. "legacy_loss=False; temperature=0.01"; "" when it ran every option as the authors' code does."""
    import yaml

    from quantizers import known_quantizers, official_defaults

    def of(row: pd.Series) -> str:
        name = row.get("params.quantizer.name")
        if not isinstance(name, str) or name not in known_quantizers():
            return ""
        changed = []
        for key, default in official_defaults(name).items():
            text = row.get(f"params.quantizer.{key}")
            if key in NOT_SETTINGS or not isinstance(text, str):
                continue
            value = None if text == "None" else yaml.safe_load(text)
            if isinstance(value, str):  # YAML 1.1 reads "1e-05" (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if value != (list(default) if isinstance(default, tuple) else default):
                changed.append(f"{key}={text}")
        return "; ".join(changed)

    return runs.apply(of, axis=1) if len(runs) else pd.Series(dtype=object)


def not_available(done: pd.DataFrame, column: str) -> pd.Series:
    """"n/a (<label>)" where a run recorded the metric as unavailable (tag unavailable.<metric> = "label: why")."""
    tag = "tags." + M.UNAVAILABLE_TAG + column.split(".", 1)[1]
    if tag not in done:
        return pd.Series(None, index=done.index, dtype=object)
    return done[tag].map(lambda why: f"n/a ({str(why).split(':', 1)[0]})" if isinstance(why, str) else None)


def load_runs(experiment: str, tracking_uri: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise SystemExit(f"no MLflow experiment named {experiment!r} in {tracking_uri}; run the sweep first")
    runs = job_runs(mlflow.search_runs(experiment_names=[experiment], max_results=100_000))
    if runs.empty:
        raise SystemExit(f"MLflow experiment {experiment!r} in {tracking_uri} has no runs yet")
    return runs


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED runs, newest per (signature, eval settings): a re-evaluation replaces the row it repeats."""
    done = runs[runs["status"] == "FINISHED"].sort_values("start_time")
    if "tags.signature" not in done:  # runs not logged by gqbench jobs: nothing says two rows are one job
        return done
    keys = [c for c in ("tags.signature", "metrics.eval_images") if c in done]
    return done.drop_duplicates(keys, keep="last")


def comparison_table(runs: pd.DataFrame, formatted: bool = True) -> pd.DataFrame:
    """One row per finished job; numbers formatted for Markdown, or raw (for the CSV)."""
    done = finished_runs(runs)
    done = done.assign(deviations=deviations(done))
    table = pd.DataFrame({header: done[col] if col in done else None for col, header, _ in COLUMNS}, index=done.index)
    if formatted:
        for col, header, fmt in COLUMNS:
            if fmt is not None:
                cells = table[header].map(lambda v, f=fmt: "–" if pd.isna(v) else f.format(v))
                table[header] = not_available(done, col).where(table[header].isna(), None).fillna(cells)
    sort_keys = [h for h in ("method", "bits/token", "K", "m", "seed") if h in table]
    return table.sort_values(sort_keys, key=lambda s: pd.to_numeric(s, errors="coerce").fillna(0) if s.name != "method" else s)


def unfinished_jobs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish (failed, killed, or still RUNNING after a hard kill) and whose job has no
    finished run: these are the holes in the table."""
    finished = set(runs.loc[runs["status"] == "FINISHED", "tags.signature"]) if "tags.signature" in runs else set()
    bad = runs[runs["status"] != "FINISHED"]
    if "tags.signature" in bad:
        bad = bad[~bad["tags.signature"].isin(finished)]
    cols = {"tags.mlflow.runName": "run", "status": "status", "tags.error": "error"}
    return pd.DataFrame({v: bad[k] if k in bad else None for k, v in cols.items()}, index=bad.index)


def render(experiment: str, runs: pd.DataFrame) -> str:
    table = comparison_table(runs)
    lines = [f"# {experiment}", "", f"{len(table)} finished job(s).", ""]
    done = finished_runs(runs)
    if "params.protocol.summary" in done:  # what each protocol means, in the caption (conf/protocol/)
        lines += [f"Protocol {summary}." for summary in sorted(done["params.protocol.summary"].dropna().unique())]
        lines += ["deviations: the quantizer options a run set away from its method's official defaults "
                  "(quantizers/<method>.py docstrings).", ""]
    if len(table):
        # the cells are already formatted: tabulate must not re-parse "25.00" as 25 (it drops the digits)
        align = ["right" if fmt else "left" for _, _, fmt in COLUMNS]  # numbers right-aligned, as text they are not
        lines += [table.to_markdown(index=False, disable_numparse=True, colalign=align), ""]
    failed = unfinished_jobs(runs)
    if len(failed):
        lines += [f"## Failed or interrupted jobs ({len(failed)})", "", failed.to_markdown(index=False), ""]
    lines += ["PSNR/SSIM: per image on the 0–255 scale, mean over validation images; LPIPS: AlexNet unless the run "
              "says otherwise; rFID: torch-fidelity Inception, reconstructions vs the originals of the same images "
              "(protocol in each run's protocol.rfid tag); n/a (why): the metric could not be computed, e.g. no "
              "weights offline. usage/perplexity over all validation indices; usage/uniform: usage relative to a "
              "perfectly uniform code seen through as many indices (1.0 = no sign of collapse); effective bits: "
              "Σ of per-group index entropies (Miller–Madow), beside the nominal bits/token = groups · log2 K. "
              "KL bits: mean per-group KL on validation (GQ); K, m, groups: the code as built (FSQ: K = ∏ levels); "
              "bpp is nominal.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name (tracking.experiment)")
    parser.add_argument("--runs-dir", default=os.environ.get("GQBENCH_RUNS", "runs"),
                        help="the project's run folder (paths.runs; default $GQBENCH_RUNS or ./runs)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<runs-dir>/mlflow.db")
    parser.add_argument("--out", default="reports/generated", help="folder for <experiment>.md/.csv")
    args = parser.parse_args(argv)

    silence_mlflow_noise()
    uri = args.tracking_uri or default_tracking_uri(Path(args.runs_dir))
    runs = load_runs(args.experiment, uri)
    text = render(args.experiment, runs)
    out = Path(args.out)
    atomic_write_bytes(out / f"{args.experiment}.md", lambda f: f.write(text.encode()))
    csv = comparison_table(runs, formatted=False).to_csv(index=False).encode()
    atomic_write_bytes(out / f"{args.experiment}.csv", lambda f: f.write(csv))
    print(text)
    print(f"written: {out / (args.experiment + '.md')}, {out / (args.experiment + '.csv')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
