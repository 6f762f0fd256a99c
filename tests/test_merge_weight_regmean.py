"""`lsmerge.merge.weight.regmean`: the closed form against least squares."""

from __future__ import annotations

import torch

from lsmerge.merge.weight import regmean_solve


def test_regmean_closed_form_equals_least_squares():
    torch.manual_seed(0)
    n, d_in, d_out = 40, 6, 3
    xs = [torch.randn(n, d_in, dtype=torch.float64) for _ in range(3)]
    ws = [torch.randn(d_out, d_in, dtype=torch.float64) for _ in range(3)]
    grams = [x.T @ x / n for x in xs]
    ours = regmean_solve(ws, grams, alpha=1.0, ridge=0.0)
    X = torch.cat(xs)
    Y = torch.cat([x @ w.T for x, w in zip(xs, ws)])
    direct = torch.linalg.lstsq(X, Y).solution.T
    assert torch.allclose(ours, direct, atol=1e-10)
    # alpha = 0 keeps only the diagonals: a per-input-feature weighted mean
    diag = regmean_solve(ws, grams, alpha=0.0, ridge=0.0)
    g = torch.stack([torch.diagonal(gm) for gm in grams])  # (3, d_in)
    expected = sum(w * gi for w, gi in zip(ws, g)) / g.sum(0)
    assert torch.allclose(diag, expected)
