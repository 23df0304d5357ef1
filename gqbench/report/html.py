"""The report as one self-contained HTML page: caption, the summary table (best per rate in bold), the Bjøntegaard
deltas, the plots (embedded as data: URIs, so the file opens anywhere on its own) and the failed jobs.

The page checks itself: a small script sets the title to "gqbench report: ok (N images)" once every image has
decoded, or names the broken ones, which a headless browser's --dump-dom shows (tests/test_report_html.py).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from .layout import Layout
from .markdown import BD_NOTE, METRIC_NOTE, caption, seeds_note
from .paired import PAIRED_NOTE
from .tables import bjontegaard_table, finished_runs, summary_table, unfinished_jobs

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}p.note{font-size:12px;color:#555;max-width:70em}
figure{display:inline-block;margin:0 1em 1em 0}img{max-width:520px}img.wide{max-width:min(100%,1100px)}"""
SELF_CHECK = """window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.title = broken.length ? 'gqbench report: broken images ' + broken.join(', ')
                                 : 'gqbench report: ok (' + images.length + ' images)';
});"""


def _table(frame: pd.DataFrame) -> str:
    bold = frame.map(lambda v: str(v).startswith("**") and str(v).endswith("**") and len(str(v)) > 4)
    cells = frame.map(lambda v: html.escape(str(v)[2:-2] if str(v).startswith("**") and str(v).endswith("**")
                                            and len(str(v)) > 4 else str(v)))
    rows = ["<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns) + "</tr>"]
    for i in range(len(frame)):
        rows.append("<tr>" + "".join(f"<td><b>{cells.iat[i, j]}</b></td>" if bold.iat[i, j] else f"<td>{cells.iat[i, j]}</td>"
                                     for j in range(frame.shape[1])) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def render_html(name: str, runs: pd.DataFrame, images: list[Path], layout: Layout | None = None,
                paired: pd.DataFrame | None = None, commentary: str = "") -> str:
    layout = layout or Layout.from_runs(runs)
    parts = [f"<h1>{html.escape(name)}</h1>", f"<p>{len(finished_runs(runs))} finished job(s).</p>"]
    parts += [f"<p class='note'>{html.escape(line)}</p>" for line in caption(runs)]
    table = summary_table(runs, layout=layout)
    if len(table):
        parts += [_table(table), f"<p class='note'>{html.escape(seeds_note(layout))}</p>"]
    if paired is not None and len(paired):
        parts += [f"<h2>Paired differences against {html.escape(layout.reference)}</h2>", _table(paired),
                  f"<p class='note'>{html.escape(PAIRED_NOTE)}</p>"]
    deltas = bjontegaard_table(runs, layout.reference)
    if len(deltas):
        parts += ["<h2>Rate–distortion: Bjøntegaard deltas</h2>", _table(deltas),
                  f"<p class='note'>{html.escape(BD_NOTE)}</p>"]
    if commentary:
        parts += ["<h2>How this compares with the paper</h2>"]
        parts += [f"<p>{html.escape(paragraph)}</p>" for paragraph in commentary.strip().split("\n\n")]
    pngs = [p for p in images if p.suffix == ".png"]
    if pngs:
        parts.append("<h2>Plots</h2>")
        for png in pngs:
            data = base64.b64encode(png.read_bytes()).decode()
            wide = " class='wide'" if "reconstructions" in png.stem else ""
            parts.append(f"<figure><img{wide} alt='{html.escape(png.stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(png.stem)} (PDF beside this page)</figcaption></figure>")
    failed = unfinished_jobs(runs)
    if len(failed):
        parts += [f"<h2>Failed or interrupted jobs ({len(failed)})</h2>", _table(failed.fillna(""))]
    parts.append(f"<p class='note'>{html.escape(METRIC_NOTE)}</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gqbench report: loading</title>"
            f"<style>{STYLE}</style><script>{SELF_CHECK}</script></head><body>" + "\n".join(parts) + "</body></html>\n")
