"""Rate–distortion plots (matplotlib, PNG and PDF): each metric against bits per token, one line per method (and
protocol / backbone when the runs have several), error bars = std over seeds; and the effective rate each method
actually uses against its nominal rate (a code that collapses sits far below the diagonal)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .tables import comparison_table

PLOTTED = [("PSNR↑", "PSNR (dB) ↑"), ("SSIM↑", "SSIM ↑"), ("LPIPS↓", "LPIPS ↓"), ("rFID↓", "rFID ↓"),
           ("effective bits", "effective bits / token"), ("usage↑", "codebook usage ↑")]


def _curves(runs: pd.DataFrame) -> pd.DataFrame:
    raw = comparison_table(runs, formatted=False)
    for column in ["bits/token"] + [c for c, _ in PLOTTED]:
        if column in raw:
            raw[column] = pd.to_numeric(raw[column], errors="coerce")
    context = [c for c in ("protocol", "backbone") if c in raw and raw[c].map(str).nunique() > 1]
    raw["line"] = raw[["method"] + context].apply(lambda row: " / ".join(map(str, row)), axis=1)
    return raw


def rate_distortion_plots(runs: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """One figure per plotted metric that some run measured, written as <name>-rd-<metric>.png and .pdf; returns
    the files. Nothing is drawn for a metric no run has (e.g. rFID without Inception weights)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = _curves(runs)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for column, label in PLOTTED:
        if column not in raw or raw[column].notna().sum() == 0 or raw["bits/token"].notna().sum() == 0:
            continue
        figure, axes = plt.subplots(figsize=(5.0, 3.6), layout="constrained")
        for line, group in sorted(raw.dropna(subset=["bits/token", column]).groupby("line")):
            stats = group.groupby("bits/token")[column].agg(["mean", "std"]).reset_index()
            axes.errorbar(stats["bits/token"], stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", capsize=3,
                          label=line)
        if column == "effective bits":
            top = raw["bits/token"].max()
            axes.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="nominal")
        axes.set_xscale("log", base=2)
        axes.set_xlabel("bits / token")
        axes.set_ylabel(label)
        axes.set_title(f"{name}: {label}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        written += save_figure(figure, out / f"{name}-rd-{column.rstrip('↑↓').replace(' ', '_').replace('/', '_').lower()}")
    return written


def save_figure(figure, stem: Path) -> list[Path]:
    """<stem>.png and <stem>.pdf, then the figure is closed; the PDF has no creation date (same runs, same file)."""
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf"):
        figure.savefig(stem.with_suffix(suffix), dpi=150, metadata={"CreationDate": None} if suffix == ".pdf" else None)
        written.append(stem.with_suffix(suffix))
    plt.close(figure)
    return written
