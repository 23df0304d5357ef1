"""The report as Markdown and LaTeX: the caption (protocols, deviations), the table (mean ± std over seeds, the best
per rate group in bold), the paired differences against the reference method, the Bjøntegaard deltas, the failed
jobs, the notes on the metrics. LaTeX is pandas' Styler (booktabs rules, its LaTeX escaping, bold as \\textbf), one
table environment per table. A descriptive column with one value in every row is said once beside its table
(tables.split_shared), so a pasted table is no wider than the paper's."""
from __future__ import annotations

import pandas as pd

from .. import metrics as M
from .layout import Layout
from .paired import PAIRED_NOTE
from .tables import (COLUMNS, SHARED_BJONTEGAARD, SHARED_PAIRED, SHARED_SUMMARY, bjontegaard_table, finished_runs,
                     split_shared, summary_table, unfinished_jobs)

METRIC_NOTE = ("PSNR/SSIM: per image on the 0–255 scale, mean over validation images; LPIPS: AlexNet unless the run "
               "says otherwise; rFID: torch-fidelity Inception, reconstructions vs the originals of the same images "
               "(protocol in each run's protocol.rfid tag); n/a (why): the metric could not be computed, e.g. no "
               "weights offline. usage/perplexity over all validation indices; usage/uniform: usage relative to a "
               "perfectly uniform code seen through as many indices (1.0 = no sign of collapse); effective bits: "
               "Σ of per-group index entropies (Miller–Madow), beside the nominal bits/token = groups · log2 K. "
               "KL bits: mean per-group KL on validation (GQ); K, m, groups: the code as built (FSQ: K = ∏ levels); "
               "bpp is nominal.")
BD_NOTE = ("BD-PSNR: mean PSNR gain over the bits/token range both curves cover; BD-rate: mean change in bits at "
           "equal PSNR (negative = fewer bits), each from cubic fits in log-rate (Bjøntegaard, VCEG-M33), on seed means. "
           "With fewer than 4 rates the fit's degree is the number of rates − 1.")
SEEDS_NOTE = "Metrics: mean ± std (n − 1) over the row's seeds; bold: the best mean of the column at that bits/token."


def caption(runs: pd.DataFrame, deviations_column: bool = True) -> list[str]:
    """What each protocol in the table means (conf/protocol/), what the runs trained and evaluated on, how rFID was
    measured (or why not), and what the deviations column lists (when the table shows one)."""
    done = finished_runs(runs)
    lines = []
    if "params.protocol.summary" in done:
        lines += [f"Protocol {summary}." for summary in sorted(done["params.protocol.summary"].dropna().unique())]
    setting = _setting(done)
    if setting:
        lines.append(setting)
    rfid = _values(done, "tags.protocol.rfid")
    why_not = [str(v).split(":", 1)[0] for v in _values(done, f"tags.{M.UNAVAILABLE_TAG}{M.RFID}")]
    if rfid:
        lines.append("rFID: " + "; ".join(rfid) + ".")
    elif why_not:
        lines.append(f"rFID: not measured ({', '.join(why_not)}).")
    if "params.protocol.summary" in done and deviations_column:
        lines.append("deviations: the quantizer options a run set away from its method's official defaults "
                     "(quantizers/<method>.py docstrings).")
    return lines


def _values(done: pd.DataFrame, column: str) -> list[str]:
    return sorted(done[column].dropna().map(str).unique()) if column in done else []


def _setting(done: pd.DataFrame) -> str:
    """"Data: bundled at 64 px; training: 400 steps at batch 16; evaluation: 1783 validation images." (each part
    only when the runs logged it; several values are listed)."""
    parts = []
    data, size = _values(done, "tags.data"), _values(done, "params.data.image_size")
    if data:
        parts.append(f"data: {', '.join(data)}" + (f" at {', '.join(size)} px" if size else ""))
    steps, batch = _values(done, "params.train.max_steps"), _values(done, "params.train.batch_size")
    if steps:
        parts.append(f"training: {', '.join(steps)} steps" + (f" at batch {', '.join(batch)}" if batch else ""))
    images = sorted({f"{v:.0f}" for v in done["metrics.eval_images"].dropna()}) if "metrics.eval_images" in done else []
    if images:
        parts.append(f"evaluation: {', '.join(images)} validation images")
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:] if parts else ""


def paper_tables(runs: pd.DataFrame, layout: Layout, paired: pd.DataFrame | None,
                 bold: str = "**{}**") -> dict[str, tuple[pd.DataFrame, str]]:
    """The report's three tables as shown (summary, paired, bjontegaard; the last two only when not empty), each
    with the sentence that says its shared columns once ("" when none); the best cells wrapped in `bold`."""
    tables = {"summary": split_shared(summary_table(runs, bold=bold, layout=layout), SHARED_SUMMARY)}
    if paired is not None and len(paired):
        tables["paired"] = split_shared(paired, SHARED_PAIRED)
    deltas = bjontegaard_table(runs, layout.reference)
    if len(deltas):
        tables["bjontegaard"] = split_shared(deltas, SHARED_BJONTEGAARD)
    return tables


def summary_caption(runs: pd.DataFrame, tables: dict) -> list[str]:
    """The lines above the summary table: caption() and the columns every row shares."""
    table, shared = tables["summary"]
    return caption(runs, deviations_column="deviations" in table) + ([shared] if shared else [])


def with_shared(note: str, shared: str) -> str:
    """A table's note followed by the sentence naming the columns every row shares (if any)."""
    return f"{note} {shared}" if shared else note


def render(experiment: str, runs: pd.DataFrame, layout: Layout | None = None, paired: pd.DataFrame | None = None,
           commentary: str = "", tables: dict | None = None) -> str:
    """The Markdown report; `paired` (gqbench.report.paired.paired_table) adds the paired table, `commentary` a
    paragraph of the author's after the tables (the committed reports' comparison with the paper); `tables`:
    paper_tables() when the caller has them already (the CLI builds them once for every renderer)."""
    layout = layout or Layout.from_runs(runs)
    tables = tables or paper_tables(runs, layout, paired)
    table, _ = tables["summary"]
    lines = [f"# {experiment}", "", f"{len(finished_runs(runs))} finished job(s).", ""]
    head = summary_caption(runs, tables)
    if head:
        lines += head + [""]
    if len(table):
        lines += [_markdown(table), "", seeds_note(layout), ""]
    if "paired" in tables:
        frame, shared = tables["paired"]
        lines += [f"## Paired differences against {layout.reference}", "", _markdown(frame), "",
                  with_shared(PAIRED_NOTE, shared), ""]
    if "bjontegaard" in tables:
        frame, shared = tables["bjontegaard"]
        lines += ["## Rate–distortion: Bjøntegaard deltas", "", _markdown(frame), "", with_shared(BD_NOTE, shared), ""]
    if commentary:
        lines += ["## How this compares with the paper", "", commentary.strip(), ""]
    failed = unfinished_jobs(runs)
    if len(failed):
        lines += [f"## Failed or interrupted jobs ({len(failed)})", "", _markdown(failed), ""]
    lines += [METRIC_NOTE, ""]
    return "\n".join(lines)


def right_aligned(frame: pd.DataFrame) -> list[bool]:
    """Per column, whether it holds numbers (right-aligned in every renderer): the summary's formatted metrics and
    sizes, seed and image counts, the paired differences and the Bjøntegaard deltas."""
    formats = {header: fmt for _, header, fmt in COLUMNS}
    return [bool(formats.get(c)) or c in ("seeds", "images") or c.startswith(("Δ", "BD-")) for c in frame.columns]


def _markdown(frame: pd.DataFrame) -> str:
    """A pipe table of already formatted cells: tabulate must not re-parse "25.00" as 25 (it drops the digits), and
    a "|" inside a cell (an error message) must not split it."""
    cells = frame.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    align = ["right" if right else "left" for right in right_aligned(frame)]
    return cells.to_markdown(index=False, disable_numparse=True, colalign=align)


def seeds_note(layout: Layout) -> str:
    if tuple(layout.group_by) == ("bits/token",):
        return SEEDS_NOTE
    return SEEDS_NOTE.replace("at that bits/token", "within its " + " × ".join(layout.group_by) + " group")


def render_latex(experiment: str, runs: pd.DataFrame, layout: Layout | None = None,
                 paired: pd.DataFrame | None = None, tables: dict | None = None) -> str:
    """Booktabs table environments: the summary (caption: protocol, shared columns, seeds, bold; label
    tab:<experiment>), then the paired differences (tab:<experiment>-paired) and the Bjøntegaard deltas
    (tab:<experiment>-bd) when there are."""
    layout = layout or Layout.from_runs(runs)
    tables = tables or paper_tables(runs, layout, paired)
    table, _ = tables["summary"]
    if table.empty:
        return f"% {experiment}: no finished job\n"
    text = " ".join(summary_caption(runs, tables) + [seeds_note(layout)])
    parts = [_latex_table(table, f"{experiment}: {text}", f"tab:{experiment}")]
    if "paired" in tables:
        frame, shared = tables["paired"]
        parts.append(_latex_table(frame, f"{experiment}: {with_shared(PAIRED_NOTE, shared)}", f"tab:{experiment}-paired"))
    if "bjontegaard" in tables:
        frame, shared = tables["bjontegaard"]
        parts.append(_latex_table(frame, f"{experiment}: {with_shared(BD_NOTE, shared)}", f"tab:{experiment}-bd"))
    return "\n".join(parts)


def unbold(frame: pd.DataFrame, marker: str = "**") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A table with Markdown's bold markers taken off its cells, and where they were (a boolean frame), for the
    renderers that bold through pandas' Styler (LaTeX, HTML)."""
    bold = frame.map(lambda v: isinstance(v, str) and len(v) > 2 * len(marker) and v.startswith(marker)
                     and v.endswith(marker))
    plain = frame.map(lambda v: v[len(marker):-len(marker)] if isinstance(v, str) else v).where(bold, frame)
    return plain, bold


# the Unicode the tables use, as LaTeX that compiles without extra packages (after Styler's escaping)
LATEX_SYMBOLS = {"↑": "$\\uparrow$", "↓": "$\\downarrow$", "±": "$\\pm$", "–": "--", "∏": "$\\prod$",
                 "Δ": "$\\Delta$", "ø": "{\\o}", "−": "$-$", "×": "$\\times$", "·": "$\\cdot$", "≤": "$\\leq$",
                 "≥": "$\\geq$", "Σ": "$\\Sigma$", "→": "$\\to$", "…": "\\ldots{}", "—": "---",
                 "<": "\\textless{}", ">": "\\textgreater{}"}


def _latex_symbols(text) -> str:
    text = str(text)
    for plain, command in LATEX_SYMBOLS.items():
        text = text.replace(plain, command)
    return text


def latex_text(text: str) -> str:
    """Running text (a caption) escaped the way Styler escapes cells: a one-cell Styler rendered as plain text,
    so captions and cells share pandas' escaping."""
    cell = pd.DataFrame([[text]]).style.format(escape="latex").hide(axis="index").hide(axis="columns")
    return _latex_symbols(cell.to_string(delimiter="").rstrip("\n"))


def _latex_table(table: pd.DataFrame, caption_text: str, label: str) -> str:
    plain, bold = unbold(table)
    styler = (plain.style.hide(axis="index")
              .format(_latex_symbols, escape="latex")
              .format_index(_latex_symbols, escape="latex", axis="columns")
              .apply(lambda _: bold.map(lambda b: "textbf:--rwrap;" if b else ""), axis=None))
    align = "".join("r" if right else "l" for right in right_aligned(table))
    return styler.to_latex(hrules=True, position_float="centering", label=label, caption=latex_text(caption_text),
                           column_format=align)
