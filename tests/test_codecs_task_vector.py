"""The task-vector codec (`lsmerge.codecs.task_vector`): joint-SVD codes of the experts' task matrices,
checked against an independent SVD of the concatenation; through `lsmerge merge --codec task_vector`:
identity on copies, full-rank task arithmetic equal to weight-space task arithmetic, saved codecs
bound to their base and experts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lsmerge.codecs.load import load_codec
from lsmerge.codecs.task_vector import TaskVectorCodec
from lsmerge.errors import LsMergeError
from lsmerge.io import open_checkpoint
from lsmerge.merge import latent as L
from lsmerge.merge.latent.command import merge
from lsmerge.merge.weight.command import merge_weights

MLP = "model.layers.0.mlp.down_proj.weight"  # (32, 64): k = min(32, 2 * 64) = 32
GATE = "model.layers.1.mlp.gate_proj.weight"  # (64, 32): k = min(64, 2 * 32) = 64
NORM = "model.layers.0.input_layernorm.weight"


def _stores(w, *experts):
    return open_checkpoint(w.base), [open_checkpoint(getattr(w, e)) for e in experts]


def _fit(w, experts=("e1", "e2"), names=(MLP, GATE, NORM), **kw):
    base, ex = _stores(w, *experts)
    return TaskVectorCodec.fit(base, ex, list(names), family="llama", **kw), base, ex


def test_codes_are_the_joint_svd_coefficients_and_decode_exactly(tiny_world):
    codec, base, ex = _fit(tiny_world)
    for name in (MLP, GATE):
        deltas = [(e.get(name).double() - base.get(name).double()).numpy() for e in ex]
        s_ref = np.linalg.svd(np.concatenate(deltas, axis=1), compute_uv=False)  # independent SVD, float64
        codes = [codec.encode(name, e.get(name)).z.double() for e in ex]
        stacked = torch.cat(codes, dim=1)  # S V^T: rows orthogonal with norms S
        gram = stacked @ stacked.T
        torch.testing.assert_close(gram.diagonal().sqrt(), torch.from_numpy(s_ref.copy()), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros_like(gram), rtol=0, atol=1e-5)
        for e, c in zip(ex, codes):
            assert c.shape == (codec.rank_of(name), base.shape(name)[1])
            lat = codec.encode(name, e.get(name))
            torch.testing.assert_close(codec.decode(name, lat), e.get(name).float(), rtol=1e-5, atol=1e-6)
        assert codec.encode(name, base.get(name)).z.abs().max() < 1e-6  # the base's code is 0
    lat = codec.encode(NORM, ex[0].get(NORM))  # 1-d: identity
    assert torch.equal(lat.z.reshape(-1), ex[0].get(NORM).float()) and torch.equal(codec.decode(NORM, lat), ex[0].get(NORM).float())


def test_truncated_rank_keeps_the_leading_directions(tiny_world):
    codec, base, ex = _fit(tiny_world, rank_fraction=0.25)
    name = GATE
    r = codec.rank_of(name)
    assert r == math.ceil(0.25 * 64)
    d = np.concatenate([(e.get(name).double() - base.get(name).double()).numpy() for e in ex], axis=1)
    s_ref = np.linalg.svd(d, compute_uv=False)
    err = sum(float(((codec.decode(name, codec.encode(name, e.get(name))).double() - e.get(name).double()) ** 2).sum()) for e in ex)
    assert err == pytest.approx(float((s_ref[r:] ** 2).sum()), rel=1e-3)  # Eckart-Young: the best rank-r error
    assert TaskVectorCodec.fit(base, ex, [name], rank=5).rank_of(name) == 5
    assert TaskVectorCodec.fit(base, ex, [name], rank=500).rank_of(name) == 64  # capped at the joint rank


def test_codec_refuses_bad_inputs(tiny_world, tmp_path):
    base, ex = _stores(tiny_world, "e1")
    deep = open_checkpoint(tiny_world.deep)
    with pytest.raises(LsMergeError, match="at least one expert"):
        TaskVectorCodec.fit(base, [], [MLP])
    for bad in (0, 1.5, -0.1, float("nan")):
        with pytest.raises(LsMergeError, match=r"\(0, 1\]"):
            TaskVectorCodec.fit(base, ex, [MLP], rank_fraction=bad)
    with pytest.raises(LsMergeError, match="not both"):
        TaskVectorCodec.fit(base, ex, [MLP], rank_fraction=0.5, rank=3)
    with pytest.raises(LsMergeError, match="not fine-tuned from this base"):
        TaskVectorCodec.fit(base, [deep], [MLP])  # other shapes
    with pytest.raises(LsMergeError, match="not fine-tuned from this base"):
        TaskVectorCodec.fit(deep, [ex[0]], ["model.layers.2.mlp.down_proj.weight"])  # a name the expert lacks
    with pytest.raises(LsMergeError, match="set base"):
        TaskVectorCodec({MLP: (32, 64)}, n_experts=1).bind(None, ex)


def test_saved_codec_is_bound_to_its_base_and_experts(tiny_world, tmp_path):
    codec, base, ex = _fit(tiny_world)
    codec.save(tmp_path / "codec")
    loaded = load_codec(str(tmp_path / "codec"))
    assert isinstance(loaded, TaskVectorCodec)
    assert loaded.describe()["experts"] == ["e1", "e2"] and loaded.describe()["base"] == "base"
    _, swapped = _stores(tiny_world, "e2", "e1")
    loaded.bind(base, swapped)  # order free
    for name in (MLP, GATE):
        torch.testing.assert_close(loaded.encode(name, ex[0].get(name)).z, codec.encode(name, ex[0].get(name)).z)
    half = loaded.truncated(0.5)
    fitted_half, _, _ = _fit(tiny_world, rank_fraction=0.5)
    torch.testing.assert_close(half.encode(GATE, ex[1].get(GATE)).z, fitted_half.encode(GATE, ex[1].get(GATE)).z,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(LsMergeError, match="higher rank"):
        fitted_half.truncated(1.0)
    _, other = _stores(tiny_world, "e1", "e3")
    with pytest.raises(LsMergeError, match="another set"):
        load_codec(str(tmp_path / "codec")).bind(base, other)
    with pytest.raises(LsMergeError, match="built on base"):
        load_codec(str(tmp_path / "codec")).bind(open_checkpoint(tiny_world.e3), ex)
    with pytest.raises(LsMergeError, match="not bound"):
        load_codec(str(tmp_path / "codec")).decode(GATE, codec.encode(GATE, ex[0].get(GATE)))


# -- through `lsmerge merge` ------------------------------------------------------------------------
TV_METHODS = [n for n, m in L.METHODS.items() if m.draw is None and m.architectures == "one"]


@pytest.mark.parametrize("name", TV_METHODS)
def test_merging_copies_through_the_task_vector_codec_returns_the_model(name, tiny_world, tmp_path):
    m = L.get_method(name)
    n = {"1": 1, "2": 2, "N": 2}[m.models]
    kw = dict(lam=1.0) if m.needs_base else {}
    out = merge(method=name, models=[str(tiny_world.e1), str(tiny_world.e1_copy)][:n], base=str(tiny_world.base),
                codec="task_vector", density=1.0, weights=[1.0 / n] * n if m.weights else None, out=str(tmp_path / "o"),
                progress=False, **kw)
    merged, e1, base = open_checkpoint(out), open_checkpoint(tiny_world.e1), open_checkpoint(tiny_world.base)
    for t in e1.names:
        torch.testing.assert_close(merged.get(t), e1.get(t), rtol=1e-4, atol=1e-5, msg=f"{name}: {t}")
    assert sum(not torch.allclose(e1.get(t), base.get(t), atol=1e-3) for t in e1.names) > len(e1.names) // 2


def test_full_rank_task_arithmetic_equals_weight_space_task_arithmetic(tiny_world, tmp_path):
    models = [str(tiny_world.e1), str(tiny_world.e2), str(tiny_world.e3)]
    latent = merge(method="task_arithmetic", models=models, base=str(tiny_world.base), codec="task_vector", lam=0.7,
                   weights=[1.0, 0.5, -0.25], kinds=["all"], out=str(tmp_path / "latent"), progress=False)
    weight = merge_weights(method="task_arithmetic", models=models, base_model=str(tiny_world.base), device="cpu",
                           parameters={"weight": [1.0, 0.5, -0.25], "lambda": 0.7}, out=str(tmp_path / "weight"),
                           progress=False)
    a, b = open_checkpoint(latent), open_checkpoint(weight)
    assert a.names == b.names
    for t in a.names:
        torch.testing.assert_close(a.get(t), b.get(t), rtol=1e-4, atol=1e-5, msg=t)
    # truncated, the codec changes the result (the test can fail)
    low = open_checkpoint(merge(method="task_arithmetic", models=models, base=str(tiny_world.base), codec="task_vector",
                                lam=0.7, weights=[1.0, 0.5, -0.25], rank_fraction=0.25, out=str(tmp_path / "low"),
                                progress=False))
    assert not torch.allclose(low.get(GATE), b.get(GATE), atol=1e-4)


def test_save_codec_then_reuse_it_at_a_lower_rank(tiny_world, tmp_path):
    models, base = [str(tiny_world.e1), str(tiny_world.e2)], str(tiny_world.base)
    fitted = merge(models=models, base=base, codec="task_vector", rank_fraction=0.5, save_codec=str(tmp_path / "codec"),
                   out=str(tmp_path / "a"), progress=False)
    full = merge(models=models, base=base, codec="task_vector", save_codec=str(tmp_path / "full"), out=str(tmp_path / "b"),
                 progress=False)
    reused = merge(models=models, base=base, codec=str(tmp_path / "full"), rank_fraction=0.5, out=str(tmp_path / "c"),
                   progress=False)
    a, b, c = (open_checkpoint(p) for p in (fitted, full, reused))
    torch.testing.assert_close(c.get(GATE), a.get(GATE), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(b.get(GATE), a.get(GATE), atol=1e-4)
    with pytest.raises(LsMergeError, match="delta: none"):
        merge(models=models, base=base, codec=str(tmp_path / "full"), delta="latent", out=str(tmp_path / "d"), progress=False)
    assert not (tmp_path / "d").exists()
