"""`lsmerge.merge.weight.slerp`: spherical interpolation, its lerp fallbacks, float32 compute."""

from __future__ import annotations

import math

import torch

from lsmerge.merge.weight import slerp_merge


def test_slerp_orthogonal_and_endpoints():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    mid = slerp_merge(a, b, 0.5)
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5)] * 2), atol=1e-7)
    assert torch.allclose(slerp_merge(a, b, 0.0), a) and torch.allclose(slerp_merge(a, b, 1.0), b, atol=1e-7)
    # angle 90 deg: at t = 1/3 the result is at 30 deg, norm preserved
    third = slerp_merge(a, b, 1 / 3)
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)


def test_slerp_falls_back_to_lerp_when_colinear_and_computes_in_float32():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = 2 * a + 1e-6
    assert torch.allclose(slerp_merge(a, b, 0.25), 0.75 * a + 0.25 * b)
    assert torch.allclose(slerp_merge(a, -a, 0.5), torch.zeros(3))  # antipodal -> lerp
    assert torch.allclose(slerp_merge(torch.zeros(3), a, 0.5), 0.5 * a)  # no direction -> lerp
    x = torch.randn(64, dtype=torch.bfloat16)
    y = torch.randn(64, dtype=torch.bfloat16)
    out = slerp_merge(x, y, 0.3)
    assert out.dtype == torch.float32
    assert torch.allclose(out, slerp_merge(x.float(), y.float(), 0.3))
