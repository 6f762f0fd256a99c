"""`lsmerge.merge.weight.nuslerp`: SLERP by weights, whole-tensor or per vector, of task vectors with a base."""

from __future__ import annotations

import math

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.nuslerp import interpolation_t, nuslerp

H = math.sqrt(0.5)


def test_t_from_the_weights():
    assert interpolation_t([1.0, 3.0]) == 0.75
    assert interpolation_t([2.0, 0.0]) == 0.0
    assert interpolation_t([1.0, -1.0]) == 0.5  # sum ~ 0


def test_orthogonal_vectors_and_the_ends():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(nuslerp(a, b, 0.5), torch.tensor([H, H]), atol=1e-7)
    third = nuslerp(a, b, 1 / 3)  # 30 degrees
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-7)
    assert torch.allclose(nuslerp(a, b, 0.0), a) and torch.allclose(nuslerp(a, b, 1.0), b, atol=1e-7)
    x = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(nuslerp(x, x.clone(), 0.3), x)  # identical inputs


def test_task_vectors_against_a_base():
    base = torch.tensor([1.0, 1.0])
    out = nuslerp(base + torch.tensor([2.0, 0.0]), base + torch.tensor([0.0, 2.0]), 0.5, base=base)
    assert torch.allclose(out, base + 2 * torch.tensor([H, H]), atol=1e-6)


def test_colinear_is_linear_and_a_zero_vector_is_at_ninety_degrees():
    x = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(nuslerp(x, 3 * x, 0.25), 0.75 * x + 0.25 * (3 * x))
    assert torch.allclose(nuslerp(x, -x, 0.25), 0.75 * x - 0.25 * x)  # antipodal: colinear too
    # no 0.9995 threshold (unlike slerp): a small angle is still spherical
    y = torch.tensor([1.0, 0.02])
    th = math.atan2(0.02, 1.0) - 0.0
    a = torch.tensor([1.0, 0.0])
    expect = (math.sin(0.5 * th) * a / 1 + math.sin(0.5 * th) * y) / math.sin(th)
    assert torch.allclose(nuslerp(a, y, 0.5), expect, atol=1e-7)
    # a zero vector has cos = 0 (mergekit's norm clamp): sin(t pi / 2) of the other, not a lerp
    z = nuslerp(torch.zeros(2), torch.tensor([0.0, 2.0]), 0.5)
    assert torch.allclose(z, math.sin(math.pi / 4) * torch.tensor([0.0, 2.0]))


def test_per_vector_rows_and_columns():
    v0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    v1 = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    rows = nuslerp(v0, v1, 0.5, flatten=False)  # row 0 orthogonal, row 1 colinear
    assert torch.allclose(rows, torch.tensor([[H, H], [1.5, 0.0]]), atol=1e-7)
    cols = nuslerp(v0, v1, 0.5, flatten=False, row_wise=True)
    # column 0: [1, 1] vs [0, 2] at 45 deg; column 1: [0, 0] (no direction, cos = 0) vs [1, 0]
    th = math.pi / 4
    c0 = (math.sin(th / 2) * torch.tensor([1.0, 1.0]) + math.sin(th / 2) * torch.tensor([0.0, 2.0])) / math.sin(th)
    c1 = math.sin(math.pi / 4) * torch.tensor([1.0, 0.0])
    assert torch.allclose(cols, torch.stack([c0, c1], dim=1), atol=1e-6)
    flat = nuslerp(v0, v1, 0.5)
    assert not torch.allclose(flat, rows, atol=1e-3)


def test_float64_stays_float64():
    out = nuslerp(torch.ones(3, dtype=torch.float64), torch.arange(3.0, dtype=torch.float64), 0.4)
    assert out.dtype == torch.float64


def test_parameter_checks():
    m = get_method("nuslerp")
    ok = {"weight": [1.0, 2.0], "nuslerp_flatten": True, "nuslerp_row_wise": False}
    m.check_params(ok, "tensor w")
    with pytest.raises(LsMergeError, match="weight"):
        m.check_params({**ok, "weight": [1.0, float("nan")]}, "tensor w")
    with pytest.raises(LsMergeError, match="nuslerp_flatten"):
        m.check_params({**ok, "nuslerp_flatten": 1}, "tensor w")
    assert (m.min_models, m.max_models, m.base) == (2, 2, "optional")


def test_native_command_with_an_optional_base_takes_task_vectors(tiny_llamas_3layer, tmp_path):
    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.command import merge_weights

    a, b, c = (str(tiny_llamas_3layer[k]) for k in "ABC")
    with_base = merge_weights(models=[b, c], base_model=a, method="nuslerp", parameters={"weight": [1.0, 3.0]},
                              out=str(tmp_path / "tv"), progress=False)
    plain = merge_weights(models=[b, c], method="nuslerp", parameters={"weight": [1.0, 3.0]}, out=str(tmp_path / "p"), progress=False)
    sa, sb, sc = (open_checkpoint(p) for p in (a, b, c))
    name = next(n for n in sa.names if "q_proj" in n)
    assert torch.allclose(open_checkpoint(with_base).get(name), nuslerp(sb.get(name), sc.get(name), 0.75, base=sa.get(name)), atol=1e-7)
    assert torch.allclose(open_checkpoint(plain).get(name), nuslerp(sb.get(name), sc.get(name), 0.75), atol=1e-7)
    assert not torch.allclose(open_checkpoint(with_base).get(name), open_checkpoint(plain).get(name), atol=1e-4)
