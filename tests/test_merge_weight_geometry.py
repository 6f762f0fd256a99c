"""`lsmerge.merge.weight.geometry`: float64 Gram matrices and combining passes, block by block."""

from __future__ import annotations

import torch

from lsmerge.merge.weight.geometry import combine, combine_deltas, gram


def _inputs():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(10, 100, generator=g)
    return base, [base + torch.randn(10, 100, generator=g) for _ in range(3)]


def test_gram_in_blocks_equals_one_float64_product():
    base, xs = _inputs()
    full = torch.stack([x.reshape(-1) for x in xs]).double()
    assert torch.allclose(gram(xs, chunk=7), full @ full.T, rtol=1e-13)
    deltas = torch.stack([(x - base).reshape(-1) for x in xs]).double()  # float32 differences, as mergekit forms them
    assert torch.allclose(gram(xs, base, chunk=7), deltas @ deltas.T, rtol=1e-13)
    assert gram(xs).dtype == torch.float64 and gram(xs).shape == (3, 3)


def test_combine_and_combine_deltas():
    base, xs = _inputs()
    c = [0.5, -0.25, 2.0]
    assert torch.allclose(combine(c, xs, torch.float32), sum(ci * x for ci, x in zip(c, xs)), atol=1e-6)
    assert torch.allclose(combine(c, xs, torch.float32, add_to=base, add_coef=0.3),
                          0.3 * base + sum(ci * x for ci, x in zip(c, xs)), atol=1e-6)
    expected = base + sum(ci * (x - base) for ci, x in zip(c, xs))
    assert torch.allclose(combine_deltas(c, xs, base, chunk=7), expected, atol=1e-6)
    # a zero task vector leaves the base's bytes
    assert torch.equal(combine_deltas([0.7, 0.3], [base.clone(), base.clone()], base, chunk=7), base)
    assert combine_deltas(c, [x.double() for x in xs], base.double()).dtype == torch.float64
