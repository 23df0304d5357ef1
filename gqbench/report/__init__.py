"""Render an MLflow experiment as comparison tables: `python -m gqbench.report --experiment demo`.

One module per concern: `load` (runs from MLflow, paged, by experiment / sweep / filter, or from a saved per-run
CSV), `artefacts` (each run's per-image metrics, KL histogram, grid and training history), `layout` (the sweep's
`report:` block), `tables` (pure: one row per job, then per configuration with mean ± std over seeds and the best
per group in bold; Bjøntegaard deltas; failed jobs kept in view), `paired` (per-image differences against a
reference method with bootstrap intervals), `markdown` and `html` (renderers), `plots` and `diagnostics`
(figures), `cli` (the command). Files are written atomically to --out: <name>.md, <name>.tex, <name>.csv (one row
per job), <name>.html, the figures, and the inputs (<name>.runs.csv and the artefacts beside it) from which
`--from` regenerates the same Markdown and LaTeX.
"""
from .cli import main
from .load import load_runs, read_runs_csv
from .markdown import render, render_latex
from .tables import COLUMNS, comparison_table, deviations, finished_runs, summary_table, unfinished_jobs

__all__ = ["COLUMNS", "comparison_table", "deviations", "finished_runs", "load_runs", "main", "read_runs_csv",
           "render", "render_latex", "summary_table", "unfinished_jobs"]
