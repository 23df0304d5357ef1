"""Bjøntegaard deltas on curves whose answer is known in closed form."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gqbench.report.bjontegaard import bd_psnr, bd_rate

RATES = [8.0, 16.0, 32.0, 64.0]


def psnr_of(rate):  # a smooth, concave RD curve: cubic in log-rate, so the fit is exact
    r = np.log(rate)
    return 20.0 + 3.0 * r - 0.1 * r**2


def test_a_curve_shifted_up_by_one_db_has_bd_psnr_one_and_a_negative_bd_rate():
    ref = [psnr_of(r) for r in RATES]
    assert bd_psnr(RATES, ref, RATES, [p + 1.0 for p in ref]) == pytest.approx(1.0, abs=1e-9)
    assert bd_psnr(RATES, [p + 1.0 for p in ref], RATES, ref) == pytest.approx(-1.0, abs=1e-9)
    assert bd_rate(RATES, ref, RATES, [p + 1.0 for p in ref]) < 0


def test_the_same_psnr_at_ninety_percent_of_the_rate_is_bd_rate_minus_ten_percent():
    # test curve: P_test(r) = P_ref(r / 0.9), i.e. every PSNR reached with 0.9x the bits
    test_rates = [0.9 * r for r in RATES]
    ref = [psnr_of(r) for r in RATES]
    assert bd_rate(RATES, ref, test_rates, ref) == pytest.approx(-0.1, abs=1e-9)
    assert bd_rate(RATES, ref, RATES, ref) == pytest.approx(0.0, abs=1e-12)


def test_bd_psnr_integrates_over_the_overlapping_rates_only():
    # linear in log-rate: ref = r, test = r + 2 on a shifted range; overlap [ln 16, ln 64]
    ref_rates, test_rates = [8.0, 16.0, 32.0, 64.0], [16.0, 32.0, 64.0, 128.0]
    gap = bd_psnr(ref_rates, np.log(ref_rates), test_rates, np.log(test_rates) + 2.0)
    assert gap == pytest.approx(2.0, abs=1e-9)
    # a gap that grows with rate, 0 at 16 and ln 4 at 64: mean over [ln 16, ln 64] is ln 4 / 2
    growing = bd_psnr(ref_rates, np.zeros(4), test_rates, np.log(test_rates) - math.log(16))
    assert growing == pytest.approx(math.log(4) / 2, abs=1e-9)


def test_bd_rate_refuses_a_curve_whose_psnr_does_not_rise_with_the_rate():
    with pytest.raises(ValueError, match="reference curve's PSNR does not rise with the rate"):
        bd_rate(RATES, [21.2, 21.1, 20.8, 20.0], RATES, [19.0, 19.5, 20.0, 21.0])
    assert bd_psnr(RATES, [21.2, 21.1, 20.8, 20.0], RATES, [19.0, 19.5, 20.0, 21.0]) < 0  # BD-PSNR stays defined


@pytest.mark.parametrize("args, message", [
    (([8, 16], [20, 21], [32, 64], [25, 26]), "no common rate range"),
    (([8, 16, 16], [20, 21, 22], [8, 16], [20, 21]), "share a rate"),
    (([8, 0], [20, 21], [8, 16], [20, 21]), "rates must be > 0"),
    (([8], [20], [8, 16], [20, 21]), "at least 2 points"),
])
def test_bad_curves_are_refused_with_the_reason(args, message):
    with pytest.raises(ValueError, match=message):
        bd_psnr(*args)


def test_the_report_lists_bd_against_gq_per_method_when_there_is_a_rate_axis():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import runs_frame

    from gqbench import report
    from gqbench.report.tables import bjontegaard_table

    rows = [{"tags.signature": f"{m}-{b}-{s}", "status": "FINISHED", "start_time": i, "params.quantizer.name": m,
             "params.seed": str(s), "metrics.bits_per_token": b, "metrics.psnr": p}
            for i, (m, b, s, p) in enumerate([("gq", 8.0, 0, 20.0), ("gq", 16.0, 0, 22.0), ("gq", 32.0, 0, 24.0),
                                              ("vq", 8.0, 0, 19.0), ("vq", 8.0, 1, 19.5), ("vq", 16.0, 0, 21.25),
                                              ("vq", 32.0, 0, 23.25), ("fsq", 16.0, 0, 30.0)])]
    table = bjontegaard_table(runs_frame(rows))
    assert table["method"].tolist() == ["vq"]  # fsq has one rate: no curve
    assert table.loc[0, "BD-PSNR (dB)"] == "-0.75" and table.loc[0, "rates"] == "8, 16, 32"  # seed means: 19.25 at 8
    assert table.loc[0, "BD-rate"].endswith("%") and float(table.loc[0, "BD-rate"].split()[0]) > 0
    assert "## Rate–distortion: Bjøntegaard deltas" in report.render("x", runs_frame(rows))
    assert bjontegaard_table(runs_frame(rows[3:])).empty  # no GQ curve: no reference
