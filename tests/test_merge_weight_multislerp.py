"""`lsmerge.merge.weight.multislerp`: weighted mean direction on the sphere times the mean norm."""

from __future__ import annotations

import math

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.multislerp import multislerp


def _hand(xs: list[list[float]], w: list[float]) -> list[float]:
    total = sum(w)
    w = [v / total for v in w]
    norms = [math.sqrt(sum(a * a for a in x)) for x in xs]
    mean = [sum(wi * x[k] / n for wi, x, n in zip(w, xs, norms)) for k in range(len(xs[0]))]
    m = math.sqrt(sum(a * a for a in mean))
    scale = sum(wi * n for wi, n in zip(w, norms))
    return [scale * a / m for a in mean]


def test_three_vectors_match_the_hand_formula():
    xs = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 3.0]]
    w = [0.5, 0.3, 0.2]
    out = multislerp([torch.tensor(x) for x in xs], w)
    assert torch.allclose(out, torch.tensor(_hand(xs, w)), atol=1e-6)
    # normalize_weights false: the same direction, the norm scaled by sum(w) = 1 here; w * 2 doubles it
    assert torch.allclose(multislerp([torch.tensor(x) for x in xs], [2 * v for v in w], normalize=False), 2 * out, atol=1e-6)


def test_two_orthogonal_vectors_and_a_base():
    h = math.sqrt(0.5)
    assert torch.allclose(multislerp([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], [1.0, 1.0]), torch.tensor([h, h]), atol=1e-7)
    base = torch.tensor([3.0, -1.0])
    out = multislerp([base + torch.tensor([4.0, 0.0]), base + torch.tensor([0.0, 2.0])], [1.0, 1.0], base=base)
    assert torch.allclose(out, base + 3.0 * torch.tensor([h, h]), atol=1e-6)


def test_identical_single_antipodal_and_zero_inputs():
    x = torch.tensor([1.0, -2.0, 0.5])
    assert torch.allclose(multislerp([x, x.clone(), x.clone()], [0.2, 0.3, 0.5]), x, atol=1e-6)
    assert torch.equal(multislerp([x], [1.0]), x)
    # two antipodal inputs of equal weight: mergekit's fallback, the weighted sum
    assert torch.allclose(multislerp([x, -x], [1.0, 1.0]), torch.zeros(3))
    base = torch.tensor([1.0, 2.0, 3.0])
    assert torch.equal(multislerp([base.clone(), base.clone(), base.clone()], [1, 1, 1], base=base), base)  # zero task vectors
    with pytest.raises(LsMergeError, match="weighted sum of the unit tensors is zero"):
        multislerp([x, -x, torch.zeros(3)], [1.0, 1.0, 1.0])


def test_float64_stays_float64():
    out = multislerp([torch.ones(3, dtype=torch.float64), torch.arange(3.0, dtype=torch.float64)], [1.0, 1.0])
    assert out.dtype == torch.float64


def test_parameter_checks():
    m = get_method("multislerp")
    ok = {"weight": [1.0, 2.0], "normalize_weights": True, "eps": 1e-8}
    m.check_params(ok, "tensor w")
    with pytest.raises(LsMergeError, match="sum to 0"):
        m.check_params({**ok, "weight": [1.0, -1.0]}, "tensor w")
    m.check_params({**ok, "weight": [1.0, -1.0], "normalize_weights": False}, "tensor w")
    with pytest.raises(LsMergeError, match="eps"):
        m.check_params({**ok, "eps": 0}, "tensor w")
    assert m.base == "optional"


def test_native_command_with_and_without_a_base(tiny_llamas_3layer, tmp_path):
    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.command import merge_weights

    a, b, c = (str(tiny_llamas_3layer[k]) for k in "ABC")
    kw = dict(models=[b, c], method="multislerp", parameters={"weight": [0.25, 0.75]}, progress=False)
    with_base = open_checkpoint(merge_weights(base_model=a, out=str(tmp_path / "tv"), **kw))
    plain = open_checkpoint(merge_weights(out=str(tmp_path / "p"), **kw))
    sa, sb, sc = (open_checkpoint(p) for p in (a, b, c))
    name = next(n for n in sa.names if "up_proj" in n)
    base = sa.get(name)
    d = [(s.get(name) - base).flatten().tolist() for s in (sb, sc)]
    assert torch.allclose(with_base.get(name), base + torch.tensor(_hand(d, [0.25, 0.75])).view_as(base), atol=1e-6)
    xs = [s.get(name).flatten().tolist() for s in (sb, sc)]
    assert torch.allclose(plain.get(name), torch.tensor(_hand(xs, [0.25, 0.75])).view_as(base), atol=1e-6)
