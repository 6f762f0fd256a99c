"""`lsmerge.evaluate.intervals`: the paired bootstrap over windows against a hand computation and
its coverage on synthetic losses; identical rows are level, clearly separated rows better / worse;
the summary over domains on hand-made numbers; the errors."""

from __future__ import annotations

import math

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.intervals import (
    WindowScores,
    domain_seed,
    paired_difference,
    resample_indices,
    summary_difference,
    summary_interval,
)


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), by hand."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    return v[lo] + (pos - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def test_paired_bootstrap_matches_a_hand_computation():
    tokens = [4, 6, 5]
    row = WindowScores.of([8.0, 9.0, 12.0], tokens)
    ref = WindowScores.of([6.0, 10.0, 10.0], tokens)
    got = paired_difference(row, ref, resamples=7, seed=3, confidence=0.8)
    idx = resample_indices(3, 7, seed=3).tolist()
    diffs = []
    for sample in idx:
        t = sum(tokens[i] for i in sample)
        diffs.append(sum([8.0, 9.0, 12.0][i] for i in sample) / t - sum([6.0, 10.0, 10.0][i] for i in sample) / t)
    assert got.estimate == pytest.approx(29 / 15 - 26 / 15)
    assert got.low == pytest.approx(_percentile(diffs, 0.1)) and got.high == pytest.approx(_percentile(diffs, 0.9))
    assert got.confidence == 0.8
    # seeded: the same seed gives the same interval, another seed another one
    assert paired_difference(row, ref, resamples=7, seed=3, confidence=0.8) == got
    assert paired_difference(row, ref, resamples=7, seed=4, confidence=0.8) != got


def test_identical_pair_is_a_zero_width_interval_at_zero_and_level():
    g = torch.Generator().manual_seed(0)
    scores = WindowScores.of(torch.rand(20, generator=g) * 50, torch.full((20,), 16))
    got = paired_difference(scores, scores, resamples=500)
    assert (got.estimate, got.low, got.high) == (0.0, 0.0, 0.0) and got.verdict() == "level"


def test_clear_separation_is_better_or_worse_and_noise_is_level():
    g = torch.Generator().manual_seed(1)
    tokens = torch.full((30,), 100.0)
    ref = WindowScores.of(tokens * (3.0 + 0.3 * torch.randn(30, generator=g)), tokens)
    lower = WindowScores.of(ref.nll_sum - tokens * (0.2 + 0.01 * torch.randn(30, generator=g)), tokens)
    assert paired_difference(lower, ref).verdict() == "better"
    assert paired_difference(ref, lower).verdict() == "worse"
    # an unrelated shuffle of the same windows has the same mean but large paired noise: level
    shuffled = WindowScores.of(ref.nll_sum[torch.randperm(30, generator=g)], tokens)
    assert paired_difference(shuffled, ref).verdict() == "level"


def test_coverage_of_the_95_percent_interval_on_synthetic_windows():
    """Windows with a known per-token difference delta: about 95 % of intervals contain it."""
    g = torch.Generator().manual_seed(2)
    delta, trials, hits = 0.05, 200, 0
    for trial in range(trials):
        tokens = torch.randint(80, 120, (40,), generator=g).double()
        common = 3.0 + 0.5 * torch.randn(40, generator=g)  # what both models find hard
        ref = WindowScores.of(tokens * common, tokens)
        row = WindowScores.of(tokens * (common + delta + 0.1 * torch.randn(40, generator=g)), tokens)
        interval = paired_difference(row, ref, resamples=400, seed=trial)
        hits += interval.low <= delta <= interval.high
    assert 0.88 <= hits / trials <= 0.99, hits


def test_summary_over_domains_on_hand_made_numbers():
    tokens = torch.full((10,), 50.0)
    experts = {d: WindowScores.of(tokens * 2.0, tokens) for d in ("shakespeare", "python", "prose")}
    # every window of the row differs from its expert by log(r_d) nats per token: no resampling noise
    ratios = {"shakespeare": 1.2, "python": 1.0, "prose": 0.95}
    row = {d: WindowScores.of(tokens * (2.0 + math.log(r)), tokens) for d, r in ratios.items()}
    got = summary_interval(row, experts, resamples=200)
    assert got.estimate == pytest.approx((1.2 + 1.0 + 0.95) / 3)
    assert got.low == pytest.approx(got.estimate) and got.high == pytest.approx(got.estimate)
    assert summary_interval(experts, experts, resamples=50).estimate == pytest.approx(1.0)
    # with noise: replicates by hand from the per-domain seeds, two domains
    g = torch.Generator().manual_seed(5)
    two = {d: experts[d] for d in ("shakespeare", "python")}
    noisy = {d: WindowScores.of(tokens * (2.0 + 0.2 * torch.randn(10, generator=g)), tokens) for d in two}
    got = summary_interval(noisy, two, resamples=9, seed=7, confidence=0.5)
    reps = [0.0] * 9
    for d in two:
        for b, sample in enumerate(resample_indices(10, 9, domain_seed(7, d)).tolist()):
            diff = sum(noisy[d].nll_sum[i].item() - two[d].nll_sum[i].item() for i in sample) / (50.0 * 10)
            reps[b] += math.exp(diff) / 2
    assert got.low == pytest.approx(_percentile(reps, 0.25)) and got.high == pytest.approx(_percentile(reps, 0.75))
    # a row against itself: zero-width difference, level; a row closer to every specialist: better
    assert summary_difference(noisy, noisy, two, resamples=100).verdict() == "level"
    assert summary_difference(two, row | {"python": row["shakespeare"]}, two, resamples=100).verdict() == "better"


def test_errors():
    empty = WindowScores.of([], [])
    with pytest.raises(LsMergeError, match="at least one scored window, got 0"):
        paired_difference(empty, empty)
    a, b = WindowScores.of([1.0, 2.0], [3, 3]), WindowScores.of([1.0, 2.0, 3.0], [3, 3, 3])
    with pytest.raises(LsMergeError, match="same windows"):
        paired_difference(a, b)
    with pytest.raises(LsMergeError, match="resamples=0"):
        paired_difference(a, a, resamples=0)
    with pytest.raises(LsMergeError, match="confidence=1.5"):
        paired_difference(a, a, confidence=1.5)
    with pytest.raises(LsMergeError, match="no scores on domain"):
        summary_interval({"x": a}, {"x": a, "y": a})
    with pytest.raises(LsMergeError, match="at least one domain"):
        summary_interval({}, {})
