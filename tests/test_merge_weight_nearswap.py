"""`lsmerge.merge.weight.nearswap`: the model's value where it is within t of the base's."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.nearswap import nearswap


def test_small_example_by_hand():
    base = torch.zeros(4)
    x = torch.tensor([0.5, 1e-3, -2.0, 0.0])
    # w = clamp(0.01 / |d|, 0, 1): 0.02, 1 (clamped), 0.005, 1 (|d| floored at 1e-6)
    assert torch.allclose(nearswap(base, x, 0.01), torch.tensor([0.01, 1e-3, -0.01, 0.0]))


def test_equals_base_plus_the_change_clipped_to_t():
    # w d = sign(d) min(|d|, t): an independent closed form of the same rule
    g = torch.Generator().manual_seed(0)
    base, x = torch.randn(50, 40, generator=g), torch.randn(50, 40, generator=g)
    t = 0.3
    assert torch.allclose(nearswap(base, x, t), base + (x - base).clamp(-t, t), atol=1e-6)


def test_identical_inputs_and_large_t():
    x = torch.tensor([1.0, -2.0, 3.5])
    assert torch.equal(nearswap(x, x.clone(), 0.1), x)
    assert torch.allclose(nearswap(torch.zeros(3), x, 1e9), x)
    assert nearswap(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 0.5).dtype == torch.float64


@pytest.mark.parametrize("t", [0, -0.1, float("inf"), "x"])
def test_t_must_be_positive(t):
    with pytest.raises(LsMergeError, match="t="):
        get_method("nearswap").check_params({"t": t}, "tensor w")


def test_t_is_required():
    m = get_method("nearswap")
    with pytest.raises(LsMergeError, match="required"):
        m.check_params({p.name: p.default for p in m.params}, "tensor w")


def test_native_command(tiny_llamas_3layer, tmp_path):
    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.command import merge_weights

    a, b = (str(tiny_llamas_3layer[k]) for k in "AB")
    out = open_checkpoint(merge_weights(models=[b], base_model=a, method="nearswap", parameters={"t": 0.01},
                                        out=str(tmp_path / "n"), progress=False))
    sa, sb = open_checkpoint(a), open_checkpoint(b)
    for name in out.names:
        assert torch.allclose(out.get(name), sa.get(name) + (sb.get(name) - sa.get(name)).clamp(-0.01, 0.01), atol=1e-6), name
