"""What a report reads beyond each run's scalars: the per-image metrics (paired comparisons), GQ's per-group KL
histogram, the reconstruction grid and the training curves (MLflow's metric history).

From MLflow they are the artefacts every finished job logs (gqbench/jobdir.py: per_image.csv, kl_bits.csv,
reconstructions.png; a later standalone evaluation's copies under evaluation/) and the history of HISTORY_KEYS.
A report saves them beside its per-run CSV, so `--from <name>.runs.csv` needs no MLflow and no model:

    <name>.per_image.csv.gz  run_id, image, psnr, ssim[, lpips, ...]  (exact repr floats; gzip without a timestamp)
    <name>.kl.csv          run_id, bin_lo, bin_hi, count, target_bits, tolerance_bits
    <name>.history.csv     run_id, key, step, value
    <name>.grids/<run_id>.png

and, written by a person rather than the report, <name>.commentary.md: a paragraph the Markdown and HTML include
(the committed reports' comparison with the paper's numbers).
"""
from __future__ import annotations

import gzip
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..checkpoint import atomic_write_bytes
from ..jobdir import JobDir
from .tables import finished_runs

HISTORY_KEYS = ("train/loss", "train/loss_rec", "train/q_bits_mean")
EVALUATION_FOLDER = "evaluation"  # where gqbench.checkpoint_evaluation logs into a job's own run


@dataclass
class Artefacts:
    per_image: pd.DataFrame = field(default_factory=pd.DataFrame)
    kl: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    grids: dict[str, bytes] = field(default_factory=dict)  # run_id -> reconstructions.png
    commentary: str = ""

    TABLES = ("per_image", "kl", "history")
    COMPRESSED = {"per_image"}  # a row per image and run: megabytes as plain text

    @classmethod
    def filename(cls, name: str, part: str) -> str:
        return f"{name}.{part}.csv" + (".gz" if part in cls.COMPRESSED else "")

    def save(self, out: Path, name: str) -> list[Path]:
        """Write every non-empty part beside the report (atomically) and remove what an earlier report of this name
        left there that this one does not have (--from would read it back); returns the files written."""
        written = []
        for part in self.TABLES:
            table, path = getattr(self, part), out / self.filename(name, part)
            if len(table):
                text = table.to_csv(index=False).encode()
                if part in self.COMPRESSED:
                    text = gzip.compress(text, mtime=0)  # the same table gives the same bytes
                atomic_write_bytes(path, lambda f, t=text: f.write(t))
                written.append(path)
            else:
                path.unlink(missing_ok=True)
        grids = out / f"{name}.grids"
        for stale in sorted(grids.glob("*.png")) if grids.is_dir() else []:
            if stale.stem not in self.grids:
                stale.unlink()
        for run_id, png in sorted(self.grids.items()):
            path = grids / f"{run_id}.png"
            atomic_write_bytes(path, lambda f, p=png: f.write(p))
            written.append(path)
        return written

    @classmethod
    def read_beside(cls, runs_csv: Path) -> "Artefacts":
        """The parts a report saved next to `<name>.runs.csv`; missing parts stay empty."""
        runs_csv = Path(runs_csv)
        stem = runs_csv.name.removesuffix(".runs.csv").removesuffix(".csv")
        found = cls()
        for part in cls.TABLES:
            path = runs_csv.with_name(cls.filename(stem, part))
            if path.exists():  # pandas reads .gz by its name
                setattr(found, part, pd.read_csv(path, dtype={"run_id": str}, float_precision="round_trip"))
        grids = runs_csv.with_name(f"{stem}.grids")
        if grids.is_dir():
            found.grids = {p.stem: p.read_bytes() for p in sorted(grids.glob("*.png"))}
        found.commentary = read_commentary(runs_csv.parent, stem)
        return found


def read_commentary(folder: Path, name: str) -> str:
    path = Path(folder) / f"{name}.commentary.md"
    return path.read_text() if path.exists() else ""


def fetch(runs: pd.DataFrame, tracking_uri: str) -> Artefacts:
    """The artefacts and training histories of the finished runs the tables use (one artefact listing per run;
    a run without them contributes nothing, and its paired cells say why)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    per_image, kl, history, grids = [], [], [], {}
    with tempfile.TemporaryDirectory(prefix="gqbench-report-") as scratch:
        for run_id, row in finished_runs(runs).set_index("run_id").iterrows():
            logged = {a.path for a in client.list_artifacts(run_id)}
            if EVALUATION_FOLDER in logged:
                logged |= {a.path for a in client.list_artifacts(run_id, EVALUATION_FOLDER)}

            def local(filename: str) -> Path | None:
                for path in (f"{EVALUATION_FOLDER}/{filename}", filename):  # a later evaluation's copy first
                    if path in logged:
                        return Path(client.download_artifacts(run_id, path, str(Path(scratch) / run_id)))
                return None

            if (path := local(JobDir.PER_IMAGE)) is not None:
                per_image.append(pd.read_csv(path, float_precision="round_trip").assign(run_id=run_id))
            if (path := local(JobDir.KL_BITS)) is not None:
                kl.append(pd.read_csv(path).assign(run_id=run_id))
            if (path := local(JobDir.GRID)) is not None:
                grids[run_id] = path.read_bytes()
            for key in HISTORY_KEYS:
                if pd.notna(row.get(f"metrics.{key}")):
                    points = client.get_metric_history(run_id, key)
                    history.append(pd.DataFrame({"run_id": run_id, "key": key, "step": [p.step for p in points],
                                                 "value": [p.value for p in points]}))
    return Artefacts(per_image=_stack(per_image, ["run_id", "image"]), kl=_stack(kl, ["run_id", "bin_lo"]),
                     history=_stack(history, ["run_id", "key", "step"]), grids=grids)


def _stack(frames: list[pd.DataFrame], order: list[str]) -> pd.DataFrame:
    """One long table, run_id first, sorted: the saved CSV does not depend on the order runs were read in."""
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["run_id"] + [c for c in table.columns if c != "run_id"]].sort_values(order, ignore_index=True)
