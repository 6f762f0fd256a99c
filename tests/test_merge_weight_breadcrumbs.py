"""`lsmerge.merge.weight.breadcrumbs`: Model Breadcrumbs' band of magnitudes, against hand computations."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.breadcrumbs import band_counts, breadcrumbs, breadcrumbs_prune_, outlier_band_mask


def hand_band(values: list[float], keep: int, drop_bottom: int) -> list[float]:
    """Keep the entries at ascending |v| ranks [drop_bottom, drop_bottom + keep), stable by index."""
    order = sorted(range(len(values)), key=lambda j: (abs(values[j]), j))
    kept = set(order[drop_bottom: drop_bottom + keep])
    return [v if j in kept else 0.0 for j, v in enumerate(values)]


def test_band_counts_follow_mergekit():
    assert band_counts(10, 0.5, 0.2) == (5, 3)  # drop 3 smallest, keep 5, drop 2 largest
    assert band_counts(10, 0.9, 0.3) == (9, 0)  # the outlier cut shrinks to keep 9
    assert band_counts(7, 0.1, 0.0) == (0, 7)


def test_prune_keeps_the_middle_band():
    values = [0.5, -0.05, 0.9, -0.3, 0.01, 0.7, -0.2, 0.4, -0.6, 0.1]
    got = breadcrumbs_prune_(torch.tensor(values), 0.5, 0.2)
    assert got.tolist() == pytest.approx(hand_band(values, 5, 3))
    # the largest two (0.9, 0.7) and the three smallest (0.01, -0.05, 0.1) are gone
    assert got[2] == 0 and got[5] == 0 and got[4] == 0 and got[1] == 0 and got[9] == 0 and got[0] == 0.5
    got = breadcrumbs_prune_(torch.tensor(values), 0.9, 0.3)
    assert got.tolist() == pytest.approx(hand_band(values, 9, 0))  # only 0.9 dropped


def test_prune_l1_rescale_restores_the_l1_norm():
    values = torch.randn(200, generator=torch.Generator().manual_seed(0))
    got = breadcrumbs_prune_(values.clone(), 0.3, 0.05, rescale="l1")
    assert float(got.abs().sum()) == pytest.approx(float(values.abs().sum()), rel=1e-5)
    plain = torch.tensor(hand_band(values.tolist(), 60, 130))
    kept = plain != 0
    assert int(kept.sum()) == 60 and torch.equal(got != 0, kept)
    assert torch.allclose(got[kept] / plain[kept], torch.full((60,), float(values.abs().sum() / plain.abs().sum())))


def test_density_one_and_empty_band():
    x = torch.randn(5, 4)
    assert torch.equal(breadcrumbs_prune_(x.clone(), 1.0, 0.1), x)
    assert torch.equal(breadcrumbs_prune_(x.clone(), 0.01, 0.1), torch.zeros(5, 4))  # floor(0.2) = 0 kept


def test_ties_at_the_cuts():
    values = [1.0, -1.0, 1.0, 2.0, -2.0, 2.0, 3.0, 3.0, -3.0, 3.0]
    m = torch.tensor(values).abs()
    # keep 4 after dropping 4: ascending stable order puts indices 4, 5 (the 2s) and 6, 7 (the 3s) there
    assert outlier_band_mask(m, 4, 4, "index").nonzero().squeeze(1).tolist() == [4, 5, 6, 7]
    assert breadcrumbs_prune_(torch.tensor(values), 0.4, 0.2).tolist() == hand_band(values, 4, 4)
    mk = outlier_band_mask(m, 4, 4, "mergekit")
    expected = torch.zeros(10, dtype=torch.bool)
    expected[torch.sort(m).indices[4:8]] = True
    assert torch.equal(mk, expected) and int(mk.sum()) == 4
    # ties among zeros only change nothing: both rules give the same values
    z = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, -0.7, 0.9, 1.1])
    a = breadcrumbs_prune_(z.clone(), 0.5, 0.25, tie_break="index")
    b = breadcrumbs_prune_(z.clone(), 0.5, 0.25, tie_break="mergekit")
    assert torch.equal(a, b) and a.tolist() == pytest.approx([0, 0, 0, 0, 0.5, -0.7, 0, 0])


def test_merge_linear_and_ties_by_hand():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 8, generator=g)
    xs = [base + torch.randn(3, 8, generator=g) for _ in range(2)]
    w, d, gam, lam = [0.7, 0.5], [0.5, 0.75], [0.1, 0.0], 0.9
    pruned = [hand_band((x - base).reshape(-1).tolist(), int(di * 24), max(0, 24 - int(di * 24) - int(gi * 24)))
              for x, di, gi in zip(xs, d, gam)]
    flat_base = base.reshape(-1).tolist()
    lin = [b + lam * (w[0] * p0 + w[1] * p1) for b, p0, p1 in zip(flat_base, *pruned)]
    got = breadcrumbs(base, list(xs), w, d, gam, lam)
    assert got.reshape(-1).tolist() == pytest.approx(lin, abs=1e-6)
    ties = []
    for b, p0, p1 in zip(flat_base, *pruned):
        e0, e1 = w[0] * p0, w[1] * p1
        sign = 1.0 if e0 + e1 >= 0 else -1.0
        agree = [(e, wi) for e, wi in ((e0, w[0]), (e1, w[1])) if e != 0 and (e > 0) == (sign > 0)]
        num, den = sum(e for e, _ in agree), sum(wi for _, wi in agree) or 1.0
        ties.append(b + lam * num / den)
    got = breadcrumbs(base, list(xs), w, d, gam, lam, normalize=True, consensus=True)
    assert got.reshape(-1).tolist() == pytest.approx(ties, abs=1e-6)


@pytest.mark.parametrize("bad", [{"gamma": [1.5, 0.0]}, {"gamma": [-0.1, 0.0]}, {"density": [0.0, 0.5]}, {"rescale": "l2"}])
def test_out_of_range_parameters_are_refused(bad):
    m = get_method("breadcrumbs_ties")
    values = {"weight": [1.0, 1.0], "density": [0.5, 0.5], "gamma": [0.01, 0.01], "lambda": 1.0, "normalize": False,
              "rescale": "none", "tie_break": "index", **bad}
    with pytest.raises(LsMergeError, match=next(iter(bad))):
        m.check_params(values, "tensor t")


@pytest.mark.parametrize("density, gamma", [(0.5, 0.01), (0.2, 0.1)])
def test_large_mostly_zero_task_vector_matches_a_sorted_reference(density, gamma):
    """A task vector of 300k entries, two thirds unchanged (zeros) and bf16-like repeated values:
    the sample-bracket selection (no sort) keeps what a stable sort by (|delta|, index) keeps."""
    g = torch.Generator().manual_seed(4)
    delta = torch.randn(300_000, generator=g).to(torch.bfloat16).float()
    delta[torch.rand(300_000, generator=g) < 2 / 3] = 0
    keep, drop_bottom = band_counts(delta.numel(), density, gamma)
    order = torch.sort(delta.abs(), stable=True).indices
    expected = torch.zeros_like(delta)
    expected[order[drop_bottom: drop_bottom + keep]] = delta[order[drop_bottom: drop_bottom + keep]]
    assert torch.equal(breadcrumbs_prune_(delta.clone(), density, gamma), expected)
    assert torch.equal(breadcrumbs_prune_(torch.zeros(300_000), density, gamma), torch.zeros(300_000))
