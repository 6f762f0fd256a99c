"""`lsmerge.merge.weight.della`: MagPrune's rank-based keep probabilities, seeded draws, rescales."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.della import della, della_prune_, keep_probabilities


def test_keep_probabilities_by_hand():
    m = torch.tensor([[0.3, 0.1, 0.5, 0.2], [0.0, 4.0, 2.0, 1.0]])
    # ranks row 0: 0.1 -> 0, 0.2 -> 1, 0.3 -> 2, 0.5 -> 3; p = (0.5 - 0.1) + 0.2 * r / 3
    expected = [[0.4 + 0.2 * 2 / 3, 0.4, 0.6, 0.4 + 0.2 / 3], [0.4, 0.6, 0.4 + 0.4 / 3, 0.4 + 0.2 / 3]]
    assert keep_probabilities(m, 0.5, 0.1).tolist() == [pytest.approx(r) for r in expected]
    assert keep_probabilities(torch.tensor([[3.0], [1.0]]), 0.3, 0.1).tolist() == [[pytest.approx(0.3)]] * 2  # one-entry rows


def test_seeded_and_deterministic():
    delta = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    a = della_prune_(delta.clone(), 0.4, 0.2, seed=7)
    assert torch.equal(a, della_prune_(delta.clone(), 0.4, 0.2, seed=7))
    assert not torch.equal(a, della_prune_(delta.clone(), 0.4, 0.2, seed=8))
    m = get_method("della")
    base = torch.zeros(16, 32)
    params = {"weight": [1.0, 0.5], "density": [0.4, 0.6], "epsilon": [0.2, 0.1], "lambda": 1.0, "normalize": True, "rescale": "l1"}
    from lsmerge.merge.weight import TensorContext

    one = m.merge([delta, -delta], base, params, TensorContext("model.layers.0.mlp.up_proj.weight", seed=3))
    assert torch.equal(one, m.merge([delta, -delta], base, params, TensorContext("model.layers.0.mlp.up_proj.weight", seed=3)))
    assert not torch.equal(one, m.merge([delta, -delta], base, params, TensorContext("model.layers.1.mlp.up_proj.weight", seed=3)))


def test_keep_probability_grows_with_magnitude_rank():
    """Kept fraction per rank decile of each row against p = density - eps + 2 eps * rank / (n - 1)."""
    rows, n, density, eps = 400, 500, 0.5, 0.3
    delta = torch.randn(rows, n, generator=torch.Generator().manual_seed(1)).add_(0.01)  # no zeros
    kept = della_prune_(delta.clone(), density, eps, seed=11, rescale="none") != 0
    ranks = delta.abs().argsort(dim=1).argsort(dim=1).double()
    assert float(kept.double().mean()) == pytest.approx(density, abs=0.005)
    for lo in range(0, n, n // 10):
        band = (ranks >= lo) & (ranks < lo + n // 10)
        expected = float((density - eps + 2 * eps * ranks[band] / (n - 1)).mean())
        got = float(kept[band].double().mean())
        sd = (expected * (1 - expected) / int(band.sum())) ** 0.5
        assert abs(got - expected) < 5 * sd, (lo, got, expected)


def test_rescales():
    delta = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    p = keep_probabilities(delta.abs(), 0.5, 0.2)
    l1 = della_prune_(delta.clone(), 0.5, 0.2, seed=5, rescale="l1")
    plain = della_prune_(delta.clone(), 0.5, 0.2, seed=5, rescale="none")
    inv = della_prune_(delta.clone(), 0.5, 0.2, seed=5, rescale="inverse_probability")
    kept = plain != 0
    assert torch.equal(kept, l1 != 0) and torch.equal(kept, inv != 0)
    assert torch.equal(plain[kept], delta[kept])
    assert float(l1.abs().sum()) == pytest.approx(float(delta.abs().sum()), rel=1e-5)
    assert torch.allclose(inv[kept], delta[kept] / p[kept])
    assert torch.equal(della_prune_(delta.clone(), 1.0, 0.2, seed=5), delta)
    one_d = torch.linspace(-1, 1, 101)
    assert della_prune_(one_d.clone(), 0.5, 0.2, seed=1, rescale="none").shape == (101,)


def test_merge_linear_and_ties_by_hand():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(4, 10, generator=g)
    xs = [base + torch.randn(4, 10, generator=g) for _ in range(2)]
    w, d, e, seeds, lam = [1.0, 0.6], [0.5, 0.4], [0.2, 0.1], [21, 22], 0.8
    pruned = [della_prune_((x - base).clone(), di, ei, s).reshape(-1).tolist() for x, di, ei, s in zip(xs, d, e, seeds)]
    flat = base.reshape(-1).tolist()
    lin = [b + lam * (w[0] * p0 + w[1] * p1) for b, p0, p1 in zip(flat, *pruned)]
    assert della(base, list(xs), w, d, e, seeds, lam, normalize=False, consensus=False).reshape(-1).tolist() == pytest.approx(lin, abs=1e-6)
    ties = []
    for b, p0, p1 in zip(flat, *pruned):
        e0, e1 = w[0] * p0, w[1] * p1
        up = e0 + e1 >= 0
        agree = [(x, wi) for x, wi in ((e0, w[0]), (e1, w[1])) if x != 0 and (x > 0) == up]
        ties.append(b + lam * sum(x for x, _ in agree) / (sum(wi for _, wi in agree) or 1.0))
    assert della(base, list(xs), w, d, e, seeds, lam).reshape(-1).tolist() == pytest.approx(ties, abs=1e-6)


@pytest.mark.parametrize("density, epsilon", [(0.1, 0.15), (0.9, 0.1), (0.5, 0.5)])
def test_epsilon_must_keep_probabilities_inside_the_unit_interval(density, epsilon):
    values = {"weight": [1.0], "density": [density], "epsilon": [epsilon], "lambda": 1.0, "normalize": True, "rescale": "l1"}
    with pytest.raises(LsMergeError, match="epsilon"):
        get_method("della").check_params(values, "tensor t")
    values["density"] = [1.0]  # nothing is pruned at density 1: any epsilon goes, as in mergekit
    get_method("della_linear").check_params(values, "tensor t")
    with pytest.raises(LsMergeError, match="epsilon"):
        get_method("della_linear").check_params({**values, "epsilon": [-0.1]}, "tensor t")
