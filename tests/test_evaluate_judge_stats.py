"""`lsmerge.evaluate.judge.stats`: the half-tie score and its Wilson interval, by hand."""

from __future__ import annotations

import pytest

from lsmerge.evaluate.judge.stats import summarize, wilson_interval


def test_wilson_interval_by_hand():
    # 6 wins, 2 ties, 2 losses: s = (6 + 1) / 10 = 0.7, z = 1.959964 (95%)
    # centre = (0.7 + z^2/20) / (1 + z^2/10) = 0.892073 / 1.384146 = 0.644493
    # half = z / 1.384146 * sqrt(0.021 + z^2/400) = 1.416009 * 0.174939 = 0.247715
    summary = summarize(["A"] * 6 + ["tie"] * 2 + ["B"] * 2)
    assert (summary["wins"], summary["ties"], summary["losses"], summary["pairs"]) == (6, 2, 2, 10)
    assert summary["score"] == pytest.approx(0.7)
    assert summary["win_rate"] == pytest.approx(0.6) and summary["loss_rate"] == pytest.approx(0.2)
    assert summary["ci_low"] == pytest.approx(0.644493 - 0.247715, abs=2e-6)
    assert summary["ci_high"] == pytest.approx(0.644493 + 0.247715, abs=2e-6)
    # s = 0.5, n = 4, 50%: z = 0.674490, centre = 0.5, half = 0.674490 / 1.113734 * sqrt(0.0625 + 0.454936/64)
    low, high = wilson_interval(0.5, 4, confidence=0.5)
    assert (low, high) == pytest.approx((0.5 - 0.159782, 0.5 + 0.159782), abs=2e-6)
    assert wilson_interval(1.0, 5)[1] == 1.0 and wilson_interval(0.0, 5)[0] == 0.0
