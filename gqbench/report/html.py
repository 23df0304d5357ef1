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
from .markdown import (BD_NOTE, METRIC_NOTE, paper_tables, right_aligned, seeds_note, summary_caption, unbold,
                       with_shared)
from .paired import PAIRED_NOTE
from .tables import finished_runs, unfinished_jobs

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f4f4f4}td{white-space:nowrap}
p.note{font-size:12px;color:#555;max-width:70em}
figure{display:inline-block;margin:0 1em 1em 0}img{max-width:520px}img.wide{max-width:min(100%,1100px)}"""
SELF_CHECK = """window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.title = broken.length ? 'gqbench report: broken images ' + broken.join(', ')
                                 : 'gqbench report: ok (' + images.length + ' images)';
});"""


def _table(frame: pd.DataFrame, name: str) -> str:
    """pandas' Styler as HTML: cells and headers escaped, the best cells bold, numbers right-aligned; `name` makes
    the element ids stable (Styler's default is a random uuid)."""
    plain, bold = unbold(frame)
    right = dict(zip(frame.columns, right_aligned(frame)))
    styler = (plain.style.hide(axis="index").set_uuid(name)
              .format(escape="html").format_index(escape="html", axis="columns")
              .apply(lambda _: bold.map(lambda b: "font-weight: bold" if b else ""), axis=None)
              .set_table_styles({column: [{"selector": "td, th", "props": "text-align: right"}]
                                 for column, is_number in right.items() if is_number}, overwrite=False))
    return styler.to_html()


def render_html(name: str, runs: pd.DataFrame, images: list[Path], layout: Layout | None = None,
                paired: pd.DataFrame | None = None, commentary: str = "", tables: dict | None = None) -> str:
    layout = layout or Layout.from_runs(runs)
    parts = [f"<h1>{html.escape(name)}</h1>", f"<p>{len(finished_runs(runs))} finished job(s).</p>"]
    tables = tables or paper_tables(runs, layout, paired)
    table, _ = tables["summary"]
    parts += [f"<p class='note'>{html.escape(line)}</p>" for line in summary_caption(runs, tables)]
    if len(table):
        parts += [_table(table, "summary"), f"<p class='note'>{html.escape(seeds_note(layout))}</p>"]
    if "paired" in tables:
        frame, shared = tables["paired"]
        parts += [f"<h2>Paired differences against {html.escape(layout.reference)}</h2>", _table(frame, "paired"),
                  f"<p class='note'>{html.escape(with_shared(PAIRED_NOTE, shared))}</p>"]
    if "bjontegaard" in tables:
        frame, shared = tables["bjontegaard"]
        parts += ["<h2>Rate–distortion: Bjøntegaard deltas</h2>", _table(frame, "bjontegaard"),
                  f"<p class='note'>{html.escape(with_shared(BD_NOTE, shared))}</p>"]
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
        parts += [f"<h2>Failed or interrupted jobs ({len(failed)})</h2>", _table(failed.fillna(""), "failed")]
    parts.append(f"<p class='note'>{html.escape(METRIC_NOTE)}</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gqbench report: loading</title>"
            f"<style>{STYLE}</style><script>{SELF_CHECK}</script></head><body>" + "\n".join(parts) + "</body></html>\n")
