"""How a report lays out its tables: which metric columns, which configuration columns, the groups the best value
is bold within, and the reference method of the paired and Bjøntegaard tables.

It comes from the sweep's optional `report:` block (conf/config.yaml documents the keys; a file in sweeps/ may set
them), which every job logs with its params (`params.report.columns` = '["psnr", "ssim"]' ...), so a report read
from MLflow or from its own --from CSV finds the same layout. Metric columns are named by gqbench.metrics' keys
(the report's COLUMNS map them to headers), configuration columns by their headers; an unknown name is an error
that lists the known ones. The command line's --reference wins over the block.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from .tables import COLUMNS, CONFIGURATION, chronological

DEFAULT_GROUP_BY = ("bits/token",)
DEFAULT_REFERENCE = "gq"


def metric_headers() -> dict[str, str]:
    """metric key (gqbench.metrics name, e.g. "psnr") -> the table's header ("PSNR↑")."""
    return {col.removeprefix("metrics."): header for col, header, fmt in COLUMNS
            if col.startswith("metrics.") and header not in CONFIGURATION}


@dataclass(frozen=True)
class Layout:
    columns: tuple[str, ...] | None = None  # headers of the metric columns shown; None: all
    rows: tuple[str, ...] | None = None  # configuration headers shown; None: all
    group_by: tuple[str, ...] = DEFAULT_GROUP_BY
    reference: str = DEFAULT_REFERENCE

    @classmethod
    def from_block(cls, block: dict, where: str = "report") -> "Layout":
        """From a `report:` mapping (None values: the defaults); names checked, metric keys mapped to headers."""
        known_metrics, known_rows = metric_headers(), list(CONFIGURATION)
        unknown_keys = set(block) - {"columns", "rows", "group_by", "reference"}
        if unknown_keys:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown_keys)}; a report block has columns, rows, "
                             "group_by and reference")

        def names(key: str, known: list[str]) -> tuple[str, ...] | None:
            value = block.get(key)
            if value is None:
                return None
            if isinstance(value, str):
                value = [value]
            bad = [v for v in value if v not in known]
            if bad:
                raise ValueError(f"{where}.{key}: {bad} not known; choose from {known}")
            return tuple(value)

        columns = names("columns", list(known_metrics))
        return cls(columns=tuple(known_metrics[c] for c in columns) if columns is not None else None,
                   rows=names("rows", known_rows), group_by=names("group_by", known_rows) or DEFAULT_GROUP_BY,
                   reference=str(block.get("reference") or DEFAULT_REFERENCE))

    @classmethod
    def from_runs(cls, runs: pd.DataFrame) -> "Layout":
        """The block the runs logged (params.report.*). Runs of different sweeps may disagree: then the one most
        runs logged wins (ties: the newest run's), so adding a run never silently reshapes a table."""
        keys = [c for c in runs.columns if c.startswith("params.report.")]
        if not keys or runs.empty:
            return cls()
        logged = chronological(runs).reset_index(drop=True)[keys].dropna(how="all")  # index = age rank
        if logged.empty:
            return cls()
        text = logged.apply(lambda row: json.dumps({k: row[k] for k in keys}, default=str), axis=1)
        counts = text.value_counts(sort=False)
        chosen = json.loads(max(counts.index, key=lambda t: (counts[t], text[text == t].index.max())))
        block = {k.removeprefix("params.report."): _parse(v) for k, v in chosen.items()}
        return cls.from_block(block, where="the runs' params.report")

    def with_reference(self, reference: str | None) -> "Layout":
        return self if not reference else Layout(self.columns, self.rows, self.group_by, reference)

    def shown(self, headers: list[str]) -> list[str]:
        """`headers` (a table's columns, in order) minus the configuration and metric columns the layout hides."""
        return [h for h in headers
                if not (self.rows is not None and h in CONFIGURATION and h not in self.rows)
                and not (self.columns is not None and h in metric_headers().values() and h not in self.columns)]


def _parse(text):
    """A logged param back to its value: lists were logged as JSON text, "None" is a null."""
    if not isinstance(text, str) or text == "None":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
