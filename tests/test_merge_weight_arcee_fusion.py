"""`lsmerge.merge.weight.arcee_fusion`: keep changes whose importance reaches median + 1.5 IQR."""

from __future__ import annotations

import math

import torch

from lsmerge.merge.weight import get_method
from lsmerge.merge.weight.arcee_fusion import arcee_fusion, fusion_threshold, importance, quantile_index


def _softmax(v: list[float]) -> list[float]:
    m = max(v)
    e = [math.exp(a - m) for a in v]
    return [a / sum(e) for a in e]


def test_importance_by_hand():
    x = torch.tensor([[0.1, 0.5, -0.3], [2.0, 0.0, 0.0]])
    base = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = importance(x, base)
    for r in range(2):
        p = [a + 1e-8 for a in _softmax(x[r].tolist())]
        q = [a + 1e-8 for a in _softmax(base[r].tolist())]
        kl = sum(a * math.log(a / b) for a, b in zip(p, q))
        for c in range(3):
            assert math.isclose(float(out[r, c]), abs(float(x[r, c] - base[r, c])) * kl, rel_tol=1e-5)
    assert torch.equal(importance(x, base, block=1), out)  # row blocks do not change a value


def test_only_the_outlier_change_survives():
    base = torch.zeros(4)
    x = torch.tensor([0.1, 0.2, 0.3, 5.0])
    # scores are |d| * KL: quantiles at indices 0, 1, 2 -> tau = KL (0.2 + 1.5 (0.3 - 0.1)) = 0.5 KL
    assert torch.equal(arcee_fusion(base, x), torch.tensor([0.0, 0.0, 0.0, 5.0]))


def test_identical_inputs_and_dtype():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(arcee_fusion(x, x.clone()), x)
    assert arcee_fusion(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)).dtype == torch.float64


def test_threshold_is_exact_on_large_tensors():
    assert quantile_index(0.25, 5) == 1 and quantile_index(0.75, 5) == 3 and quantile_index(0.5, 4) == 1
    scores = torch.rand(300_001, generator=torch.Generator().manual_seed(0)) ** 3  # over the sampled-bracket size
    s = scores.sort().values
    n = s.numel()
    q = [s[int(f * (n - 1))] for f in (0.25, 0.5, 0.75)]
    assert float(fusion_threshold(scores)) == float(q[1] + 1.5 * (q[2] - q[0]))


def test_no_parameters_one_model_and_a_base():
    m = get_method("arcee_fusion")
    assert m.params == () and m.base == "required" and (m.min_models, m.max_models) == (1, 1)


def test_native_command_keeps_a_minority_of_changes(tiny_llamas_3layer, tmp_path):
    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.command import merge_weights

    a, b = (str(tiny_llamas_3layer[k]) for k in "AB")
    out = open_checkpoint(merge_weights(models=[b], base_model=a, method="arcee_fusion", out=str(tmp_path / "f"), progress=False))
    sa, sb = open_checkpoint(a), open_checkpoint(b)
    name = next(n for n in sa.names if "down_proj" in n)
    got, base, x = out.get(name), sa.get(name), sb.get(name)
    changed = got != base
    assert torch.allclose(got[changed], x[changed], atol=1e-7)  # a kept change is the model's value (base + delta)
    assert 0 < int(changed.sum()) < 0.5 * got.numel()  # above median + 1.5 IQR: a minority
    assert torch.equal(got, arcee_fusion(base, x))


def test_equal_scores_give_that_score():
    assert float(fusion_threshold(torch.zeros(300_001))) == 0.0
    assert float(fusion_threshold(torch.full((5,), 2.0))) == 2.0
