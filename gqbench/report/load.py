"""Where a report's runs come from: an MLflow store (by experiment, by sweep = parent run, by tag filter), read
page by page, or a saved per-run CSV (`--from runs.csv`, what a report writes beside its tables)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..tracking import PARENT_TAG, job_runs

PAGE = 1000  # MLflow's page size limit; a search returns at most this many runs per call, then a page token


def search_all_runs(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every run matching the filter, following page tokens (one search call returns at most PAGE runs)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list) -> pd.DataFrame:
    """mlflow.search_runs' DataFrame shape (run_id, status, start_time, metrics.*, params.*, tags.*) from Run objects."""
    rows = []
    for run in runs:
        row = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
               "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True)}
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def load_runs(experiment: str, tracking_uri: str, sweep: str | None = None, filter_string: str = "") -> pd.DataFrame:
    """The job runs of `experiment` (sweeps' parent runs left out); `sweep`: only the children of that parent run id;
    `filter_string`: an MLflow search filter, e.g. "params.protocol.name = 'gq_paper'"."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"no MLflow experiment named {experiment!r} in {tracking_uri}; run the sweep first")
    if sweep:
        parent = f"tags.`{PARENT_TAG}` = '{sweep}'"
        filter_string = f"{parent} and {filter_string}" if filter_string else parent
    runs = job_runs(runs_frame(search_all_runs(client, [found.experiment_id], filter_string)))
    if runs.empty:
        raise SystemExit(f"MLflow experiment {experiment!r} in {tracking_uri} has no runs yet"
                         + (f" matching {filter_string!r}" if filter_string else ""))
    return runs


def read_runs_csv(path: str | Path) -> pd.DataFrame:
    """A per-run CSV written by a report (the raw columns of every run): the report again without MLflow."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"--from {path}: no such file; give the runs.csv a report wrote")
    # only an empty cell is missing: MLflow logs a null param as the text "None", which must stay that text
    runs = pd.read_csv(path, dtype={c: str for c in pd.read_csv(path, nrows=0).columns if c.startswith(("params.", "tags."))},
                       keep_default_na=False, na_values=[""], float_precision="round_trip")
    if "status" not in runs:
        raise SystemExit(f"--from {path}: not a per-run CSV (no 'status' column); give the runs.csv a report wrote")
    runs["start_time"] = pd.to_datetime(runs["start_time"], utc=True, format="ISO8601")
    return runs
