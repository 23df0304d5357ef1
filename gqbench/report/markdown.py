"""The report as Markdown and LaTeX: the caption (protocols, deviations), the table (mean ± std over seeds, the best
per rate group in bold), the paired differences against the reference method, the Bjøntegaard deltas, the failed
jobs, the notes on the metrics. LaTeX is pandas' Styler (booktabs rules), one table environment per table."""
from __future__ import annotations

import pandas as pd

from .. import metrics as M
from .layout import Layout
from .paired import PAIRED_NOTE
from .tables import COLUMNS, bjontegaard_table, finished_runs, summary_table, unfinished_jobs

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


def caption(runs: pd.DataFrame) -> list[str]:
    """What each protocol in the table means (conf/protocol/), what the runs trained and evaluated on, how rFID was
    measured (or why not), and what the deviations column lists."""
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
    if "params.protocol.summary" in done:
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


def render(experiment: str, runs: pd.DataFrame, layout: Layout | None = None, paired: pd.DataFrame | None = None,
           commentary: str = "") -> str:
    """The Markdown report; `paired` (gqbench.report.paired.paired_table) adds the paired table, `commentary` a
    paragraph of the author's after the tables (the committed reports' comparison with the paper)."""
    layout = layout or Layout.from_runs(runs)
    table = summary_table(runs, layout=layout)
    jobs = len(finished_runs(runs))
    lines = [f"# {experiment}", "", f"{jobs} finished job(s).", ""]
    if caption(runs):
        lines += caption(runs) + [""]
    if len(table):
        formats = {header: fmt for _, header, fmt in COLUMNS} | {"seeds": "{}"}
        # the cells are already formatted: tabulate must not re-parse "25.00" as 25 (it drops the digits)
        align = ["right" if formats.get(h) else "left" for h in table.columns]  # numbers right-aligned
        lines += [_markdown(table, colalign=align), "", seeds_note(layout), ""]
    if paired is not None and len(paired):
        lines += [f"## Paired differences against {layout.reference}", "", _markdown(paired), "", PAIRED_NOTE, ""]
    deltas = bjontegaard_table(runs, layout.reference)
    if len(deltas):
        lines += ["## Rate–distortion: Bjøntegaard deltas", "", _markdown(deltas), "", BD_NOTE, ""]
    if commentary:
        lines += ["## How this compares with the paper", "", commentary.strip(), ""]
    failed = unfinished_jobs(runs)
    if len(failed):
        lines += [f"## Failed or interrupted jobs ({len(failed)})", "", _markdown(failed), ""]
    lines += [METRIC_NOTE, ""]
    return "\n".join(lines)


def _markdown(frame: pd.DataFrame, **options) -> str:
    """A pipe table of already formatted cells: tabulate must not re-parse "25.00" as 25 (it drops the digits), and
    a "|" inside a cell (an error message) must not split it."""
    cells = frame.map(lambda v: v.replace("|", "\\|") if isinstance(v, str) else v)
    return cells.to_markdown(index=False, disable_numparse=True, **options)


def seeds_note(layout: Layout) -> str:
    if tuple(layout.group_by) == ("bits/token",):
        return SEEDS_NOTE
    return SEEDS_NOTE.replace("at that bits/token", "within its " + " × ".join(layout.group_by) + " group")


def render_latex(experiment: str, runs: pd.DataFrame, layout: Layout | None = None,
                 paired: pd.DataFrame | None = None) -> str:
    """Booktabs table environments: the summary (caption: protocol, seeds, bold; label tab:<experiment>), then the
    paired differences (tab:<experiment>-paired) and the Bjøntegaard deltas (tab:<experiment>-bd) when there are."""
    layout = layout or Layout.from_runs(runs)
    table = summary_table(runs, bold="\\textbf{{{}}}", layout=layout)
    if table.empty:
        return f"% {experiment}: no finished job\n"
    text = " ".join(caption(runs) + [seeds_note(layout)])
    parts = [_latex_table(table, f"{experiment}: {text}", f"tab:{experiment}")]
    if paired is not None and len(paired):
        parts.append(_latex_table(paired, f"{experiment}: {PAIRED_NOTE}", f"tab:{experiment}-paired"))
    deltas = bjontegaard_table(runs, layout.reference)
    if len(deltas):
        parts.append(_latex_table(deltas, f"{experiment}: {BD_NOTE}", f"tab:{experiment}-bd"))
    return "\n".join(parts)


def _latex_table(table: pd.DataFrame, caption_text: str, label: str) -> str:
    arrows = {"↑": "$\\uparrow$", "↓": "$\\downarrow$", "±": "$\\pm$", "–": "--", "∏": "$\\prod$", "Δ": "$\\Delta$",
              "ø": "{\\o}", "−": "$-$", "×": "$\\times$", "·": "$\\cdot$", "≤": "$\\leq$", "≥": "$\\geq$",
              "Σ": "$\\Sigma$", "→": "$\\to$"}

    def tex(text: str) -> str:
        for plain, command in arrows.items():
            text = text.replace(plain, command)
        return text

    escaped = table.map(lambda cell: tex(_escape(str(cell))) if not str(cell).startswith("\\textbf")
                        else "\\textbf{" + tex(_escape(str(cell)[8:-1])) + "}")
    escaped.columns = [tex(_escape(c)) for c in table.columns]
    styler = escaped.style.hide(axis="index")
    return styler.to_latex(hrules=True, position_float="centering", label=label, caption=tex(_escape(caption_text)),
                           column_format="l" * len(table.columns))


def _escape(text: str) -> str:
    for char, replacement in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("$", "\\$"), ("#", "\\#"),
                              ("_", "\\_"), ("{", "\\{"), ("}", "\\}"), ("~", "\\textasciitilde{}"), ("^", "\\^{}")):
        text = text.replace(char, replacement)
    return text
