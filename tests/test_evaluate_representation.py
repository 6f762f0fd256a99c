"""`lsmerge.evaluate.representation`: linear CKA and midness of mixed hidden states."""

from __future__ import annotations

import torch

from lsmerge.evaluate.representation import LinearCKA, Midness, linear_cka_tt
from lsmerge.merge.hidden import slerp


# -- metrics -----------------------------------------------------------------------------------


def test_linear_cka_tt_matches_feature_form_and_invariances():
    x, y = torch.randn(10, 6), torch.randn(10, 9)
    xc, yc = x - x.mean(0), y - y.mean(0)
    feature_form = (xc.T @ yc).norm() ** 2 / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert torch.allclose(linear_cka_tt(x, y), feature_form, atol=1e-5)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    assert torch.allclose(linear_cka_tt(x, 3 * x @ q + 1), torch.tensor(1.0), atol=1e-5)
    metric = LinearCKA()
    metric.update(torch.stack([x, x]), torch.stack([x, y @ torch.randn(9, 6)]), mask=torch.ones(2, 10))
    assert 0.0 < float(metric.compute()) < 1.0


def test_midness_on_and_off_geodesic():
    b, f = torch.randn(50, 16), torch.randn(50, 16)
    m = Midness()
    m.update(b, f, slerp(b, f, 0.5))
    r = m.compute()
    assert abs(float(r["midpoint_cos"]) - 1) < 1e-4 and abs(float(r["arc_ratio"]) - 0.5) < 1e-3
    assert float(r["arc_deviation"]) < 1e-3 and float(r["geodesic_excess"]) < 1e-3
    off = Midness()
    off.update(b, f, torch.randn(50, 16))
    assert float(off.compute()["geodesic_excess"]) > 0.1
