"""The Bjøntegaard delta between two rate–distortion curves, as video coding reports it.

G. Bjøntegaard, "Calculation of average PSNR differences between RD-curves", ITU-T VCEG-M33 (2001): fit each
curve with a cubic polynomial in the log of the rate, integrate over the rates both curves cover, divide by
that interval.

    BD-PSNR = 1/(r_hi − r_lo) ∫ (P_test(r) − P_ref(r)) dr,         r = ln(rate), P: cubic fit of PSNR over r
    BD-rate = exp(1/(P_hi − P_lo) ∫ (R_test(p) − R_ref(p)) dp) − 1,  R: cubic fit of r over PSNR

BD-PSNR is in dB (positive: the test curve is better); BD-rate is a fraction (−0.1: the test curve needs 10 %
fewer bits for the same PSNR). Each curve needs at least 4 points for the cubic, as in VCEG-M33; with 2 or 3
points the fit's degree drops to points − 1 (piecewise-linear for 2 points: a coarser estimate, flagged by the
caller). Rates are bits per token (or bpp: the log makes the unit irrelevant).
"""
from __future__ import annotations

import numpy as np


def _fit_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    degree = min(3, len(x) - 1)
    poly = np.polyint(np.polyfit(x, y, degree))
    return float(np.polyval(poly, hi) - np.polyval(poly, lo))


def _checked(rate, quality, name: str) -> tuple[np.ndarray, np.ndarray]:
    rate, quality = np.asarray(rate, dtype=float), np.asarray(quality, dtype=float)
    if rate.shape != quality.shape or rate.ndim != 1 or len(rate) < 2:
        raise ValueError(f"{name}: rates and PSNRs must be two equal 1-D lists of at least 2 points, got shapes "
                         f"{rate.shape} and {quality.shape}")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(quality)) and np.all(rate > 0)):
        raise ValueError(f"{name}: rates must be > 0 and every value finite (rates {rate.tolist()}, PSNRs "
                         f"{quality.tolist()})")
    if len(np.unique(rate)) != len(rate):
        raise ValueError(f"{name}: two points share a rate ({rate.tolist()}); average seeds first")
    return np.log(rate), quality


def _mean_gap(x_ref: np.ndarray, y_ref: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, axis: str) -> float:
    """Mean of (fit_test − fit_ref) over the x range both curves cover."""
    lo, hi = max(x_ref.min(), x_test.min()), min(x_ref.max(), x_test.max())
    if hi <= lo:
        raise ValueError(f"the two curves cover no common {axis} range: the Bjøntegaard delta is undefined")
    return (_fit_integral(x_test, y_test, lo, hi) - _fit_integral(x_ref, y_ref, lo, hi)) / (hi - lo)


def bd_psnr(ref_rate, ref_psnr, test_rate, test_psnr) -> float:
    """Mean PSNR gain (dB) of the test curve over the reference across the rates both cover."""
    r1, p1 = _checked(ref_rate, ref_psnr, "reference curve")
    r2, p2 = _checked(test_rate, test_psnr, "test curve")
    return _mean_gap(r1, p1, r2, p2, "rate")


def bd_rate(ref_rate, ref_psnr, test_rate, test_psnr) -> float:
    """Mean relative rate change of the test curve at equal PSNR, over the PSNRs both reach (−0.1 = 10 % fewer bits)."""
    r1, p1 = _checked(ref_rate, ref_psnr, "reference curve")
    r2, p2 = _checked(test_rate, test_psnr, "test curve")
    for name, r, p in (("reference", r1, p1), ("test", r2, p2)):
        if np.any(np.diff(p[np.argsort(r)]) <= 0):  # rate as a function of PSNR only exists on a rising curve
            raise ValueError(f"the {name} curve's PSNR does not rise with the rate: BD-rate needs monotone curves")
    return float(np.exp(_mean_gap(p1, r1, p2, r2, "PSNR")) - 1.0)
