"""`lsmerge merge --side_channel q`: each input's exact correction carried with the method's linear
coefficients, W = D(z_merged) + sum_i c_i R_i (`lsmerge.codecs.side_channel.merge_side_channels`),
on tiny Llamas with a small PCA codec; one-hot merges give the side-channel reconstruction bit for
bit; methods that are not linear, delta coding and bad fractions are refused before writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lsmerge.codecs.pca import PCACodec
from lsmerge.codecs.side_channel import SideChannelCodec, merge_side_channels, side_count, top_salient
from lsmerge.data.importance import ImportanceStats
from lsmerge.errors import LsMergeError
from lsmerge.io import open_checkpoint
from lsmerge.merge.latent import MergeParams, get_method
from lsmerge.merge.latent.command import merge

UP = "model.layers.1.mlp.up_proj.weight"
Q = 0.05


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    """tiny_world's models, a rank-4 PCA codec fitted on a, b and base's MLP, and importance statistics."""
    root = Path(tmp_path_factory.mktemp("side_merge"))
    paths = {"a": tiny_world.e1, "b": tiny_world.e2, "base": tiny_world.base}
    merge(method="lerp", models=[str(paths["a"]), str(paths["b"])], base=str(paths["base"]), kinds=["mlp"],
          chunk_size=32, rank=4, save_codec=str(root / "codec"), out=str(root / "fit"), progress=False)
    store = open_checkpoint(paths["a"])
    g = torch.Generator().manual_seed(3)
    h = {n: torch.rand(store.shape(n)[1], generator=g, dtype=torch.float64) ** 4 * 10 + 1e-3
         for n in store.names if ".mlp." in n}
    ImportanceStats(h, "ab" * 32, 100, "hand").save(root / "importance.safetensors")
    return {**paths, "root": root, "codec": str(root / "codec"), "importance": str(root / "importance.safetensors")}


def _run(world, out, **kw):
    kw = {"codec": world["codec"], "kinds": ["mlp"], "progress": False, **kw}
    kw["models"] = [str(world[m]) for m in kw["models"]]
    if kw.get("base"):
        kw["base"] = str(world[kw["base"]])
    return Path(merge(out=str(out), **kw))


def _side_codec(world, importance=True, select="error"):
    stats = ImportanceStats.load(world["importance"]) if importance else None
    return SideChannelCodec(PCACodec.load(world["codec"]), Q, stats, select)


def _plain(codec: SideChannelCodec, name: str, w: torch.Tensor) -> torch.Tensor:
    """D(E(W)) by the wrapped codec alone (no side channel)."""
    return codec.codec.decode(name, codec.codec.encode(name, w))


def _mlp(store):
    return [n for n in store.names if ".mlp." in n]


@pytest.mark.parametrize("kw,which", [
    (dict(method="lerp", models=["a", "b"], lam=0.0), "a"),
    (dict(method="lerp", models=["a", "b"], lam=1.0), "b"),
    (dict(method="soup", models=["a", "b", "base"], weights=[0.0, 1.0, 0.0]), "b"),
    (dict(method="self", models=["a"], samples=1, temperature=0.0), "a"),
], ids=["lerp0", "lerp1", "soup-one-hot", "self-one-model"])
def test_one_hot_merge_is_the_side_channel_reconstruction_bit_for_bit(world, tmp_path, kw, which):
    out = _run(world, tmp_path / "out", side_channel=Q, importance=world["importance"], **kw)
    merged, src, codec = open_checkpoint(out), open_checkpoint(world[which]), _side_codec(world)
    for name in _mlp(src):
        assert torch.equal(merged.get(name), codec.reconstruct(name, src.get(name))), name
    w = src.get(UP)
    plain = _plain(codec, UP, w)
    exact = merged.get(UP) == w
    assert int(exact.sum()) >= side_count(w.numel(), Q) and int((plain == w).sum()) < side_count(w.numel(), Q)
    with safe_open(out / "model.safetensors", framework="pt") as f:
        provenance = json.loads(f.metadata()["lsmerge_config"])
    assert provenance["side_channel"] == Q and provenance["codecs"][0]["side_channel"] == Q
    assert provenance["importance"]["digest"] == "ab" * 32 and provenance["codecs"][0]["importance"]["digest"] == "ab" * 32


def test_error_selected_merges_carry_the_largest_errors(world, tmp_path):
    """side_select error: a one-hot merge is that selection's reconstruction; LERP 0.5 adds each input's
    correction on its own largest-error entries; the provenance names the selection."""
    codec = _side_codec(world, select="error")
    kw = dict(side_channel=Q, side_select="error", importance=world["importance"])
    one_hot = open_checkpoint(_run(world, tmp_path / "one", method="lerp", models=["a", "b"], lam=0.0, **kw))
    half = open_checkpoint(_run(world, tmp_path / "half", method="lerp", models=["a", "b"], lam=0.5, **kw))
    plain = open_checkpoint(_run(world, tmp_path / "plain", method="lerp", models=["a", "b"], lam=0.5))
    a, b = open_checkpoint(world["a"]), open_checkpoint(world["b"])
    for name in _mlp(a):
        assert torch.equal(one_hot.get(name), codec.reconstruct(name, a.get(name))), name
    want = plain.get(UP).double() + 0.5 * (_correction(codec, UP, a.get(UP)) + _correction(codec, UP, b.get(UP)))
    torch.testing.assert_close(half.get(UP).double(), want, rtol=0, atol=1e-6)
    salient = open_checkpoint(_run(world, tmp_path / "sal", method="lerp", models=["a", "b"], lam=0.0, side_channel=Q,
                                   side_select="saliency", importance=world["importance"]))
    assert not torch.equal(salient.get(UP), one_hot.get(UP))  # another selection, another output
    with safe_open(tmp_path / "one" / "model.safetensors", framework="pt") as f:
        provenance = json.loads(f.metadata()["lsmerge_config"])
    assert provenance["side_select"] == "error" and provenance["codecs"][0]["select"] == "error"


def _correction(codec: SideChannelCodec, name: str, w: torch.Tensor) -> torch.Tensor:
    """R = (W - D(z)) on the k entries of the codec's selection, zero elsewhere (by hand)."""
    k, h = side_count(w.numel(), codec.fraction), codec.importance.h[name]
    idx = top_salient(w - _plain(codec, name, w), k, h) if codec.select == "error" else top_salient(w, k, h)
    r = torch.zeros(w.numel(), dtype=torch.float64)
    r[idx] = (w.reshape(-1)[idx].double() - _plain(codec, name, w).reshape(-1)[idx].double())
    return r.reshape(w.shape)


@pytest.mark.parametrize("kw,coeffs", [
    (dict(method="lerp", models=["a", "b"], lam=0.5), {"a": 0.5, "b": 0.5}),
    (dict(method="task_arithmetic", models=["a", "b"], base="base", lam=0.3, weights=[1.0, 2.0]),
     {"a": 0.3, "b": 0.6, "base": 0.1}),
], ids=["lerp-half", "task-arithmetic"])
def test_linear_merge_adds_each_correction_with_the_methods_coefficient(world, tmp_path, kw, coeffs):
    plain = open_checkpoint(_run(world, tmp_path / "plain", **kw))
    merged = open_checkpoint(_run(world, tmp_path / "side", side_channel=Q, importance=world["importance"], **kw))
    codec = _side_codec(world)
    for name in (UP, "model.layers.0.mlp.down_proj.weight"):
        want = plain.get(name).double() + sum(c * _correction(codec, name, open_checkpoint(world[m]).get(name))
                                               for m, c in coeffs.items())
        torch.testing.assert_close(merged.get(name).double(), want, rtol=0, atol=1e-6)
        assert (want - plain.get(name).double()).abs().max() > 1e-2  # the corrections are not negligible
    # uncovered tensors: the weight-space fallback, untouched by the side channel
    emb = "model.embed_tokens.weight"
    assert torch.equal(merged.get(emb), plain.get(emb))


def test_merge_side_channels_by_hand():
    merged = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    d1, d2 = torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([[2.0, 2.0], [2.0, 2.0]])
    sides = [(torch.tensor([0, 3]), torch.tensor([1.5, -1.0])), (torch.tensor([3]), torch.tensor([5.0]))]
    out = merge_side_channels(merged, [d1, d2], sides, [0.25, 0.75])
    # R_1 = [1.0, 0, 0, -1.5], R_2 = [0, 0, 0, 3.0]: W = merged + .25 R_1 + .75 R_2
    assert out.tolist() == [[1.25, 2.0], [3.0, 4.0 - 0.375 + 2.25]]
    assert out.dtype == torch.float32
    # one-hot (D(z_merged) = D(z_1), c = e_1): exactly W_1 on S_1, even a value far below the decoded one
    exact = torch.tensor([1e-10, -3e7])
    one_hot = merge_side_channels(d1 * 2e3, [d1 * 2e3, d2], [(torch.tensor([1, 2]), exact), sides[1]], [1.0, 0.0])
    assert torch.equal(one_hot.reshape(-1)[[1, 2]], exact) and one_hot.reshape(-1)[[0, 3]].tolist() == [1e3, 1e3]


def test_linear_coefficients_of_each_method():
    p = MergeParams(lam=0.3, weights=(1.0, 2.0))
    assert get_method("lerp").linear_coefficients(MergeParams(lam=0.25), 2) == [0.75, 0.25]
    assert get_method("soup").linear_coefficients(MergeParams(weights=(0.2, 0.8)), 2) == [0.2, 0.8]
    assert get_method("soup").linear_coefficients(MergeParams(), 4) == [0.25] * 4
    assert get_method("self").linear_coefficients(MergeParams(lam=0.2), 1) == [0.8]
    assert get_method("task_arithmetic").linear_coefficients(p, 2) == pytest.approx([0.3, 0.6, 0.1])
    for name in ("ties", "dare", "hetero"):
        assert get_method(name).linear_coefficients(p, 2) is None


@pytest.mark.parametrize("kw,match", [
    (dict(method="ties", models=["a", "b"], base="base"), "ties is not linear"),
    (dict(method="dare", models=["a", "b"], base="base"), "dare is not linear"),
    (dict(method="hetero", models=["a", "b"], codec="pca"), "hetero is not linear"),
    (dict(method="soup", models=["a", "b"], base="base", delta="weight"), "already cancels the codec's error"),
    (dict(method="lerp", models=["a", "b"], base="base", delta="latent"), "already cancels the codec's error"),
    (dict(method="task_arithmetic", models=["a", "b"], base="base", codec="task_vector"), "task-vector codec"),
    (dict(method="lerp", models=["a", "b"], side_channel=0.7), r"\(0, 0.5\]"),
    (dict(method="lerp", models=["a", "b"], side_channel=-0.01), r"\(0, 0.5\]"),
    (dict(method="lerp", models=["a", "b"], side_channel=float("nan")), r"\(0, 0.5\]"),
    (dict(method="lerp", models=["a", "b"], codec="pca", side_channel=0.0, importance="IMP"), "would be unused"),
    (dict(method="lerp", models=["a", "b"], side_select="biggest"), "unknown side-channel selection 'biggest'"),
], ids=["ties", "dare", "hetero", "delta-weight", "delta-latent", "task-vector", "fraction-high", "fraction-negative",
        "fraction-nan", "importance-unused", "selection"])
def test_side_channel_refusals_come_before_writing(world, tmp_path, kw, match):
    kw = {"side_channel": Q, **kw}
    if kw.get("importance") == "IMP":
        kw["importance"] = world["importance"]
    with pytest.raises(LsMergeError, match=match):
        _run(world, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_vae_self_merge_of_one_model_equals_the_side_channel_export(vae_fit_run, vae_llama, tmp_path):
    from lsmerge.export import export

    ckpt = str(vae_fit_run / "last.ckpt")
    exported = open_checkpoint(export(vae=ckpt, model=vae_llama, out=str(tmp_path / "export"), side_channel=Q))
    merged = open_checkpoint(merge(method="self", models=[vae_llama], codec=ckpt, kinds=["mlp"], samples=1, temperature=0.0,
                                   side_channel=Q, out=str(tmp_path / "merge"), progress=False, allow_partial_codec=True))
    plain = open_checkpoint(merge(method="self", models=[vae_llama], codec=ckpt, kinds=["mlp"], samples=1, temperature=0.0,
                                  out=str(tmp_path / "plain"), progress=False, allow_partial_codec=True))
    src = open_checkpoint(vae_llama)
    coded = [n for n in src.names if not torch.equal(exported.get(n), src.get(n))]
    assert coded and all(".mlp." in n for n in coded)
    for name in coded:
        assert torch.equal(merged.get(name), exported.get(name)), name
        assert not torch.equal(plain.get(name), exported.get(name)), name
