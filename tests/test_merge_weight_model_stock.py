"""`lsmerge.merge.weight.model_stock`: base + t * mean task vector, t from the task vectors' angle."""

from __future__ import annotations

import math

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.model_stock import model_stock


def _hand(base: list[float], xs: list[list[float]]) -> list[float]:
    """The paper's formula in plain Python: mean pairwise cosine of the task vectors -> t."""
    ds = [[a - b for a, b in zip(x, base)] for x in xs]
    n = len(ds)
    cos = []
    for i in range(n):
        for j in range(i + 1, n):
            dot = sum(a * b for a, b in zip(ds[i], ds[j]))
            norms = math.sqrt(sum(a * a for a in ds[i])) * math.sqrt(sum(b * b for b in ds[j]))
            cos.append(dot / max(norms, 1e-6))  # a zero task vector (norms alike in all models) counts as cos 0
    c = sum(cos) / len(cos)
    t = 0.0 if abs(1 + (n - 1) * c) < 1e-6 else n * c / (1 + (n - 1) * c)
    avg = [sum(x[k] for x in xs) / n for k in range(len(base))]
    return [t * a + (1 - t) * b for a, b in zip(avg, base)]


def test_two_models_at_sixty_degrees():
    base = torch.tensor([1.0, -1.0])
    d1, d2 = torch.tensor([1.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])  # cos = 0.5 -> t = 2/3
    out = model_stock(base, [base + d1, base + d2])
    expected = base + (2 / 3) * (d1 + d2) / 2
    assert torch.allclose(out, expected, atol=1e-6)


def test_three_models_match_the_hand_formula():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(7, generator=g)
    xs = [base + torch.randn(7, generator=g) + 0.8 for _ in range(3)]  # shared direction: cos > 0
    out = model_stock(base, xs)
    expected = torch.tensor(_hand(base.tolist(), [x.tolist() for x in xs]))
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, base, atol=1e-3) and not torch.allclose(out, sum(xs) / 3, atol=1e-3)


def test_filter_wise_takes_one_angle_per_row():
    base = torch.zeros(2, 2)
    x1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    x2 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # row 0 parallel (t = 1), row 1 orthogonal (t = 0)
    out = model_stock(base, [x1, x2], filter_wise=True)
    assert torch.allclose(out, torch.tensor([[1.5, 0.0], [0.0, 0.0]]))
    whole = model_stock(base, [x1, x2])  # one angle: cos = 2 / (sqrt(2) sqrt(5))
    c = 2 / (math.sqrt(2) * math.sqrt(5))
    assert torch.allclose(whole, (2 * c / (1 + c)) * (x1 + x2) / 2, atol=1e-6)
    vec = model_stock(torch.zeros(2), [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])], filter_wise=True)
    assert torch.equal(vec, torch.zeros(2))  # a 1-D tensor is one row: orthogonal -> the base


def test_identical_inputs_give_the_input_and_opposite_ones_the_base():
    base = torch.tensor([0.5, 0.25, -1.0])
    x = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(model_stock(base, [x, x.clone()]), x)
    # cos = -1 with N = 2: 1 + (N - 1) cos = 0, no finite ratio -> the base
    assert torch.allclose(model_stock(base, [base + 1, base - 1]), base)
    # a model equal to the base has no direction: its cosines count as 0
    assert torch.allclose(model_stock(base, [base.clone(), x]), base)


def test_float64_stays_float64_and_bf16_computes_in_float32():
    base = torch.zeros(4, dtype=torch.float64)
    out = model_stock(base, [torch.ones(4, dtype=torch.float64), torch.arange(4.0, dtype=torch.float64)])
    assert out.dtype == torch.float64
    bf = model_stock(base.bfloat16(), [torch.ones(4, dtype=torch.bfloat16), torch.arange(4.0).bfloat16()])
    assert bf.dtype == torch.float32


def test_parameter_checks():
    m = get_method("model_stock")
    with pytest.raises(LsMergeError, match="filter_wise"):
        m.check_params({"filter_wise": "yes"}, "tensor w")
    assert m.base == "required" and m.min_models == 2
    with pytest.raises(ValueError):
        model_stock(torch.zeros(2), [torch.ones(2)])


def test_recipe_with_one_model_besides_the_base_is_refused(tiny_world, tmp_path):
    from lsmerge.merge.weight.mergekit_config import read_mergekit_config

    recipe = tmp_path / "ms.yml"
    recipe.write_text(f"models:\n  - model: {tiny_world.e1}\nmerge_method: model_stock\nbase_model: {tiny_world.base}\n")
    with pytest.raises(LsMergeError, match="at least 2"):
        read_mergekit_config(recipe)


def test_native_command(tiny_llamas_3layer, tmp_path):
    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.command import merge_weights

    a, b, c = (str(tiny_llamas_3layer[k]) for k in "ABC")
    out = merge_weights(models=[b, c], base_model=a, method="model_stock", out=str(tmp_path / "m"), progress=False)
    sa, sb, sc, got = (open_checkpoint(p) for p in (a, b, c, out))
    for name in got.names:
        expected = torch.tensor(_hand(sa.get(name).flatten().tolist(), [sb.get(name).flatten().tolist(), sc.get(name).flatten().tolist()]))
        assert torch.allclose(got.get(name).flatten(), expected, atol=1e-6), name
