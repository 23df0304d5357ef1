"""Rate–distortion plots (matplotlib, PNG and PDF): each metric against bits per token (or bits per pixel), one
line per method and deviations (and protocol / backbone / training length when the runs have several: runs that
differ in those are never averaged together), error bars = std over seeds; and the effective rate each method
actually uses against its nominal rate (a code that collapses sits far below the diagonal)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .tables import comparison_table

PLOTTED = [("PSNR↑", "PSNR (dB) ↑"), ("SSIM↑", "SSIM ↑"), ("LPIPS↓", "LPIPS ↓"), ("rFID↓", "rFID ↓"),
           ("effective bits", "effective bits / token"), ("usage↑", "codebook usage ↑")]
RATE_AXES = {"bits/token": "bits / token", "bpp": "bits / pixel"}


def curve_points(runs: pd.DataFrame) -> pd.DataFrame:
    """One point per finished job: its rate (bits/token, bpp), metrics and the `line` it is drawn on."""
    raw = comparison_table(runs, formatted=False)
    for column in list(RATE_AXES) + [c for c, _ in PLOTTED]:
        if column in raw:
            raw[column] = pd.to_numeric(raw[column], errors="coerce")
    context = [c for c in ("protocol", "backbone", "steps") if c in raw and raw[c].map(str).nunique() > 1]

    def line(row: pd.Series) -> str:
        changed = row.get("deviations")
        label = " / ".join([str(row["method"])] + [f"{row[c]} steps" if c == "steps" else str(row[c]) for c in context])
        return label + (f" ({changed})" if isinstance(changed, str) and changed else "")

    raw["line"] = raw.apply(line, axis=1) if len(raw) else pd.Series(dtype=object)
    return raw


def rate_distortion_plots(runs: pd.DataFrame, out: Path, name: str, rate: str = "bits/token") -> list[Path]:
    """One figure per plotted metric that some run measured, written as <name>-rd-<metric>.png and .pdf; returns
    the files. Nothing is drawn for a metric no run has (e.g. rFID without Inception weights). `rate`: the x axis,
    "bits/token" or "bpp" (nominal bits per pixel: compares runs whose images or token grids differ in size)."""
    if rate not in RATE_AXES:
        raise ValueError(f"rate axis {rate!r} is not known; choose from {list(RATE_AXES)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = curve_points(runs)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for column, label in PLOTTED:
        if column not in raw or raw[column].notna().sum() == 0 or rate not in raw or raw[rate].notna().sum() == 0:
            continue
        figure, axes = plt.subplots(figsize=(5.0, 3.6), layout="constrained")
        for line, group in sorted(raw.dropna(subset=[rate, column]).groupby("line")):
            stats = group.groupby(rate)[column].agg(["mean", "std"]).reset_index()
            axes.errorbar(stats[rate], stats["mean"], yerr=stats["std"].fillna(0.0), marker="o", capsize=3,
                          label=line)
        if column == "effective bits" and rate == "bits/token":
            top = raw["bits/token"].max()
            axes.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="nominal")
        axes.set_xscale("log", base=2)
        axes.set_xlabel(RATE_AXES[rate])
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
