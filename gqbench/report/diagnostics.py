"""The figures behind the numbers, from each run's artefacts (gqbench/report/artefacts.py), PNG and PDF:

- KL band: GQ/TokenBridge's per-group KL on the validation images (a density over every token and group)
  against the TDC target log2 K and its dead band — where the mean hides dead or overfull groups;
- reconstructions: the same validation images, originals on top, then one row per method, per rate (the
  lowest seed of each configuration);
- training curves: each method's training loss from MLflow's metric history (one panel per method: the
  protocols put the methods' losses on different scales), and GQ's mean KL against its target while training.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from .artefacts import Artefacts
from .plots import curve_points, save_figure
from .tables import finished_runs

GRID_PADDING = 1  # torchvision.utils.save_image's padding in gqbench/evaluate.py


def run_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """run_id -> method (with its deviations, and protocol / backbone / steps when the runs have several: the
    rate–distortion plots' line), bits/token (rounded), seed, image size: what a figure labels a run by."""
    raw = curve_points(runs)
    done = finished_runs(runs).loc[raw.index]
    labels = pd.DataFrame({
        "method": raw["line"].map(str),
        "rate": pd.to_numeric(raw["bits/token"], errors="coerce").round(),
        "seed": pd.to_numeric(raw["seed"], errors="coerce").fillna(0).astype(int),
        "image_size": pd.to_numeric(done.get("params.data.image_size"), errors="coerce"),
    })
    labels.index = done["run_id"].to_numpy()
    return labels


def diagnostic_plots(runs: pd.DataFrame, artefacts: Artefacts, out: Path, name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    labels = run_labels(runs)
    return (kl_band_plot(artefacts.kl, labels, out, name) + reconstruction_plots(artefacts.grids, labels, out, name)
            + training_curves(artefacts.history, labels, out, name))


def kl_band_plot(kl: pd.DataFrame, labels: pd.DataFrame, out: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    kl = kl[kl["run_id"].isin(labels.index)] if len(kl) else kl
    if kl.empty:
        return []
    targets = sorted(kl[["target_bits", "tolerance_bits"]].drop_duplicates().itertuples(index=False))
    figure, axes = plt.subplots(1, len(targets), figsize=(4.6 * len(targets), 3.4), layout="constrained", squeeze=False)
    for ax, (target, tolerance) in zip(axes[0], targets):
        mine = kl[(kl["target_bits"] == target) & (kl["tolerance_bits"] == tolerance)]
        for run_id, hist in sorted(mine.groupby("run_id"), key=lambda item: _order(labels, item[0])):
            hist = hist.sort_values("bin_lo")
            total = max(hist["count"].sum(), 1)
            inside, overflow = hist.iloc[:-1], hist["count"].iloc[-1] / total  # the last bin is open-ended
            density = inside["count"].to_numpy() / total / (inside["bin_hi"] - inside["bin_lo"]).to_numpy()
            label = labels.loc[run_id]
            ax.stairs(density, np.append(inside["bin_lo"].to_numpy(), inside["bin_hi"].iloc[-1]),
                      label=f"{label['method']} {label['rate']:.0f} bits, seed {label['seed']} "
                            f"({overflow:.1%} above {inside['bin_hi'].iloc[-1]:g})")
        ax.axvspan(target - tolerance, target + tolerance, color="tab:green", alpha=0.15, label="TDC band")
        ax.axvline(target, color="tab:green", linewidth=1)
        ax.set_xlabel("KL per group (bits)")
        ax.set_ylabel("density over tokens × groups")
        ax.set_title(f"target log2 K = {target:g} ± {tolerance:g} bits")
        ax.set_xlim(0, mine["bin_lo"].max())
        ax.legend(fontsize="x-small")
    figure.suptitle(f"{name}: per-group KL on validation")
    return save_figure(figure, out / f"{name}-kl-band")


def reconstruction_plots(grids: dict[str, bytes], labels: pd.DataFrame, out: Path, name: str) -> list[Path]:
    """Per rate, one figure: the originals row of the first run's grid, then each configuration's reconstructions."""
    import matplotlib.pyplot as plt

    chosen = labels[labels.index.isin(list(grids))].sort_values(["rate", "method", "seed"])
    written = []
    for rate, at_rate in chosen.groupby("rate", sort=True):
        first = at_rate.groupby("method", sort=True).head(1)  # the lowest seed of each method
        strips = {}
        for run_id, label in first.iterrows():
            rows = _grid_rows(grids[run_id], label["image_size"])
            if rows is None:
                continue
            strips.setdefault("original", rows[0])
            strips[label["method"]] = rows[1]
        if len(strips) < 2:
            continue
        height, width = next(iter(strips.values())).shape[:2]
        figure, axes = plt.subplots(len(strips), 1, figsize=(min(14.0, width / 40 + 1.5), 0.2 + len(strips) * (height / 40 + 0.1)),
                                    layout="constrained", squeeze=False)
        for ax, (label, strip) in zip(axes[:, 0], strips.items()):
            ax.imshow(strip)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", va="center")
        figure.suptitle(f"{name}: reconstructions at {rate:.0f} bits/token (same validation images)")
        written += save_figure(figure, out / f"{name}-reconstructions-{rate:.0f}bits")
    return written


def _grid_rows(png: bytes, image_size: float) -> list[np.ndarray] | None:
    """The rows of an evaluation grid (originals, reconstructions[, continuous path]), each (S, W, 3)."""
    from matplotlib.image import imread

    grid = imread(io.BytesIO(png))[..., :3]
    height = grid.shape[0]
    sizes = [int(image_size)] if pd.notna(image_size) else []
    sizes += [(height - GRID_PADDING) // rows - GRID_PADDING for rows in (3, 2)]
    for size in sizes:
        step = size + GRID_PADDING
        if size > 0 and (height - GRID_PADDING) % step == 0:
            return [grid[GRID_PADDING + r * step: GRID_PADDING + r * step + size] for r in range((height - GRID_PADDING) // step)]
    return None


def training_curves(history: pd.DataFrame, labels: pd.DataFrame, out: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    history = history[history["run_id"].isin(labels.index)] if len(history) else history
    written = []
    loss = history[history["key"] == "train/loss_rec"] if len(history) else history
    if len(loss):
        methods = sorted(labels.loc[loss["run_id"].unique(), "method"].unique())
        figure, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.0), layout="constrained",
                                    squeeze=False)
        for ax, method in zip(axes[0], methods):
            for run_id, curve in sorted(loss.groupby("run_id"), key=lambda item: _order(labels, item[0])):
                label = labels.loc[run_id]
                if label["method"] == method:
                    ax.plot(curve["step"], curve["value"], linewidth=1,
                            label=f"{label['rate']:.0f} bits, seed {label['seed']}")
            ax.set_yscale("log")
            ax.set_title(method)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
        axes[0, 0].set_ylabel("reconstruction loss (train)")
        figure.suptitle(f"{name}: training reconstruction loss (each method on its protocol's scale)")
        written += save_figure(figure, out / f"{name}-training-loss")
    bits = history[history["key"] == "train/q_bits_mean"] if len(history) else history
    if len(bits):
        figure, ax = plt.subplots(figsize=(5.0, 3.4), layout="constrained")
        for run_id, curve in sorted(bits.groupby("run_id"), key=lambda item: _order(labels, item[0])):
            label = labels.loc[run_id]
            ax.plot(curve["step"], curve["value"], linewidth=1,
                    label=f"{label['method']} {label['rate']:.0f} bits, seed {label['seed']}")
        ax.set_xlabel("step")
        ax.set_ylabel("mean KL per group (bits)")
        ax.set_title(f"{name}: KL while training (TDC target: log2 K)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
        written += save_figure(figure, out / f"{name}-training-kl")
    return written


def _order(labels: pd.DataFrame, run_id: str) -> tuple:
    label = labels.loc[run_id]
    return label["method"], label["rate"], label["seed"], run_id
