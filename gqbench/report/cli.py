"""`python -m gqbench.report`: load runs, build the tables, write them (atomically) and print the Markdown."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from ..tracking import default_tracking_uri, silence_mlflow_noise
from .load import load_runs, read_runs_csv
from .markdown import render, render_latex
from .html import render_html
from .plots import rate_distortion_plots
from .tables import comparison_table


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as package_doc

    parser = argparse.ArgumentParser(description=package_doc.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment name (tracking.experiment)")
    source.add_argument("--from", dest="from_csv", metavar="RUNS_CSV",
                        help="a per-run CSV a report wrote (<name>.runs.csv): the same tables without MLflow")
    parser.add_argument("--sweep", default=None, help="only the jobs of this sweep (its parent MLflow run id)")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"params.protocol.name = 'gq_paper'\"")
    parser.add_argument("--name", default=None, help="report name (file stem and title); default the experiment's")
    parser.add_argument("--runs-dir", default=os.environ.get("GQBENCH_RUNS", "runs"),
                        help="the project's run folder (paths.runs; default $GQBENCH_RUNS or ./runs)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<runs-dir>/mlflow.db")
    parser.add_argument("--no-plots", action="store_true", help="skip the rate–distortion plots (PNG + PDF)")
    parser.add_argument("--out", default="reports/generated",
                        help="folder for <experiment>.md/.csv (+ .tex, and .runs.csv: every run's raw columns)")
    args = parser.parse_args(argv)

    silence_mlflow_noise()
    if args.from_csv:
        runs = read_runs_csv(args.from_csv)
        name = args.name or Path(args.from_csv).name.removesuffix(".runs.csv").removesuffix(".csv")
    else:
        uri = args.tracking_uri or default_tracking_uri(Path(args.runs_dir))
        runs = load_runs(args.experiment, uri, sweep=args.sweep, filter_string=args.filter)
        name = args.name or args.experiment
    text = render(name, runs)
    out = Path(args.out)
    written = {
        f"{name}.md": text.encode(),
        f"{name}.tex": render_latex(name, runs).encode(),
        f"{name}.csv": comparison_table(runs, formatted=False).to_csv(index=False).encode(),
        f"{name}.runs.csv": runs.sort_values("start_time").to_csv(index=False).encode(),
    }
    if args.from_csv and Path(args.from_csv).resolve() == (out / f"{name}.runs.csv").resolve():
        del written[f"{name}.runs.csv"]  # regenerating in place: the input stays as it is
    for filename, payload in written.items():
        atomic_write_bytes(out / filename, lambda f, p=payload: f.write(p))
    plots = [] if args.no_plots else rate_distortion_plots(runs, out, name)
    page = render_html(name, runs, plots).encode()
    atomic_write_bytes(out / f"{name}.html", lambda f: f.write(page))
    plots.append(out / f"{name}.html")
    print(text)
    print("written: " + ", ".join([str(out / f) for f in written] + [str(p) for p in plots]), file=sys.stderr)
    return 0
