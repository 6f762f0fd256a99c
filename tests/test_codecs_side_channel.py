"""The exact sparse side channel (and the output-weighted PCA codec it is measured with): exactly the
chosen entries come back, the stated ratio counts them (by hand), the fraction is checked."""

from __future__ import annotations

import math

import pytest
import torch

from lsmerge.codecs.pca import PCACodec
from lsmerge.codecs.side_channel import SideChannelCodec, check_fraction, compression, side_count
from lsmerge.data.importance import ImportanceStats, weighted_error
from lsmerge.errors import LsMergeError


def _tensors(seed=0, shape=(16, 24)):
    g = torch.Generator().manual_seed(seed)
    return {f"t{i}.weight": torch.randn(shape, generator=g) for i in range(3)}


def _stats(tensors, seed=1):
    g = torch.Generator().manual_seed(seed)
    return ImportanceStats({n: torch.rand(w.shape[1], generator=g, dtype=torch.float64) ** 4 * 10 + 1e-3
                            for n, w in tensors.items()}, "cd" * 32, 100, "hand")


def test_saliency_selection_restores_exactly_the_most_salient_entries():
    w = torch.tensor([[3.0, 0.1, -0.2, 0.3], [0.2, -1.0, 0.05, 2.0]])
    stats = ImportanceStats({"a.weight": torch.tensor([0.01, 1.0, 1.0, 4.0])}, "ef" * 32)
    pca = PCACodec.fit([("a.weight", [w])], chunk_size=4, rank=1, layout="rows")
    codec = SideChannelCodec(pca, 0.25, stats, "saliency")  # k = ceil(0.25 * 8) = 2
    latent = codec.encode("a.weight", w)
    # saliency w^2 h: [0.09, 0.01, 0.04, 0.36 | 0.0004, 1.0, 0.0025, 16.0] -> flat indices 5 and 7
    # (the largest |w|, 3.0 at index 0, has h = 0.01 and is not chosen)
    assert latent.side[0].tolist() == [5, 7]
    out = codec.decode("a.weight", latent)
    plain = pca.decode("a.weight", latent)
    assert out.view(-1)[[5, 7]].tolist() == [-1.0, 2.0]
    keep = torch.ones(8, dtype=torch.bool)
    keep[[5, 7]] = False
    assert torch.equal(out.view(-1)[keep], plain.view(-1)[keep])
    assert not torch.equal(plain.view(-1)[[5, 7]], torch.tensor([-1.0, 2.0]))  # the codec alone misses them
    # without statistics the saliency is w^2: indices 0 and 7
    assert SideChannelCodec(pca, 0.25, select="saliency").encode("a.weight", w).side[0].tolist() == [0, 7]
    # a merge of latents drops the channel
    assert latent.with_z(latent.z * 0.5).side is None


def test_stated_ratio_counts_the_side_channel_by_hand():
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    pca = PCACodec.fit([("a.weight", [w])], chunk_size=8, rank=4)
    codec = SideChannelCodec(pca, 0.1)
    latent = codec.encode("a.weight", w)
    c = codec.compression(latent)
    # z: 4 chunks x 4 = 16 values, norm 2 -> L = 18; k = ceil(0.1 * 32) = 4
    assert (c["latent_values"], c["side_entries"]) == (18, 4)
    assert c["values_ratio"] == pytest.approx(32 / (18 + 8))
    assert c["values_ratio_without_side"] == pytest.approx(32 / 18)
    assert c["bytes_per_weight"] == pytest.approx(((18 + 4) * 4 + 4 * 4) / 32)  # 3.25
    assert compression(32, 18, 4, torch.bfloat16)["bytes_per_weight"] == pytest.approx(((18 + 4) * 2 + 4 * 4) / 32)
    assert side_count(1000, 0.001) == 1 and side_count(1001, 0.001) == 2


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 0.51, 1.0, float("nan"), True])
def test_fraction_outside_the_range_is_refused(bad):
    with pytest.raises(LsMergeError, match=r"\(0, 0.5\]"):
        check_fraction(bad)
    assert check_fraction(0.5) == 0.5


def test_output_weighted_pca_lowers_the_weighted_error_and_needs_its_statistics(tmp_path):
    tensors = _tensors()
    stats = _stats(tensors)
    fit = lambda imp: PCACodec.fit(((n, [w]) for n, w in tensors.items()), chunk_size=8, rank=3, layout="rows",
                                   importance=imp)
    plain, weighted = fit(None), fit(stats)
    name, w = next(iter(tensors.items()))
    h = stats.h[name]
    err = lambda c: weighted_error(w, c.decode(name, c.encode(name, w)), h)
    rel = lambda c: float((c.decode(name, c.encode(name, w)) - w).norm() / w.norm())
    assert err(weighted) < 0.8 * err(plain)
    assert rel(plain) < rel(weighted)
    # full rank stays exact under the weighting
    full = PCACodec.fit([(name, [w])], chunk_size=8, rank=8, layout="rows", importance=stats)
    assert torch.allclose(full.decode(name, full.encode(name, w)), w, atol=1e-5)
    # saved with its statistics; refused without them or with others
    weighted.save(tmp_path / "c")
    back = PCACodec.load(tmp_path / "c")
    assert torch.equal(back.decode(name, back.encode(name, w)), weighted.decode(name, weighted.encode(name, w)))
    (tmp_path / "c" / "importance.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(LsMergeError, match="importance weighting.*does not exist"):
        PCACodec.load(tmp_path / "c")
    assert PCACodec.load(tmp_path / "c", tmp_path / "moved.safetensors").importance.digest == stats.digest
    ImportanceStats(stats.h, "00" * 32).save(tmp_path / "other.safetensors")
    with pytest.raises(LsMergeError, match="fitted with calibration statistics"):
        PCACodec.load(tmp_path / "c", tmp_path / "other.safetensors")


def test_load_codec_wraps_a_side_channel(tmp_path):
    from lsmerge.codecs.load import load_codec

    tensors = _tensors(shape=(8, 16))
    PCACodec.fit(((n, [w]) for n, w in tensors.items()), chunk_size=8, rank=2).save(tmp_path / "c")
    codec = load_codec(str(tmp_path / "c"), side_channel=0.05)
    assert isinstance(codec, SideChannelCodec) and codec.covers("t0.weight") and codec.rank == 2
    w = tensors["t1.weight"]
    out = codec.decode("t1.weight", codec.encode("t1.weight", w))
    k = math.ceil(0.05 * w.numel())
    assert int((out == w).sum()) >= k
    with pytest.raises(LsMergeError, match=r"\(0, 0.5\]"):
        load_codec(str(tmp_path / "c"), side_channel=0.7)


def test_error_selection_keeps_the_largest_weighted_errors_and_beats_saliency():
    tensors = _tensors(seed=3, shape=(12, 16))
    stats = _stats(tensors, seed=4)
    pca = PCACodec.fit(((n, [w]) for n, w in tensors.items()), chunk_size=8, rank=2, layout="rows")
    name, w = "t2.weight", tensors["t2.weight"]
    h = stats.h[name]
    plain = pca.decode(name, pca.encode(name, w))
    k = side_count(w.numel(), 0.1)
    by_hand = ((w - plain).double().pow(2) * h[None, :]).reshape(-1).topk(k).indices.sort().values
    codec = SideChannelCodec(pca, 0.1, stats, select="error")
    latent = codec.encode(name, w)
    assert latent.side[0].tolist() == by_hand.tolist()
    out = codec.decode(name, latent)
    assert torch.equal(out.view(-1)[by_hand], w.view(-1)[by_hand])
    # the greedy optimum of sum_ij h_j e_ij^2: never above the saliency choice, and here clearly below it
    salient = SideChannelCodec(pca, 0.1, stats, select="saliency")
    err_salient = weighted_error(w, salient.decode(name, salient.encode(name, w)), h)
    assert weighted_error(w, out, h) < 0.9 * err_salient
    # without statistics the score is the plain squared error
    unweighted = SideChannelCodec(pca, 0.1, select="error").encode(name, w).side[0]
    assert unweighted.tolist() == (w - plain).pow(2).reshape(-1).topk(k).indices.sort().values.tolist()
    assert codec.describe()["select"] == "error" and "select=error" in repr(codec)


def test_unknown_selection_is_refused_naming_the_choices(tmp_path):
    from lsmerge.codecs.load import load_codec

    tensors = _tensors(shape=(8, 16))
    pca = PCACodec.fit(((n, [w]) for n, w in tensors.items()), chunk_size=8, rank=2)
    with pytest.raises(LsMergeError, match="saliency, error"):
        SideChannelCodec(pca, 0.05, select="largest")
    pca.save(tmp_path / "c")
    with pytest.raises(LsMergeError, match="unknown side-channel selection 'largest'"):
        load_codec(str(tmp_path / "c"), side_channel=0.05, side_select="largest")
