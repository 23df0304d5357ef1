"""The HTML report in a real headless browser (Debian's chromium): it loads without console errors, every image
decodes (the page's own check sets its title), and the screenshot shows a page, not a blank."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_report import runs_frame  # noqa: E402

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium on PATH (apt-get install chromium; .ci/run does)")


def headless(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           *args], capture_output=True, text=True, timeout=120)


def test_the_html_report_loads_every_image_and_renders_in_a_browser(tmp_path):
    import numpy as np
    from PIL import Image

    from gqbench.report.html import render_html
    from gqbench.report.plots import rate_distortion_plots

    rows = [{"tags.signature": f"{m}-{b}-{s}", "status": "FINISHED", "start_time": i, "params.quantizer.name": m,
             "params.seed": str(s), "metrics.bits_per_token": b, "metrics.psnr": p, "metrics.ssim": p / 40}
            for i, (m, b, s, p) in enumerate([("gq", 8.0, 0, 20.0), ("gq", 16.0, 0, 22.0), ("gq", 16.0, 1, 22.5),
                                              ("vq", 8.0, 0, 19.0), ("vq", 16.0, 0, 21.0)])]
    rows.append({"tags.signature": "bad", "status": "FAILED", "start_time": 9, "tags.error": "NaN loss at step 812"})
    frame = runs_frame(rows)
    plots = rate_distortion_plots(frame, tmp_path, "exp")
    page = tmp_path / "exp.html"
    page.write_text(render_html("exp", frame, plots))

    dom = headless("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "<title>gqbench report: ok (2 images)</title>" in dom.stdout  # PSNR and SSIM plots decoded
    assert "NaN loss at step 812" in dom.stdout
    (best,) = re.findall(r'<td id="(T_summary_row\d+_col\d+)"[^>]*>22.25 ± 0.35</td>', dom.stdout)
    assert re.search(rf"#{best}\b[^{{}}]*{{\s*font-weight: bold;", dom.stdout)  # the best PSNR at 16 bits is bold
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console

    shot = tmp_path / "shot.png"
    taken = headless(f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri())
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.005  # text and plot lines on a white page


def test_a_broken_image_is_named_by_the_page_check(tmp_path):
    page = tmp_path / "broken.html"
    from gqbench.report.html import SELF_CHECK

    page.write_text(f"<html><head><title>x</title><script>{SELF_CHECK}</script></head><body>"
                    "<img alt='missing-plot' src='nowhere.png'></body></html>")
    dom = headless("--dump-dom", page.as_uri())
    assert "<title>gqbench report: broken images missing-plot</title>" in dom.stdout
    page.write_text("<html><body><script>undefinedFunction();</script></body></html>")  # the console check sees errors
    assert any("Uncaught ReferenceError" in line for line in headless("--dump-dom", page.as_uri()).stderr.splitlines())


def test_the_committed_report_page_opens_with_every_figure_in_a_browser(tmp_path):
    committed = Path(__file__).resolve().parents[1] / "reports" / "codebook_sizes"
    page = committed / "codebook_sizes.html"
    figures = sorted(committed.glob("codebook_sizes-*.png"))
    assert page.exists() and len(figures) >= 8, "reports/codebook_sizes/ lost its page or figures"
    dom = headless("--dump-dom", page.as_uri())
    assert f"<title>gqbench report: ok ({len(figures)} images)</title>" in dom.stdout
    assert "Paired differences against gq" in dom.stdout and "How this compares with the paper" in dom.stdout
    assert [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line] == []
