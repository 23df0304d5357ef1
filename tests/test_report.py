"""The report's run selection and table on hand-made MLflow-shaped frames: newest run per job, failures
listed, numbers as recorded."""
from __future__ import annotations

import pandas as pd
import pytest

from gqbench import report


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """What mlflow.search_runs returns, for the columns the report reads."""
    base = {"params.quantizer.name": "gq", "params.model.name": "unet_tiny", "params.seed": "0",
            "params.train.max_steps": "12", "metrics.codebook_size": 16.0, "metrics.bits_per_token": 8.0,
            "metrics.eval_images": 16.0, "tags.mlflow.runName": "job", "tags.error": None}
    frame = pd.DataFrame([{**base, **r} for r in rows])
    frame["start_time"] = pd.to_datetime(frame["start_time"], unit="s", utc=True)
    return frame


RUNS = runs_frame([
    # job A evaluated twice: the newer evaluation replaces the older one, whatever the row order
    {"tags.signature": "A", "status": "FINISHED", "start_time": 200, "metrics.psnr": 25.0, "params.seed": "1"},
    {"tags.signature": "A", "status": "FINISHED", "start_time": 100, "metrics.psnr": 20.0, "params.seed": "1"},
    # job A with another eval set size is another row
    {"tags.signature": "A", "status": "FINISHED", "start_time": 150, "metrics.psnr": 21.0, "metrics.eval_images": 8.0, "params.seed": "1"},
    # a failed attempt of A after it finished is not a hole in the table
    {"tags.signature": "A", "status": "FAILED", "start_time": 300, "tags.error": "RuntimeError: boom"},
    {"tags.signature": "B", "status": "FINISHED", "start_time": 50, "metrics.psnr": 30.0, "params.quantizer.name": "fsq"},
    {"tags.signature": "C", "status": "FAILED", "start_time": 60, "tags.error": "ValueError: codebook_size=100",
     "tags.mlflow.runName": "bad"},
    {"tags.signature": "D", "status": "RUNNING", "start_time": 70, "tags.mlflow.runName": "hard-killed"},
])


def test_the_newest_finished_run_per_job_and_eval_setting_is_kept():
    kept = report.finished_runs(RUNS)
    by_key = {(r["tags.signature"], r["metrics.eval_images"]): r["metrics.psnr"] for _, r in kept.iterrows()}
    assert by_key == {("A", 16.0): 25.0, ("A", 8.0): 21.0, ("B", 16.0): 30.0}
    shuffled = RUNS.sample(frac=1.0, random_state=3)  # row order must not matter, only start_time
    assert report.finished_runs(shuffled)["metrics.psnr"].sort_values().tolist() == [21.0, 25.0, 30.0]


def test_table_rows_carry_the_recorded_numbers_sorted_by_method():
    raw = report.comparison_table(RUNS, formatted=False)
    assert raw["method"].tolist() == ["fsq", "gq", "gq"]
    assert raw["PSNR↑"].tolist() == [30.0, 21.0, 25.0] or raw["PSNR↑"].tolist() == [30.0, 25.0, 21.0]
    assert set(raw.columns) == {header for _, header, _ in report.COLUMNS}
    shown = report.comparison_table(RUNS)
    assert shown.loc[shown["method"] == "fsq", "PSNR↑"].item() == "30.00"
    assert shown.loc[shown["method"] == "fsq", "SSIM↑"].item() == "–"  # missing metric: a dash, not 0 or nan


def test_holes_are_failed_or_unfinished_jobs_without_a_finished_run():
    holes = report.unfinished_jobs(RUNS)
    assert sorted(holes["run"]) == ["bad", "hard-killed"]
    assert holes.loc[holes["run"] == "bad", "error"].item() == "ValueError: codebook_size=100"


def test_rendered_report_has_the_table_the_failures_and_the_protocol_note():
    text = report.render("exp", RUNS)
    assert text.startswith("# exp\n") and "3 finished job(s)." in text
    assert "| fsq " in text and "30.00" in text and "25.00" in text and "20.00" not in text
    assert "## Failed or interrupted jobs (2)" in text and "codebook_size=100" in text
    assert "PSNR/SSIM: per image on the 0–255 scale" in text
    only_done = report.render("exp", RUNS[RUNS["status"] == "FINISHED"])
    assert "Failed" not in only_done


def test_cli_reads_a_real_mlflow_store_and_writes_markdown_and_csv(tmp_path, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    for signature, psnr, status in (("A", 20.0, "FINISHED"), ("A", 25.123456, "FINISHED"), ("B", 30.0, "FAILED")):
        run = client.create_run(exp, tags={"signature": signature, "error": "boom" if status == "FAILED" else ""})
        client.log_param(run.info.run_id, "quantizer.name", "gq")
        client.log_metric(run.info.run_id, "psnr", psnr)
        client.log_metric(run.info.run_id, "eval_images", 16)
        client.set_terminated(run.info.run_id, status)
    out = tmp_path / "reports"
    assert report.main(["--experiment", "exp", "--tracking-uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert (f"written: {out / 'exp.md'}, {out / 'exp.tex'}, {out / 'exp.csv'}, {out / 'exp.runs.csv'}"
            in printed.err)
    text = (out / "exp.md").read_text()
    assert text in printed.out
    assert text.startswith("# exp\n") and "1 finished job(s)." in text and "25.12" in text and "20.00" not in text
    assert "Failed or interrupted jobs (1)" in text
    csv = pd.read_csv(out / "exp.csv")
    assert csv["PSNR↑"].tolist() == [25.123456] and csv["method"].tolist() == ["gq"]  # raw numbers, no index
    assert csv.columns.tolist() == [header for _, header, _ in report.COLUMNS]
    assert "\\toprule" in (out / "exp.tex").read_text() and "25.12" in (out / "exp.tex").read_text()
    # the per-run CSV gives back the same Markdown and LaTeX, byte for byte, without MLflow
    again = tmp_path / "again"
    assert report.main(["--from", str(out / "exp.runs.csv"), "--out", str(again)]) == 0
    for name in ("exp.md", "exp.tex", "exp.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    with pytest.raises(SystemExit, match="no MLflow experiment named 'nope'"):
        report.main(["--experiment", "nope", "--tracking-uri", uri, "--out", str(out)])
    client.create_experiment("empty", artifact_location=str(tmp_path / "artifacts2"))
    with pytest.raises(SystemExit, match="'empty' .* has no runs yet"):
        report.main(["--experiment", "empty", "--tracking-uri", uri, "--out", str(out)])
    mlflow.set_tracking_uri(None)


def test_cli_defaults_runs_dir_from_the_environment_and_reports_folder(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from gqbench.tracking import default_tracking_uri

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(default_tracking_uri(tmp_path / "myruns"))
    exp = client.create_experiment("exp", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp, tags={"signature": "A"})
    client.log_metric(run.info.run_id, "psnr", 21.5)
    client.set_terminated(run.info.run_id, "FINISHED")
    monkeypatch.setenv("GQBENCH_RUNS", "myruns")
    assert report.main(["--experiment", "exp"]) == 0
    assert "21.50" in (tmp_path / "reports" / "generated" / "exp.md").read_text()
    monkeypatch.delenv("GQBENCH_RUNS")
    with pytest.raises(SystemExit, match=r"no MLflow experiment named 'exp' in sqlite:///.*/runs/mlflow\.db"):
        report.main(["--experiment", "exp"])  # default run folder ./runs
    with pytest.raises(SystemExit):
        report.main([])  # --experiment is required
    assert "--experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main(["--help"])
    usage = capsys.readouterr().out
    for text in ("Render an MLflow experiment as comparison tables", "MLflow experiment name (tracking.experiment)",
                 "(paths.runs; default $GQBENCH_RUNS or ./runs)", "default: sqlite:///<runs-dir>/mlflow.db",
                 "folder for the report's files", "the method the paired and Bjøntegaard tables compare against"):
        assert text in " ".join(usage.split()), text


def test_rows_sort_by_method_then_numerically_by_rate_size_and_seed():
    rows = [  # string order would put "16" before "8" and seed "10" before "9"
        {"tags.signature": s, "status": "FINISHED", "start_time": i, "params.quantizer.name": m,
         "metrics.bits_per_token": b, "params.seed": seed, "metrics.psnr": float(i)}
        for i, (s, m, b, seed) in enumerate([("a", "vq", 16.0, "0"), ("b", "gq", 16.0, "10"), ("c", "gq", 8.0, "0"),
                                             ("d", "gq", 16.0, "9"), ("e", "fsq", float("nan"), "0")])
    ]
    raw = report.comparison_table(runs_frame(rows), formatted=False)
    assert raw["PSNR↑"].tolist() == [4.0, 2.0, 3.0, 1.0, 0.0]  # fsq; gq 8; gq 16 seed 9, seed 10; vq
    sized = [{"tags.signature": f"k{i}", "status": "FINISHED", "start_time": i, "metrics.bits_per_token": 16.0,
              "metrics.codebook_size": k, "metrics.codebook_dim": m, "metrics.psnr": float(i)}
             for i, (k, m) in enumerate([(16.0, 4.0), (4.0, 2.0), (16.0, 2.0)])]  # same method and rate
    assert report.comparison_table(runs_frame(sized), formatted=False)["PSNR↑"].tolist() == [1.0, 2.0, 0.0]
    frame = runs_frame(rows).drop(columns=["tags.signature"])  # runs logged without a signature tag
    assert len(report.finished_runs(frame)) == 5 and report.unfinished_jobs(frame).empty


def test_rendered_markdown_is_exactly_the_table_the_failures_and_the_note():
    frame = runs_frame([
        {"tags.signature": "A", "status": "FINISHED", "start_time": 1, "metrics.psnr": 25.0},
        {"tags.signature": "B", "status": "FAILED", "start_time": 2, "tags.error": "boom", "tags.mlflow.runName": "b"},
    ])[["tags.signature", "status", "start_time", "metrics.psnr", "params.quantizer.name", "tags.error",
        "tags.mlflow.runName"]]
    dash = "–"
    headers = [h for _, h, _ in report.COLUMNS if h != "seed"] + ["seeds"]  # one row per configuration, seeds counted
    # descriptive columns with one value in every row are said once above the table (empty ones: not at all)
    headers = [h for h in headers if h not in ("protocol", "deviations", "backbone", "steps", "eval images")]
    cells = ["gq"] + [dash] * (headers.index("PSNR↑") - 1) + ["25.00"] + [dash] * (len(headers) - headers.index("PSNR↑") - 1)
    cells[-1] = "1"
    text = report.render("exp", frame)
    lines = text.split("\n")
    assert lines[:3] == ["# exp", "", "1 finished job(s)."] and lines[3] == ""
    assert lines[4:6] == ["In every row: deviations none (every quantizer option at its method's official default).", ""]
    lines = lines[2:]  # the rest as before that line
    header_row = [c.strip() for c in lines[4].strip("|").split("|")]
    body_row = [c.strip() for c in lines[6].strip("|").split("|")]
    assert header_row == headers and body_row == cells
    # the failed job keeps its place in the table: its configuration, what happened in the PSNR cell, 0 seeds
    hole = list(cells)
    hole[headers.index("PSNR↑")], hole[-1] = "failed: boom", "0"
    assert [c.strip() for c in lines[7].strip("|").split("|")] == hole
    rule = [c.strip() for c in lines[5].strip("|").split("|")]
    numeric = {h for _, h, fmt in report.COLUMNS if fmt is not None} | {"seeds"}
    assert [r.endswith(":") and not r.startswith(":") for r in rule] == [h in numeric for h in headers]
    assert lines[8:10] == ["", "Metrics: mean ± std (n − 1) over the row's seeds; bold: the best mean of the column at "
                               "that bits/token."]
    assert lines[10:13] == ["", "## Failed or interrupted jobs (1)", ""]
    assert [c.strip() for c in lines[13].strip("|").split("|")] == ["run", "status", "error"]
    assert [c.strip() for c in lines[15].strip("|").split("|")] == ["b", "FAILED", "boom"]
    assert lines[16] == "" and lines[17].startswith("PSNR/SSIM: per image on the 0–255 scale, mean over validation "
                                                   "images; LPIPS: AlexNet unless the run says otherwise; rFID:")
    assert "n/a (why): the metric could not be computed" in lines[17]
    assert lines[17].endswith("K, m, groups: the code as built (FSQ: K = ∏ levels); bpp is nominal.")
    assert lines[18:] == [""]


def test_seeds_average_to_mean_and_std_and_the_best_per_rate_is_bold():
    rows = [{"tags.signature": f"{m}{seed}-{bits}", "status": "FINISHED", "start_time": i, "params.quantizer.name": m,
             "params.seed": str(seed), "metrics.bits_per_token": bits, "metrics.psnr": psnr, "metrics.lpips": lp}
            for i, (m, seed, bits, psnr, lp) in enumerate([
                ("gq", 0, 16.0, 24.0, 0.10), ("gq", 1, 16.0, 26.0, 0.12), ("vq", 0, 16.0, 23.0, 0.09),
                ("fsq", 0, 15.97, 24.5, 0.2), ("gq", 0, 32.0, 28.0, 0.05), ("vq", 0, 32.0, 29.0, 0.07)])]
    table = report.summary_table(runs_frame(rows)).set_index(["method", "bits/token"])
    assert table.loc[("gq", "16"), "PSNR↑"] == "**25.00 ± 1.41**" and table.loc[("gq", "16"), "seeds"] == "2"
    assert table.loc[("fsq", "15.97"), "PSNR↑"] == "24.50"  # FSQ's 15.97 bits compete at 16: GQ's mean is higher
    assert table.loc[("vq", "16"), "LPIPS↓"] == "**0.0900**"  # lower is better
    assert table.loc[("vq", "32"), "PSNR↑"] == "**29.00**" and table.loc[("gq", "32"), "LPIPS↓"] == "**0.0500**"
    latex = report.summary_table(runs_frame(rows), bold="\\textbf{{{}}}").set_index(["method", "bits/token"])
    assert latex.loc[("gq", "16"), "PSNR↑"] == "\\textbf{25.00 ± 1.41}"


def test_caption_names_the_protocol_and_the_table_lists_each_runs_deviations_from_official_defaults():
    base = {"status": "FINISHED", "params.protocol.name": "gq_paper", "params.protocol.summary": "gq_paper: as the GQ authors",
            "params.quantizer.name": "bsq", "params.quantizer.temperature": "1.0", "params.quantizer.sphere": "token",
            "params.quantizer.entropy_group_size": "1", "params.quantizer.codebook_size": "65536",
            "params.quantizer.entropy_ramp_steps": "2000", "params.quantizer.lam_factor": "1e-05"}
    frame = runs_frame([dict(base, **{"tags.signature": "A", "start_time": 1, "metrics.psnr": 20.0}),
                        dict(base, **{"tags.signature": "B", "start_time": 2, "metrics.psnr": 21.0,
                                      "params.quantizer.temperature": "0.01", "params.quantizer.sphere": "group"})])
    table = report.comparison_table(frame, formatted=False)
    assert table["deviations"].tolist() == ["", "temperature=0.01; sphere=group"]  # sizes are never deviations
    vq = runs_frame([{"tags.signature": "V", "status": "FINISHED", "start_time": 3, "params.quantizer.name": "vq",
                      "params.quantizer.eps": "1e-05", "params.quantizer.legacy_loss": "False"}])
    assert report.comparison_table(vq, formatted=False)["deviations"].tolist() == ["legacy_loss=False"]  # 1e-05 = 1e-5
    assert table["protocol"].tolist() == ["gq_paper", "gq_paper"]
    assert "Protocol gq_paper: as the GQ authors." in report.render("exp", frame).split("\n")
    # what the runs trained and evaluated on, and how rFID was measured or why it was not
    logged = frame.assign(**{"tags.data": "bundled", "params.data.image_size": "32", "params.train.max_steps": "400",
                             "params.train.batch_size": "16", "tags.unavailable.rfid": "no Inception weights: offline"})
    lines = report.render("exp", logged).split("\n")
    assert "Data: bundled at 32 px; training: 400 steps at batch 16; evaluation: 16 validation images." in lines
    assert "rFID: not measured (no Inception weights)." in lines
    measured = logged.assign(**{"tags.protocol.rfid": "torch-fidelity 0.3 Inception; uint8", "tags.unavailable.rfid": None})
    assert "rFID: torch-fidelity 0.3 Inception; uint8." in report.render("exp", measured).split("\n")


def test_unavailable_metrics_show_as_na_with_their_label_and_measured_ones_as_numbers():
    frame = runs_frame([
        {"tags.signature": "A", "status": "FINISHED", "start_time": 1, "metrics.psnr": 25.0,
         "tags.unavailable.rfid": "no Inception weights: download failed (URLError ...); put ...",
         "tags.unavailable.lpips": "images too small: 16 px; LPIPS needs at least 32 px"},
        {"tags.signature": "B", "status": "FINISHED", "start_time": 2, "metrics.psnr": 26.0, "metrics.rfid": 3.25,
         "metrics.lpips": 0.125},
    ])
    table = report.comparison_table(frame).set_index("PSNR↑")
    assert table.loc["25.00", "rFID↓"] == "n/a (no Inception weights)"
    assert table.loc["25.00", "LPIPS↓"] == "n/a (images too small)"
    assert table.loc["26.00", "rFID↓"] == "3.25" and table.loc["26.00", "LPIPS↓"] == "0.1250"
    assert table.loc["25.00", "SSIM↑"] == "–"  # absent without a reason: a plain dash


def test_more_runs_than_one_mlflow_page_are_all_read(tmp_path):
    """MLflow returns at most 1,000 runs per search call: the report must follow the page tokens."""
    import time

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from gqbench.report.load import PAGE, load_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("big", artifact_location=str(tmp_path / "artifacts"))
    total, now = PAGE + 37, int(time.time() * 1000)
    for i in range(total):
        run_id = client.create_run(exp, start_time=now + i, tags={"signature": f"s{i}"}).info.run_id
        client.log_batch(run_id, metrics=[Metric("psnr", float(i), now, 0)], params=[Param("seed", str(i))],
                         tags=[RunTag("gqbench.role", "job")])
        client.set_terminated(run_id, "FINISHED")
    runs = load_runs("big", uri)
    assert len(runs) == total and sorted(runs["metrics.psnr"]) == [float(i) for i in range(total)]
    assert len(report.finished_runs(runs)) == total
    assert len(load_runs("big", uri, filter_string="metrics.psnr < 10")) == 10
    # the whole command on them: every run in the table and in the per-run CSV
    assert report.main(["--experiment", "big", "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--no-plots"]) == 0
    assert f"{total} finished job(s)." in (tmp_path / "out" / "big.md").read_text()
    assert len(pd.read_csv(tmp_path / "out" / "big.runs.csv")) == total


def test_rate_distortion_plots_are_written_for_the_measured_metrics_only(tmp_path):
    from gqbench.report.plots import rate_distortion_plots

    rows = [{"tags.signature": f"{m}-{b}-{s}", "status": "FINISHED", "start_time": i, "params.quantizer.name": m,
             "params.seed": str(s), "metrics.bits_per_token": b, "metrics.psnr": p, "metrics.effective_bits_per_token": b - 1}
            for i, (m, b, s, p) in enumerate([("gq", 8.0, 0, 20.0), ("gq", 16.0, 0, 22.0), ("gq", 16.0, 1, 22.4),
                                              ("vq", 8.0, 0, 19.0), ("vq", 16.0, 0, 21.0)])]
    files = rate_distortion_plots(runs_frame(rows), tmp_path, "exp")
    names = sorted(f.name for f in files)
    assert names == ["exp-rd-effective_bits.pdf", "exp-rd-effective_bits.png", "exp-rd-psnr.pdf", "exp-rd-psnr.png"]
    for f in files:  # real images: PNG / PDF signatures and more than a header
        assert f.read_bytes()[:4] in (b"\x89PNG", b"%PDF") and f.stat().st_size > 2000


def test_rate_distortion_lines_never_average_different_settings_and_can_use_bpp(tmp_path):
    from gqbench.report.plots import curve_points, rate_distortion_plots

    rows = [{"tags.signature": f"{m}-{b}-{beta}-{steps}", "status": "FINISHED", "start_time": i,
             "params.quantizer.name": m, "params.quantizer.commitment_weight": beta, "params.train.max_steps": steps,
             "metrics.bits_per_token": b, "metrics.bits_per_pixel": b / 16, "metrics.psnr": p}
            for i, (m, b, beta, steps, p) in enumerate([
                ("vq", 8.0, "0.25", "12", 20.0), ("vq", 8.0, "0.5", "12", 21.0), ("vq", 8.0, "0.25", "24", 22.0)])]
    lines = curve_points(runs_frame(rows))["line"].tolist()
    assert lines == ["vq / 12 steps", "vq / 12 steps (commitment_weight=0.5)", "vq / 24 steps"]  # three lines, not one mean
    files = rate_distortion_plots(runs_frame(rows), tmp_path, "exp", rate="bpp")
    assert sorted(f.name for f in files) == ["exp-rd-psnr.pdf", "exp-rd-psnr.png"]
    with pytest.raises(ValueError, match="rate axis 'pixels' is not known; choose from"):
        rate_distortion_plots(runs_frame(rows), tmp_path, "exp", rate="pixels")


def test_a_pipe_in_an_error_does_not_split_its_markdown_cell():
    frame = runs_frame([{"tags.signature": "A", "status": "FINISHED", "start_time": 1, "metrics.psnr": 25.0},
                        {"tags.signature": "B", "status": "FAILED", "start_time": 2, "tags.mlflow.runName": "b",
                         "tags.error": "TypeError: unsupported operand type(s) for |: 'int' and 'str'"}])
    lines = report.render("exp", frame).split("\n")
    failed = next(line for line in lines if line.startswith("| b "))
    assert failed.count(" | ") == 2 and "for \\|: 'int'" in failed  # run | status | error: three cells
    hole = next(line for line in lines if "failed: TypeError" in line)
    assert hole.count("\\|") == 1
