"""`lsmerge.merge.weight.sce`: select by variance, weights by energy, erase minority signs, by hand."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.sce import sce, variance_mask


def hand_sce(base: list[float], xs: list[list[float]], topk: float) -> list[float]:
    n, m = len(base), len(xs)
    deltas = [[x[j] - base[j] for j in range(n)] for x in xs]
    if topk < 1:
        var = []
        for j in range(n):
            mean = sum(d[j] for d in deltas) / m
            var.append(sum((d[j] - mean) ** 2 for d in deltas) / m)
        k = int(sum(v != 0 for v in var) * topk)
        chosen = set(sorted(range(n), key=lambda j: -var[j])[:k])
        deltas = [[d[j] if j in chosen else 0.0 for j in range(n)] for d in deltas]
    energy = [sum(v * v for v in d) / n for d in deltas]
    w = [e / sum(energy) for e in energy] if abs(sum(energy)) >= 1e-6 else [1 / m] * m
    out = []
    for j in range(n):
        up = sum(d[j] for d in deltas) >= 0
        agree = [(d[j], wi) for d, wi in zip(deltas, w) if d[j] != 0 and (d[j] > 0) == up]
        out.append(base[j] + sum(v * wi for v, wi in agree) / max(sum(wi for _, wi in agree), 1e-6))
    return out


BASE = [0.1, -0.2, 0.3, 0.0, 0.5, -0.4]
XS = [[0.4, -0.1, 0.3, 0.2, 0.1, -0.3],
      [0.0, -0.5, 0.6, -0.1, 0.55, -0.45],
      [0.3, 0.2, 0.0, 0.05, 0.9, -0.4]]


@pytest.mark.parametrize("topk", [1.0, 0.5, 0.34])
def test_sce_by_hand(topk):
    got = sce(torch.tensor(BASE), [torch.tensor(x) for x in XS], topk)
    assert got.tolist() == pytest.approx(hand_sce(BASE, XS, topk), abs=1e-6)


def test_select_keeps_the_largest_variances():
    deltas = torch.tensor([[1.0, 0.0, 2.0, 0.5], [-1.0, 0.0, 2.0, 0.0]])  # variances 1, 0, 0, 0.0625
    assert variance_mask(deltas, 0.5).tolist() == [1.0, 0.0, 0.0, 0.0]  # k = floor(2 nonzero * 0.5) = 1
    assert variance_mask(deltas, 0.0).tolist() == [0.0] * 4
    assert variance_mask(deltas, 1.0).tolist() == [1.0] * 4
    # ties at the cut: exactly k chosen among the tied largest
    tied = torch.tensor([[1.0, 1.0, 1.0, 0.1], [-1.0, -1.0, -1.0, 0.0]])
    assert variance_mask(tied, 0.5).sum() == 2 and variance_mask(tied, 0.5)[3] == 0


def test_no_change_and_zero_selection_return_the_base():
    base = torch.tensor(BASE)
    assert torch.equal(sce(base, [base.clone(), base.clone()]), base)  # weights fall back to 1/N, all deltas 0
    assert torch.equal(sce(base, [torch.tensor(x) for x in XS], 0.0), base)


@pytest.mark.parametrize("bad", [1.5, -0.1, "all"])
def test_select_topk_out_of_range_is_refused(bad):
    with pytest.raises(LsMergeError, match="select_topk"):
        get_method("sce").check_params({"select_topk": bad}, "tensor t")


def test_population_variance_equals_torch_var():
    """The chunked float64 two-pass variance gives torch.var's float32 values (mergekit's call)."""
    from lsmerge.merge.weight import sce as sce_module

    g = torch.Generator().manual_seed(5)
    for n in (2, 3, 5):
        deltas = torch.randn(n, 300, 70, generator=g) * torch.logspace(-4, 1, 70)
        deltas[:, :10] = 0.25  # constant entries: variance exactly 0
        expected = torch.var(deltas, dim=0, unbiased=False)
        old = sce_module.CHUNK
        try:
            sce_module.CHUNK = 4096  # several chunks, the last one partial
            got = sce_module.population_variance(deltas)
        finally:
            sce_module.CHUNK = old
        assert torch.equal(got, expected)
        assert torch.equal(got[:10], torch.zeros(10, 70))
