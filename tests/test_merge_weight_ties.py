"""`lsmerge.merge.weight.ties`: trimming to a density (both tie breaks, exact k-th largest), sign election, disjoint mean."""

from __future__ import annotations

import pytest
import torch

from lsmerge.merge.weight import elect_sign, ties_merge, trim_to_density
from lsmerge.merge.weight.ties import disjoint_mean


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_trim_keeps_what_an_argsort_keeps_ties_and_signs_included(dtype):
    """The trim equals mergekit's magnitude sparsification bit for bit: |x| ranked in float32
    by `argsort(descending=True)[:k]` (an unstable sort: among entries that tie at the cut it
    keeps the kernel's choice, not the lowest indices), then `x * mask` (dropped -> +-0)."""
    g = torch.Generator().manual_seed(0)
    x = ((torch.randn(200_000, generator=g) * 50).round() / 1000).to(dtype)  # many ties
    k = int(0.37 * x.numel())
    v = x.abs().float().kthvalue(x.numel() - k + 1).values
    assert int((x.abs().float() == v).sum()) > 1 and int((x.abs().float() > v).sum()) < k  # a tie at the cut
    mask = torch.zeros_like(x)
    mask[torch.argsort(x.abs().float(), descending=True)[:k]] = 1
    want = x * mask
    got = trim_to_density(x, 0.37, tie_break="mergekit")
    assert torch.equal(got, want) and torch.equal(torch.signbit(got), torch.signbit(want))
    assert torch.equal(x, ((torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 50).round() / 1000).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trim_index_tie_break_keeps_the_lowest_indices_among_ties(dtype):
    """Default tie_break "index": everything above the cut value, then the tied entries of
    lowest flat index until exactly k are kept; dropped entries are x * 0 (signs kept)."""
    g = torch.Generator().manual_seed(3)
    x = ((torch.randn(3, 70_001, generator=g) * 50).round() / 1000).to(dtype)
    for density in (0.01, 0.37, 0.8):
        k = int(density * x.numel())
        m = x.abs().float().flatten()
        want_mask = torch.zeros(x.numel(), dtype=torch.bool)
        order = sorted(range(x.numel()), key=lambda i: (-float(m[i]), i))  # stable: value, then index
        want_mask[torch.tensor(order[:k])] = True
        want = x * want_mask.view_as(x).to(dtype)
        got = trim_to_density(x, density)
        assert int((got != 0).sum()) <= k and torch.equal(got, want), density
        assert torch.equal(torch.signbit(got), torch.signbit(want))
        assert torch.equal(got, trim_to_density(x, density, tie_break="index"))
    with pytest.raises(ValueError, match="tie_break"):
        trim_to_density(x, 0.37, tie_break="random")


def test_kth_largest_is_exact_without_a_sort():
    from lsmerge.merge.weight.ties import SAMPLE, kth_largest

    n = 5 * SAMPLE + 123
    g = torch.Generator().manual_seed(1)
    cases = {
        "normal": torch.randn(n, generator=g).abs(),
        "ascending": torch.arange(n, dtype=torch.float32),
        "periodic": (torch.arange(n) % 97).float(),  # strided sample sees a biased subset
        "constant": torch.full((n,), 0.25),
        "mostly zero": torch.randn(n, generator=g).abs() * (torch.rand(n, generator=g) < 0.01),
    }
    for name, values in cases.items():
        for k in (1, 7, n // 3, n // 2, n - 1, n):
            assert kth_largest(values, k) == float(values.kthvalue(n - k + 1).values), (name, k)


@pytest.mark.parametrize("kind", ["continuous", "sparse"])
def test_trim_without_ties_at_the_cut_keeps_what_an_argsort_keeps(kind):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300_000, generator=g)
    if kind == "sparse":
        x = x * (torch.rand(x.shape, generator=g) < 0.2)  # the cut falls among zeros
    for density in (0.05, 0.5, 0.9):
        k = int(density * x.numel())
        mask = torch.zeros_like(x)
        mask[torch.argsort(x.abs(), descending=True)[:k]] = 1
        for tie_break in ("index", "mergekit"):
            got = trim_to_density(x, density, tie_break=tie_break)
            assert torch.equal(got, x * mask) and torch.equal(torch.signbit(got), torch.signbit(x * mask))


def test_ties_trim_elect_disjoint_mean_by_hand():
    base = torch.zeros(4)
    # task vectors:  model 0: [ 3, -1, 0.1,  2 ]   model 1: [ -1, -2, 0.2, -5 ]   model 2: [ -1, 4, -0.3, 1 ]
    xs = [torch.tensor([3.0, -1.0, 0.1, 2.0]), torch.tensor([-1.0, -2.0, 0.2, -5.0]), torch.tensor([-1.0, 4.0, -0.3, 1.0])]
    assert torch.equal(trim_to_density(xs[0], 0.5), torch.tensor([3.0, 0.0, 0.0, 2.0]))
    stacked = torch.stack(xs)
    assert torch.equal(elect_sign(stacked), torch.tensor([1.0, 1.0, 1.0, -1.0]))  # by mass, not by count
    masked, div = disjoint_mean(stacked, torch.ones(3, 1), elect_sign(stacked))
    assert torch.equal(div, torch.tensor([1.0, 1.0, 2.0, 1.0]))
    assert torch.allclose(masked.sum(0) / div, torch.tensor([3.0, 4.0, 0.15, -5.0]))
    out = ties_merge(base, xs, [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], lam=0.5)
    assert torch.allclose(out, 0.5 * torch.tensor([3.0, 4.0, 0.15, -5.0]))
    # trimming to half: model 1 keeps (-2, -5), model 0 (3, 2), model 2 (-1? no: 4, 1)
    out = ties_merge(base, xs, [1.0] * 3, [0.5] * 3)
    # elected: [3, -2+4=2, 0, 2-5+1=-2] -> [+, +, +(tie), -]; agreeing means: [3, 4, 0, -5]
    assert torch.allclose(out, torch.tensor([3.0, 4.0, 0.0, -5.0]))
