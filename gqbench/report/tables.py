"""Pure table building: runs (an mlflow.search_runs-shaped DataFrame) -> the comparison table, one row per job,
and its summary over seeds (mean ± std, the best value per column and rate group marked). No I/O here."""
from __future__ import annotations

import pandas as pd

from .. import metrics as M

# (column in search_runs, header, format); metric columns are named by gqbench.metrics' constants
COLUMNS = [
    ("params.quantizer.name", "method", None),
    ("params.protocol.name", "protocol", None),
    ("deviations", "deviations", None),
    ("params.model.name", "backbone", None),
    (f"metrics.{M.CODEBOOK_SIZE}", "K", "{:.0f}"),
    (f"metrics.{M.CODEBOOK_DIM}", "m", "{:.0f}"),
    (f"metrics.{M.NUM_CODEBOOKS}", "groups", "{:.0f}"),
    (f"metrics.{M.BITS_PER_TOKEN}", "bits/token", "{:.4g}"),
    (f"metrics.{M.EFFECTIVE_RATE}", "effective bits", "{:.2f}"),
    (f"metrics.{M.BPP}", "bpp", "{:.4f}"),
    (f"metrics.{M.PSNR}", "PSNR↑", "{:.2f}"),
    (f"metrics.{M.SSIM}", "SSIM↑", "{:.4f}"),
    (f"metrics.{M.LPIPS}", "LPIPS↓", "{:.4f}"),
    (f"metrics.{M.RFID}", "rFID↓", "{:.2f}"),
    (f"metrics.{M.CODEBOOK_USAGE}", "usage↑", "{:.3f}"),
    (f"metrics.{M.USAGE_RELATIVE}", "usage/uniform", "{:.3f}"),
    (f"metrics.{M.PERPLEXITY}", "perplexity", "{:.1f}"),
    ("metrics.q_bits_mean", "KL bits", "{:.2f}"),
    ("metrics.q_bits_in_band", "in band", "{:.3f}"),
    (f"metrics.{M.CONTINUOUS}{M.PSNR}", "PSNR (continuous)", "{:.2f}"),
    ("params.seed", "seed", None),
    ("params.train.max_steps", "steps", None),
    ("metrics.eval_images", "eval images", "{:.0f}"),
]


# keys that size a code or pick a search kernel: not training settings, never listed as deviations
NOT_SETTINGS = {"name", "codebook_size", "codebook_dim", "num_codebooks", "levels", "search_backend", "search_exact"}


def deviations(runs: pd.DataFrame) -> pd.Series:
    """Per run, the quantizer options it set away from its method's official defaults (quantizers.official_defaults),
    e.g. "legacy_loss=False; temperature=0.01"; "" when it ran every option as the authors' code does."""
    import yaml

    from quantizers import known_quantizers, official_defaults

    def of(row: pd.Series) -> str:
        name = row.get("params.quantizer.name")
        if not isinstance(name, str) or name not in known_quantizers():
            return ""
        changed = []
        for key, default in official_defaults(name).items():
            text = row.get(f"params.quantizer.{key}")
            if key in NOT_SETTINGS or not isinstance(text, str):
                continue
            try:
                value = None if text == "None" else yaml.safe_load(text)
            except yaml.YAMLError:  # MLflow truncates long params: compare the text as it is
                value = text
            if isinstance(value, str):  # YAML 1.1 reads "1e-05" (no dot) as a string
                try:
                    value = float(value)
                except ValueError:
                    pass
            if value != (list(default) if isinstance(default, tuple) else default):
                changed.append(f"{key}={text}")
        return "; ".join(changed)

    return runs.apply(of, axis=1) if len(runs) else pd.Series(dtype=object)


def not_available(done: pd.DataFrame, column: str) -> pd.Series:
    """"n/a (<label>)" where a run recorded the metric as unavailable (tag unavailable.<metric> = "label: why")."""
    tag = "tags." + M.UNAVAILABLE_TAG + column.split(".", 1)[1]
    if tag not in done:
        return pd.Series(None, index=done.index, dtype=object)
    return done[tag].map(lambda why: f"n/a ({str(why).split(':', 1)[0]})" if isinstance(why, str) else None)


def chronological(runs: pd.DataFrame) -> pd.DataFrame:
    """Oldest first; runs that started in the same millisecond by run id: the same order however they were read
    (MLflow returns newest first, a saved CSV oldest first)."""
    keys = [c for c in ("start_time", "run_id") if c in runs]
    return runs.sort_values(keys, kind="stable") if keys else runs


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED runs, newest per (signature, eval settings): a re-evaluation replaces the row it repeats. Runs
    without a signature (not logged by a gqbench job) are never merged."""
    done = chronological(runs[runs["status"] == "FINISHED"])
    if "tags.signature" not in done:
        return done
    keys = [c for c in ("tags.signature", "metrics.eval_images") if c in done]
    signed = done["tags.signature"].notna()
    kept = done[signed].drop_duplicates(keys, keep="last")
    return chronological(pd.concat([kept, done[~signed]])) if (~signed).any() else kept


def comparison_table(runs: pd.DataFrame, formatted: bool = True) -> pd.DataFrame:
    """One row per finished job; numbers formatted for Markdown, or raw (for the CSV)."""
    done = finished_runs(runs)
    done = done.assign(deviations=deviations(done))
    table = pd.DataFrame({header: done[col] if col in done else None for col, header, _ in COLUMNS}, index=done.index)
    if formatted:
        for col, header, fmt in COLUMNS:
            if fmt is not None:
                cells = table[header].map(lambda v, f=fmt: "–" if pd.isna(v) else f.format(v))
                table[header] = not_available(done, col).where(table[header].isna(), None).fillna(cells)
    sort_keys = [h for h in ("method", "bits/token", "K", "m", "seed") if h in table]
    return table.sort_values(sort_keys, key=lambda s: pd.to_numeric(s, errors="coerce").fillna(0) if s.name != "method" else s)


def unfinished_jobs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that did not finish (failed, killed, or still RUNNING after a hard kill) and whose job has no
    finished run: these are the holes in the table."""
    finished = set(runs.loc[runs["status"] == "FINISHED", "tags.signature"].dropna()) if "tags.signature" in runs else set()
    bad = runs[runs["status"] != "FINISHED"]
    if "tags.signature" in bad:
        bad = bad[~bad["tags.signature"].isin(finished)]
    cols = {"tags.mlflow.runName": "run", "status": "status", "tags.error": "error"}
    return pd.DataFrame({v: bad[k] if k in bad else None for k, v in cols.items()}, index=bad.index)


# the columns that say which configuration a row is; rows equal in all of them differ only by seed
IDENTITY = ["method", "protocol", "deviations", "backbone", "K", "m", "groups", "bits/token", "effective bits", "bpp",
            "steps", "eval images"]
NOT_AVERAGED = {"K", "m", "groups", "bits/token", "bpp", "eval images"}  # sizes, equal across seeds
CONFIGURATION = [k for k in IDENTITY if k != "effective bits"]  # what a summary row is keyed by (effective bits: measured)


def better(header: str) -> int:
    """+1 if a larger value is better (↑), -1 if smaller (↓), 0 for descriptive columns."""
    return 1 if "↑" in header else -1 if "↓" in header else 0


def summary_table(runs: pd.DataFrame, bold: str = "**{}**", layout=None) -> pd.DataFrame:
    """One row per configuration: metrics as mean ± std over its seeds (std when 2+ seeds), `seeds` the count, and the
    best mean of every ↑/↓ column within each group of `layout.group_by` (default: bits/token, rounded) wrapped in
    `bold` ("**{}**" Markdown, "\\textbf{{{}}}" LaTeX). Cells a run could not compute keep their "n/a (why)" text;
    missing ones are "–". `layout` (gqbench.report.layout.Layout) also picks the columns shown."""
    from .layout import Layout

    layout = layout or Layout()
    raw = comparison_table(runs, formatted=False)
    cells = comparison_table(runs, formatted=True)
    formats = {header: fmt for _, header, fmt in COLUMNS}
    keys = [k for k in CONFIGURATION if k in raw]
    values = [h for h, fmt in formats.items() if fmt is not None and h in raw and h not in keys]
    raw[values] = raw[values].apply(pd.to_numeric, errors="coerce")
    rows = []
    identity = raw[keys].apply(lambda row: "|".join(map(str, row)), axis=1)  # one text key: groupby splits None keys
    for _, group in raw.groupby(identity, sort=False):
        first = cells.loc[group.index[0]]
        row = {k: first[k] for k in keys}
        seeds = group["seed"].dropna() if "seed" in group else pd.Series(dtype=object)
        row["seeds"] = str(seeds.nunique() if len(seeds) else len(group))
        if len(seeds) and len(group) > seeds.nunique():  # same configuration and seed, different hidden settings
            row["seeds"] += f" ({len(group)} runs)"
        row["_group"] = "|".join(_group_key(group, header) for header in layout.group_by)
        row["_order"] = pd.to_numeric(group["bits/token"], errors="coerce").iloc[0] if "bits/token" in group else float("nan")
        for header in values:
            column = group[header].dropna()
            if column.empty:
                row[header] = first[header]  # "n/a (why)" or "–"
            elif len(column) == 1 or header in NOT_AVERAGED:
                row[header] = formats[header].format(column.mean())
            else:
                row[header] = f"{formats[header].format(column.mean())} ± {formats[header].format(column.std(ddof=1))}"
            row[f"_{header}"] = column.mean() if not column.empty else float("nan")
        rows.append(row)
    rows += _holes(runs, keys, values)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for header in values:
        direction = better(header)
        means = table[f"_{header}"]
        if not direction or means.notna().sum() < 2:
            continue
        for _, index in table.groupby("_group").groups.items():
            group = means.loc[index].dropna()
            if len(group) >= 2:
                best = group.max() if direction > 0 else group.min()
                for i in group.index[group == best]:
                    table.at[i, header] = bold.format(table.at[i, header])
    order = [h for _, h, _ in COLUMNS if h in table and h != "seed"] + ["seeds"]
    table[keys] = table[keys].map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else v)
    table = table.sort_values(["method", "_order"], key=lambda s: s if s.name == "method" else s.fillna(-1), kind="stable")
    return table[layout.shown(order)].reset_index(drop=True)


# per table, the descriptive columns that are said once, above or under it, when every row holds the same value
SHARED_SUMMARY = ("protocol", "deviations", "backbone", "steps", "eval images", "seeds")
SHARED_PAIRED = ("vs", "seeds", "images")
SHARED_BJONTEGAARD = ("protocol", "backbone", "vs")
NO_DEVIATIONS = "none (every quantizer option at its method's official default)"


def split_shared(table: pd.DataFrame, candidates: tuple[str, ...]) -> tuple[pd.DataFrame, str]:
    """`table` without those of `candidates` that hold one value in every row (tables of 2+ rows), and the sentence
    that says them once: "In every row: protocol official; deviations none (...); steps 400; seeds 2." A column
    that is empty everywhere is dropped unsaid; "" when nothing is shared. Keeps a pasted table as narrow as the
    paper's; the per-run CSVs keep every column."""
    if len(table) < 2:
        return table, ""
    shared = [c for c in candidates if c in table and table[c].map(str).nunique() == 1]
    said = []
    for column in shared:
        value = str(table[column].iloc[0])
        if column == "deviations" and value == "":
            said.append(f"deviations {NO_DEVIATIONS}")
        elif value not in ("", "–"):
            said.append(f"{column} {value}")
    return table.drop(columns=shared), ("In every row: " + "; ".join(said) + "." if said else "")


# where a job that did not finish takes its configuration from: the params it logged when it started
HOLE_COLUMNS = {"method": "params.quantizer.name", "protocol": "params.protocol.name", "backbone": "params.model.name",
                "K": "params.quantizer.codebook_size", "bits/token": "params.rate.bits_per_token",
                "steps": "params.train.max_steps"}
HOLE_STATUS = {"FAILED": "failed", "KILLED": "killed", "RUNNING": "unfinished", "SCHEDULED": "unfinished"}


def _holes(runs: pd.DataFrame, keys: list[str], values: list[str]) -> list[dict]:
    """A row, in place in the table, for each job without a finished run (the newest attempt's configuration):
    the first metric cell says what happened ("failed: FloatingPointError: the training loss became nan ..."),
    the other cells "–"; never bold, 0 seeds."""
    bad = chronological(runs.loc[unfinished_jobs(runs).index])
    if "tags.signature" in bad:
        signed = bad["tags.signature"].notna()
        bad = pd.concat([bad[signed].drop_duplicates("tags.signature", keep="last"), bad[~signed]])
    formats = {header: fmt for _, header, fmt in COLUMNS}
    rows = []
    for _, run in bad.iterrows():
        row = {k: "–" if formats.get(k) else "" for k in keys}  # as a finished row shows what it lacks
        for header, column in HOLE_COLUMNS.items():
            if header in row and isinstance(run.get(column), str) and run[column] != "None":
                row[header] = run[column]
        if "deviations" in row:  # what the job was trying, from the quantizer options it logged at its start
            row["deviations"] = deviations(run.to_frame().T).iloc[0]
        error = run.get("tags.error")
        what = HOLE_STATUS.get(str(run["status"]), str(run["status"]).lower())
        if isinstance(error, str) and error:
            first_line = error.strip().splitlines()[0]
            what += ": " + (first_line if len(first_line) <= 80 else first_line[:79] + "…")
        row.update({header: "–" for header in values})
        scored = [header for header in values if better(header)] or values
        if scored:
            row[scored[0]] = what  # the first ↑/↓ column (PSNR): where a reader looks for the number
        row.update({"seeds": "0", "_group": f"hole {len(rows)}",
                    "_order": pd.to_numeric(row.get("bits/token"), errors="coerce")})
        row.update({f"_{header}": float("nan") for header in values})
        rows.append(row)
    return rows


def _group_key(group: pd.DataFrame, header: str) -> str:
    """The value a configuration is grouped by for the bold best: bits/token rounded (FSQ's 15.97 competes at 16)."""
    if header not in group:
        return ""
    if header == "bits/token":
        bits = pd.to_numeric(group[header], errors="coerce").iloc[0]
        return str(round(bits)) if pd.notna(bits) else "?"
    return str(group[header].iloc[0])


def bjontegaard_table(runs: pd.DataFrame, reference: str = "gq") -> pd.DataFrame:
    """BD-PSNR (dB) and BD-rate of every method's rate–PSNR curve against `reference`'s (run as its authors' code
    does, when there is such a curve), per protocol, backbone, training length and evaluated images: a curve is
    the seed-mean PSNR at each bits/token of one method and deviations (gqbench/report/bjontegaard.py). Empty when
    no method has two rates or the reference is missing."""
    from .bjontegaard import bd_psnr, bd_rate

    raw = comparison_table(runs, formatted=False)
    needed = {"method", "bits/token", "PSNR↑"}
    if raw.empty or not needed <= set(raw):
        return pd.DataFrame()
    raw = raw.assign(**{"bits/token": pd.to_numeric(raw["bits/token"], errors="coerce"),
                        "PSNR↑": pd.to_numeric(raw["PSNR↑"], errors="coerce")}).dropna(subset=["bits/token", "PSNR↑"])
    # one curve per method and deviations, within the same protocol, backbone, training length and evaluated images
    context = [c for c in ("protocol", "backbone", "steps", "eval images") if c in raw]
    labels = context + ["deviations"]
    raw[labels] = raw[labels].apply(lambda column: column.map(lambda v: "" if v is None or v != v else str(v)))
    curves = raw.groupby(context + ["method", "deviations", "bits/token"], sort=True)["PSNR↑"].mean().reset_index()
    shown = [c for c in context if c in ("protocol", "backbone") or raw[c].nunique() > 1]
    rows = []
    for where, group in curves.groupby(context, sort=True) if context else [((), curves)]:
        by_curve = {key: g for key, g in group.groupby(["method", "deviations"], sort=True)}
        ref_key = (reference, "") if (reference, "") in by_curve else next((k for k in by_curve if k[0] == reference), None)
        ref = by_curve.get(ref_key)
        if ref is None or len(ref) < 2:
            continue
        for (method, changed), curve in by_curve.items():
            if (method, changed) == ref_key or len(curve) < 2:
                continue
            row = {c: v for c, v in zip(context, where if isinstance(where, tuple) else (where,)) if c in shown}
            row.update({"method": method + (f" ({changed})" if changed else ""), "vs": reference,
                        "rates": ", ".join(f"{b:.4g}" for b in curve["bits/token"])})
            try:
                row["BD-PSNR (dB)"] = f"{bd_psnr(ref['bits/token'], ref['PSNR↑'], curve['bits/token'], curve['PSNR↑']):+.2f}"
            except ValueError as why:
                row["BD-PSNR (dB)"] = f"n/a ({why})"
            try:
                row["BD-rate"] = f"{100 * bd_rate(ref['bits/token'], ref['PSNR↑'], curve['bits/token'], curve['PSNR↑']):+.1f} %"
            except ValueError as why:
                row["BD-rate"] = f"n/a ({why})"
            rows.append(row)
    return pd.DataFrame(rows)
