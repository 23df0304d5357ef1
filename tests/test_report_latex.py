"""The report's LaTeX compiles as a paper would include it (pdflatex, booktabs), with the cells a report can hold:
bold best values, ± and arrows, "n/a (why)", a failed job's error with TeX's special characters, the paired and
Bjøntegaard tables of the committed report."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_report import runs_frame  # noqa: E402

from gqbench import report  # noqa: E402

PDFLATEX = shutil.which("pdflatex")
pytestmark = pytest.mark.skipif(PDFLATEX is None, reason="no pdflatex on PATH (apt-get install texlive-latex-base "
                                                         "texlive-latex-recommended; .ci/run does)")
COMMITTED = Path(__file__).resolve().parents[1] / "reports" / "codebook_sizes" / "codebook_sizes.tex"
DOCUMENT = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\begin{document}
\input{%s}
\end{document}
"""


def compile_tables(tex: Path) -> str:
    """pdflatex on a minimal paper that \\input's `tex`; returns its log (fails the test on any LaTeX error)."""
    (tex.parent / "paper.tex").write_text(DOCUMENT % tex.name)
    done = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tex.parent,
                          capture_output=True, text=True, timeout=120)
    log = (tex.parent / "paper.log").read_text(errors="replace")
    assert done.returncode == 0 and (tex.parent / "paper.pdf").stat().st_size > 0, log[-3000:]
    return log


def test_a_report_with_bold_na_and_a_failed_job_compiles(tmp_path):
    error = "ValueError: level_count=100% & #3 ~ {x^2} <= $5 \\ too_many"
    frame = runs_frame([
        {"tags.signature": "a", "status": "FINISHED", "start_time": 1, "metrics.psnr": 25.0, "metrics.lpips": 0.1,
         "params.protocol.name": "gq_paper", "params.protocol.summary": "gq_paper: as the GQ authors' code_base"},
        {"tags.signature": "b", "status": "FINISHED", "start_time": 2, "metrics.psnr": 24.0, "params.seed": "1",
         "params.quantizer.name": "token_bridge", "tags.unavailable.lpips": "no LPIPS-alex weights: offline"},
        {"tags.signature": "c", "status": "FAILED", "start_time": 3, "tags.error": error,
         "params.quantizer.name": "fsq"},
    ])
    tex = tmp_path / "tables.tex"
    tex.write_text(report.render_latex("exp_1", frame))
    text = tex.read_text()
    assert "\\textbf{25.00}" in text and "PSNR$\\uparrow$" in text and "LPIPS$\\downarrow$" in text
    assert "n/a (no LPIPS-alex weights)" in text and "token\\_bridge" in text and "exp\\_1" in text
    assert "level\\_count=100\\% \\& \\#3" in text  # the failed job's error, escaped, in its row
    compile_tables(tex)


def test_the_committed_report_tables_compile(tmp_path):
    tex = tmp_path / "codebook_sizes.tex"
    shutil.copy(COMMITTED, tex)
    assert tex.read_text().count("\\begin{table}") == 3  # summary, paired differences, Bjøntegaard deltas
    log = compile_tables(tex)
    assert "Missing character" not in log  # every Unicode sign became LaTeX
