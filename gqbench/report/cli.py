"""`python -m gqbench.report`: load runs and their artefacts, build the tables, write everything (atomically),
log it on the sweep's parent MLflow run, and print the Markdown."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..checkpoint import atomic_write_bytes
from ..tracking import PARENT_TAG, default_tracking_uri, silence_mlflow_noise
from .artefacts import Artefacts, fetch, read_commentary
from .diagnostics import diagnostic_plots
from .html import render_html
from .layout import Layout
from .load import load_runs, read_runs_csv
from .markdown import paper_tables, render, render_latex
from .paired import paired_table
from .plots import rate_distortion_plots
from .tables import chronological, comparison_table


def main(argv: list[str] | None = None) -> int:
    from . import __doc__ as package_doc

    parser = argparse.ArgumentParser(description=package_doc.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment name (tracking.experiment)")
    source.add_argument("--from", dest="from_csv", metavar="RUNS_CSV",
                        help="a per-run CSV a report wrote (<name>.runs.csv): the same report without MLflow, "
                             "with the per-image metrics, KL histograms, grids and histories saved beside it")
    parser.add_argument("--sweep", default=None, help="only the jobs of this sweep (its parent MLflow run id)")
    parser.add_argument("--filter", default="", help="MLflow search filter, e.g. \"params.protocol.name = 'gq_paper'\"")
    parser.add_argument("--name", default=None, help="report name (file stem and title); default the experiment's")
    parser.add_argument("--reference", default=None,
                        help="the method the paired and Bjøntegaard tables compare against (default: the sweep's "
                             "report.reference, else gq)")
    parser.add_argument("--runs-dir", default=os.environ.get("GQBENCH_RUNS", "runs"),
                        help="the project's run folder (paths.runs; default $GQBENCH_RUNS or ./runs)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///<runs-dir>/mlflow.db")
    parser.add_argument("--no-plots", action="store_true", help="no figures (PNG + PDF); the tables and page only")
    parser.add_argument("--rate-axis", choices=["bits/token", "bpp"], default="bits/token",
                        help="x axis of the rate–distortion figures (bpp: nominal bits per pixel)")
    parser.add_argument("--no-artefacts", action="store_true",
                        help="read only the runs' scalars: no paired table, KL, grid or training-curve figures")
    parser.add_argument("--no-log", action="store_true", help="do not log the report on the sweep's parent run")
    parser.add_argument("--out", default="reports/generated", help="folder for the report's files")
    args = parser.parse_args(argv)

    silence_mlflow_noise()
    out = Path(args.out)
    uri = None
    if args.from_csv:
        runs = read_runs_csv(args.from_csv)
        name = args.name or Path(args.from_csv).name.removesuffix(".runs.csv").removesuffix(".csv")
        artefacts = Artefacts() if args.no_artefacts else Artefacts.read_beside(Path(args.from_csv))
    else:
        uri = args.tracking_uri or default_tracking_uri(Path(args.runs_dir))
        runs = load_runs(args.experiment, uri, sweep=args.sweep, filter_string=args.filter)
        name = args.name or args.experiment
        artefacts = Artefacts() if args.no_artefacts else fetch(runs, uri)
        artefacts.commentary = read_commentary(out, name)
    try:
        layout = Layout.from_runs(runs).with_reference(args.reference)
    except ValueError as exc:
        raise SystemExit(f"the sweep's report: block is not valid: {exc}") from None

    paired = paired_table(runs, artefacts.per_image, layout.reference)
    tables = paper_tables(runs, layout, paired)  # once, for the Markdown, LaTeX and HTML
    text = render(name, runs, layout, paired, artefacts.commentary, tables)
    written = {
        f"{name}.md": text.encode(),
        f"{name}.tex": render_latex(name, runs, layout, paired, tables).encode(),
        f"{name}.csv": comparison_table(runs, formatted=False).to_csv(index=False).encode(),
        f"{name}.runs.csv": chronological(runs).to_csv(index=False).encode(),
    }
    regenerating_in_place = bool(args.from_csv) and Path(args.from_csv).resolve() == (out / f"{name}.runs.csv").resolve()
    if regenerating_in_place:
        del written[f"{name}.runs.csv"]  # the inputs stay as they are
    for filename, payload in written.items():
        atomic_write_bytes(out / filename, lambda f, p=payload: f.write(p))
    files = [out / f for f in written]
    if not regenerating_in_place:
        files += artefacts.save(out, name)
    figures = [] if args.no_plots else (rate_distortion_plots(runs, out, name, args.rate_axis)
                                        + diagnostic_plots(runs, artefacts, out, name))
    page = render_html(name, runs, figures, layout, paired, artefacts.commentary, tables).encode()
    atomic_write_bytes(out / f"{name}.html", lambda f: f.write(page))
    files += figures + [out / f"{name}.html"]
    print(text)
    print("written: " + ", ".join(str(p) for p in files), file=sys.stderr)
    parent = args.sweep or sweep_of(runs)
    if uri is not None and parent and not args.no_log:
        log_on_parent(uri, parent, files, name)
        print(f"logged on the sweep's parent run {parent} under report/{name}/", file=sys.stderr)
    return 0


def sweep_of(runs) -> str | None:
    """The parent run id every loaded job shares, if they all came from one sweep."""
    column = f"tags.{PARENT_TAG}"
    if column not in runs:
        return None
    parents = runs[column].dropna().unique()
    return str(parents[0]) if len(parents) == 1 and runs[column].notna().all() else None


def log_on_parent(uri: str, parent_run_id: str, files: list[Path], name: str) -> None:
    """The report's files as artefacts of the sweep's parent run (report/<name>/...; grids in their own folder)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for path in files:
        folder = f"report/{name}" + (f"/{path.parent.name}" if path.parent.name.endswith(".grids") else "")
        client.log_artifact(parent_run_id, str(path), folder)
