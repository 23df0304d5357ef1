"""Is a difference real? Every method is evaluated on the same validation images, so compare them paired: per
image, the metric of a method minus that of the reference method (GQ by default) at the same rate, then the mean
of those differences with a 95 % bootstrap confidence interval over images (scipy.stats.bootstrap, BCa, seeded).

Seeds are averaged per image first (a configuration's value on image i is the mean over its seeds), so the
interval says how much the comparison depends on which images were evaluated; the seed-to-seed spread is the ±
of the summary table. Pairs are formed within the same protocol, backbone and evaluated images, at the same
bits/token rounded (FSQ's 15.97 pairs with 16); only images both sides evaluated count.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .. import metrics as M
from .tables import comparison_table, finished_runs

PAIRED = [(M.PSNR, "ΔPSNR (dB)", "{:+.2f}"), (M.SSIM, "ΔSSIM", "{:+.4f}"), (M.LPIPS, "ΔLPIPS", "{:+.4f}")]
CONFIDENCE = 0.95
RESAMPLES = 9999
SEED = 0  # the same resampling stream for every pair: a row does not depend on which other rows exist
CONTEXT = ["protocol", "backbone", "eval images"]
PAIRED_NOTE = ("Paired differences, method − reference, on the same validation images: mean over images of the "
               "per-image difference (seeds averaged per image first), [95 % BCa bootstrap interval over images, "
               f"{RESAMPLES} resamples]. ΔPSNR, ΔSSIM > 0 and ΔLPIPS < 0: better than the reference; an interval "
               "that excludes 0 is a difference these images support. n/a (why): not computable.")


def mean_with_interval(differences: np.ndarray) -> tuple[float, float, float]:
    """(mean, low, high): the mean of paired differences and its BCa bootstrap interval."""
    from scipy.stats import bootstrap

    d = np.asarray(differences, dtype=np.float64)
    mean = float(d.mean())
    if np.ptp(d) == 0.0:  # every image differs by the same amount: no spread to resample (BCa is undefined)
        return mean, mean, mean
    # batch bounds memory (BCa's jackknife is n × (n − 1) values at once without it)
    result = bootstrap((d,), np.mean, confidence_level=CONFIDENCE, n_resamples=RESAMPLES, method="BCa",
                       batch=256, rng=np.random.default_rng(SEED))
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def _configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: its configuration (without seed), context, rounded rate and run_id."""
    raw = comparison_table(runs, formatted=False)
    raw["run_id"] = finished_runs(runs).loc[raw.index, "run_id"]
    for column in ["method", "deviations"] + [c for c in CONTEXT if c in raw]:
        raw[column] = raw[column].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    raw["rate"] = pd.to_numeric(raw["bits/token"], errors="coerce").round()
    identity = [c for c in ("method", "deviations", "K", "m", "groups", "bits/token", "steps") if c in raw]
    raw["configuration"] = raw[identity].apply(lambda row: "|".join(map(str, row)), axis=1)
    return raw


def paired_table(runs: pd.DataFrame, per_image: pd.DataFrame, reference: str = "gq") -> pd.DataFrame:
    """One row per (configuration, reference configuration) pair at the same rate and context; empty when the
    runs have no per-image artefacts or no reference run."""
    if per_image.empty or "run_id" not in per_image:
        return pd.DataFrame()
    runs_of = _configurations(runs)
    context = [c for c in CONTEXT if c in runs_of and runs_of[c].nunique() > 1]
    shown_context = [c for c in context if c != "eval images"]
    unavailable = _unavailable_labels(runs)
    metrics = [(key, header, fmt) for key, header, fmt in PAIRED
               if key in per_image or any(key in labels for labels in unavailable.values())]
    rows = []
    for where, group in runs_of.groupby([c for c in CONTEXT if c in runs_of] + ["rate"], sort=True):
        references = group[group["method"] == reference]
        if (references["deviations"] == "").any():  # the reference as its authors run it; its variants are tested
            references = references[references["deviations"] == ""]
        if references.empty:
            continue
        several = references["configuration"].nunique() > 1
        for ref_config, ref_runs in references.groupby("configuration", sort=True):
            ref_values = _per_image_means(per_image, ref_runs["run_id"])
            vs = reference + (f" ({_code_size(ref_runs.iloc[0])})" if several else "")
            for config, test_runs in group[~group["configuration"].isin(references["configuration"])].groupby(
                    "configuration", sort=True):
                first = test_runs.iloc[0]
                row = {c: first[c] for c in shown_context}
                row.update({"method": first["method"] + (f" ({first['deviations']})" if first["deviations"] else ""),
                            "bits/token": f"{first['bits/token']:.4g}", "vs": vs})
                test_values = _per_image_means(per_image, test_runs["run_id"])
                row["seeds"] = f"{test_values.attrs['seeds']} vs {ref_values.attrs['seeds']}"
                both = test_values.add_suffix("_test").join(ref_values.add_suffix("_ref"), how="inner")
                row["images"] = str(len(both))
                for key, header, fmt in metrics:
                    missing = [runs for side, runs, values in (("test", test_runs, test_values), ("ref", ref_runs, ref_values))
                               if key not in values or values[key].isna().all()]
                    if missing:
                        why = {unavailable.get(run_id, {}).get(key) for side in missing for run_id in side["run_id"]}
                        row[header] = f"n/a ({', '.join(sorted(w for w in why if w)) or 'not measured'})"
                        continue
                    pair = both[[f"{key}_test", f"{key}_ref"]].dropna()
                    if len(pair) < 2:
                        row[header] = "n/a (fewer than 2 images with both values)"
                        continue
                    mean, low, high = mean_with_interval((pair[f"{key}_test"] - pair[f"{key}_ref"]).to_numpy())
                    row[header] = f"{fmt.format(mean)} [{fmt.format(low)}, {fmt.format(high)}]"
                rows.append(row)
    return pd.DataFrame(rows)


def _code_size(run: pd.Series) -> str:
    """"K 256, m 8, 2 groups, 400 steps": what tells two configurations of one method apart."""
    parts = [f"{name} {float(run[column]):.0f}" for column, name in (("K", "K"), ("m", "m"), ("groups", "groups"),
                                                                     ("steps", "steps"))
             if column in run and pd.notna(pd.to_numeric(run[column], errors="coerce"))]
    return ", ".join(parts) or "configuration"


def _unavailable_labels(runs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """run_id -> metric -> the label of why that run could not compute it (its unavailable.<metric> tag)."""
    labels: dict[str, dict[str, str]] = {}
    for key, _, _ in PAIRED:
        tag = f"tags.{M.UNAVAILABLE_TAG}{key}"
        if tag in runs and "run_id" in runs:
            for run_id, why in runs[["run_id", tag]].dropna().itertuples(index=False):
                labels.setdefault(run_id, {})[key] = str(why).split(":", 1)[0]
    return labels


def _per_image_means(per_image: pd.DataFrame, run_ids: pd.Series) -> pd.DataFrame:
    """image -> each metric's mean over the given runs (seeds); attrs['seeds'] = how many runs had per-image rows."""
    mine = per_image[per_image["run_id"].isin(set(run_ids))]
    means = mine.drop(columns="run_id").groupby("image").mean(numeric_only=True)
    means.attrs["seeds"] = mine["run_id"].nunique()
    return means
