"""The PCA codec (the paper's Table 8 baseline): exact at full rank, Eckart-Young at low rank,
save / load, coverage, posterior samples."""

from __future__ import annotations

import pytest
import torch

from lsmerge.codecs.base import Codec, TensorLatent
from lsmerge.codecs.pca import PCACodec
from lsmerge.errors import LsMergeError


def _heavy(shape, seed, scale=0.02):
    """Random weights with heavy tails (a Gaussian plus a cubed Gaussian)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * scale + torch.randn(shape, generator=g).pow(3) * scale * 0.1


@pytest.mark.parametrize("layout", ["flat", "rows"])
@pytest.mark.parametrize("chunk_size", [16, 40, 200])  # 200 > chunks fitted on: the basis is completed
def test_full_rank_round_trip_is_exact(layout, chunk_size):
    w1, w2 = _heavy((24, 50), 0), _heavy((24, 50), 1)
    codec = PCACodec.fit([("w", [w1, w2])], chunk_size=chunk_size, layout=layout)
    assert isinstance(codec, Codec) and codec.rank == chunk_size
    for w in (w1, w2, _heavy((24, 50), 7)):  # also a tensor it was not fitted on
        latent = codec.encode("w", w)
        assert isinstance(latent, TensorLatent) and latent.z.dtype == torch.float32
        assert latent.logvar is None  # no discarded variance, no posterior spread
        out = codec.decode("w", latent)
        assert out.shape == w.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, w, rtol=0, atol=1e-6 * float(w.abs().max()))


def test_low_rank_is_the_eckart_young_projection():
    w = _heavy((64, 48), 2)
    errors = []
    for rank in (1, 4, 8, 16, 32):
        codec = PCACodec.fit([("w", [w])], chunk_size=32, rank=rank)
        latent = codec.encode("w", w)
        assert latent.z.shape == (64 * 48 // 32, rank)
        rec = codec.decode("w", latent)
        errors.append(float((rec - w).norm() / w.norm()))
        # the residual energy of the normalised chunks is the discarded eigenvalue mass
        basis = codec.bases["w"]
        resid = (((rec - w) / latent.norm[1]) ** 2).sum() / basis.n_chunks
        assert float(resid) == pytest.approx(float(basis.variances[rank:].sum()), rel=1e-4, abs=1e-9)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5 and errors[0] > 0.5


def test_per_kind_basis_covers_every_layer_of_a_kind(tiny_llama):
    from lsmerge.io import ArchitectureMap, open_checkpoint

    store = open_checkpoint(tiny_llama)
    amap = ArchitectureMap.from_config(store.config)
    names = [n for n in store.names if amap.role(n).kind in ("mlp_up", "attn_q")]
    codec = PCACodec.fit(((n, [store.get(n)]) for n in names), chunk_size=32, per="kind", family="llama")
    assert sorted(codec.bases) == ["attn_q", "mlp_up"] and codec.kinds == ["attn_q", "mlp_up"]
    assert codec.covers("model.layers.7.mlp.up_proj.weight")  # any layer of a covered kind
    assert not codec.covers("model.layers.0.mlp.down_proj.weight")
    for n in names:
        w = store.get(n)
        torch.testing.assert_close(codec.decode(n, codec.encode(n, w)), w, rtol=0, atol=1e-6 * float(w.abs().max()))
    with pytest.raises(LsMergeError, match="not fitted"):
        codec.encode("model.layers.0.mlp.down_proj.weight", torch.zeros(4, 4))


def test_save_load_gives_the_same_codes(tmp_path):
    w = _heavy((30, 30), 3)
    codec = PCACodec.fit([("a.weight", [w]), ("b.weight", [w.T.contiguous()])], chunk_size=25, rank=10, family="llama")
    codec.save(tmp_path / "pca")
    loaded = PCACodec.load(tmp_path / "pca")
    assert loaded.describe() == codec.describe() and loaded.names == codec.names
    for n in ("a.weight", "b.weight"):
        assert torch.equal(loaded.encode(n, w).z, codec.encode(n, w).z)
    with pytest.raises(LsMergeError, match="not a saved PCA codec"):
        PCACodec.load(tmp_path)


def test_posterior_samples_and_prior():
    w = _heavy((64, 32), 4)
    full = PCACodec.fit([("w", [w])], chunk_size=32)
    assert all(torch.equal(s.z, full.encode("w", w).z) for s in full.sample("w", w, 3, 1.0))
    low = PCACodec.fit([("w", [w])], chunk_size=32, rank=4)
    latent = low.encode("w", w)
    assert latent.logvar is not None and latent.logvar.shape == latent.z.shape
    draws = low.sample("w", w, 400, 1.0, generator=torch.Generator().manual_seed(0))
    stacked = torch.stack([d.z for d in draws])
    assert not torch.equal(stacked[0], stacked[1])
    # draws centre on the projection with the PPCA posterior variance sigma^2 (1 - sigma^2 / lambda_j)
    torch.testing.assert_close(stacked.mean(0), latent.z, atol=0.35, rtol=0)
    torch.testing.assert_close(stacked.var(0).mean(0), latent.logvar[0].exp(), rtol=0.2, atol=0)
    torch.testing.assert_close(low.prior_std("w") ** 2, low.bases["w"].variances[:4].float())


def test_bad_settings_are_clear_errors():
    w = torch.randn(8, 8)
    with pytest.raises(LsMergeError, match="rank"):
        PCACodec.fit([("w", [w])], chunk_size=8, rank=9)
    with pytest.raises(LsMergeError, match="chunk_size"):
        PCACodec.fit([("w", [w])], chunk_size=0)
    with pytest.raises(LsMergeError, match="no tensors"):
        PCACodec.fit([], chunk_size=8)
    with pytest.raises(LsMergeError, match="NaN"):
        PCACodec.fit([("w", [torch.full((4, 4), float("nan"))])], chunk_size=8)
    codec = PCACodec.fit([("w", [w])], chunk_size=8, rank=4)
    bad = codec.encode("w", w)
    with pytest.raises(LsMergeError, match="latent_dim"):
        codec.decode("w", bad.with_z(torch.zeros(8, 5)))
