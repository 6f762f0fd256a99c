"""Tensors whose inputs are all equal: a method that declares `keeps_equal_inputs` returns the
common value exactly there, so the executor copies it instead of computing (and nothing else
changes: the command's output is the same with and without the shortcut)."""

from __future__ import annotations

import pytest
import torch

from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.base import TensorContext


def _values(shape=(48, 40), seed=0) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * torch.logspace(-6, 3, shape[-1])
    x[0, :5] = torch.tensor([0.0, -0.0, 1e-38, -3e38, 1e-45])  # zeros of both signs, tiny and huge values
    return x


def _params(method, **overrides) -> dict:
    out = {}
    for p in method.params:
        out[p.name] = overrides.get(p.name, p.default)
    return out


CASES = [  # (method, models, base, params)
    ("model_stock", 2, True, {}), ("model_stock", 3, True, {"filter_wise": True}),
    ("nuslerp", 2, True, {"weight": [0.6, 0.4]}), ("nuslerp", 2, True, {"weight": [1.0, 1.0], "nuslerp_flatten": False}),
    ("multislerp", 2, True, {"weight": [0.3, 0.7]}), ("multislerp", 1, False, {"weight": [1.0]}),
    ("nearswap", 1, True, {"t": 2e-6}), ("nearswap", 1, True, {"t": 0.5}),
]


@pytest.mark.parametrize("name, n, with_base, overrides", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_declared_methods_return_the_common_value_exactly(name, n, with_base, overrides, dtype):
    method = get_method(name)
    params = _params(method, **overrides)
    assert method.keeps_equal_inputs(n, with_base, params)
    x = _values().to(dtype)
    out = method.merge([x.clone() for _ in range(n)], x.clone() if with_base else None, params, TensorContext("w"))
    assert torch.equal(out.to(dtype), x)


@pytest.mark.parametrize("name, n, with_base, overrides", [
    ("nuslerp", 2, False, {"weight": [0.6, 0.4]}),  # (1 - t) v + t v rounds
    ("multislerp", 3, True, {"weight": [1.0, 1.0, 1.0]}),  # three zero task vectors: mergekit's error
    ("nearswap", 1, True, {"t": 1e-7}),  # weight 0.1: a mix of a and b, rounded
    ("linear", 2, False, {"weight": [0.3, 0.7]}), ("karcher", 2, False, {}), ("slerp", 2, False, {"t": 0.3}),
])
def test_methods_whose_arithmetic_rounds_there_do_not_declare_it(name, n, with_base, overrides):
    method = get_method(name)
    assert not method.keeps_equal_inputs(n, with_base, _params(method, **overrides))


def test_the_command_output_is_the_same_with_and_without_the_shortcut(tiny_llamas_3layer, tmp_path, monkeypatch):
    from lsmerge.io.store import open_checkpoint
    from lsmerge.io.writer import CheckpointWriter
    from lsmerge.merge.weight import executor
    from lsmerge.merge.weight.command import merge_weights

    # two "experts" equal to their base in all tensors but the MLP's: most tasks take the shortcut
    base = open_checkpoint(tiny_llamas_3layer["A"])
    experts = []
    for src in "BC":
        other, expert = open_checkpoint(tiny_llamas_3layer[src]), tmp_path / f"expert-{src}"
        with CheckpointWriter(expert, source=tiny_llamas_3layer["A"]) as w:
            for name in base.names:
                w.add(name, other.get(name) if ".mlp." in name else base.get(name))
        experts.append(str(expert))
    args = dict(models=experts, base_model=str(tiny_llamas_3layer["A"]), method="model_stock", progress=False)
    calls = []
    real = executor._all_equal
    monkeypatch.setattr(executor, "_all_equal", lambda ts: calls.append(real(ts)) or calls[-1])
    fast = open_checkpoint(merge_weights(**args, out=str(tmp_path / "fast")))
    assert any(calls) and not all(calls)
    monkeypatch.setattr(executor, "_all_equal", lambda ts: False)
    slow = open_checkpoint(merge_weights(**args, out=str(tmp_path / "slow")))
    for name in slow.names:
        assert torch.equal(fast.get(name), slow.get(name)), name
