"""`lsmerge.codecs.vae.VAECodec`: from a checkpoint `lsmerge fit` wrote; the batched codec equals the model's own encode / decode."""

from __future__ import annotations

import pytest
import torch

from lsmerge.codecs.vae import VAECodec
from tests.vae_helpers import tiny_datamodule, tiny_weight_vae


def _straightforward_codec(model, spec, w):
    """Reference path: all windows of the tensor through `model.encode` / `model.decode` at once."""
    from lsmerge.data import chunking
    from lsmerge.io.archmap import KINDS

    hp = model.hparams
    t = hp.tokens_per_sample
    chunks, lengths, norm = chunking.tensor_to_tokens(w, hp.chunk_size, hp.layout, hp.normalization, hp.slog_kappa)
    n = chunks.shape[0]
    x, _ = chunking.to_windows(chunks, t)
    lw = chunking.to_windows(lengths[:, None].float(), t)[0][..., 0].long()
    n_win = x.shape[0]
    ci = torch.arange(n_win * t).view(n_win, t)
    layer = torch.full((n_win,), spec["layer"])
    kind = torch.full((n_win,), KINDS.index(spec["kind"]))
    with torch.no_grad():
        mu, logvar = model.encode(x, lw, layer, kind, ci)
        xhat = model.decode(mu, lw, layer, kind, ci)
    rec = chunking.tokens_to_tensor(chunking.from_windows(xhat, n), w.shape, norm, hp.layout, hp.normalization, hp.slog_kappa)
    return chunking.from_windows(mu, n), chunking.from_windows(logvar, n), rec


@pytest.mark.parametrize("layout", ["flat", "rows"])
def test_codec_matches_straightforward_path(vae_llama, tmp_path, layout):
    """The batched codec (inference mode, cached conditioning, unmasked full batches) gives the
    outputs of running every window through the model's own encode / decode."""
    dm = tiny_datamodule(vae_llama, tmp_path, kinds=["mlp"], layers=None, layout=layout, chunk_size=24, tokens_per_sample=5,
             normalization="slog")
    torch.manual_seed(1)
    model = tiny_weight_vae(dm, latent_dim=8, n_heads=2).eval()
    from lsmerge.io.store import open_checkpoint

    store = open_checkpoint(vae_llama)
    for batch_windows in (3, 1000):  # several batches with a masked last window; one batch
        codec = VAECodec(model, batch_windows=batch_windows)
        for spec in model.tensors:
            w = store.get(spec["name"])
            z, logvar, rec = _straightforward_codec(model, spec, w)
            lat = codec.encode(spec["name"], w)
            torch.testing.assert_close(lat.z, z, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lat.logvar, logvar, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(codec.decode(spec["name"], lat), rec, rtol=1e-5, atol=1e-6)
            lat.z.add_(0.0)  # latents are ordinary tensors that callers may edit in place


def test_codec_from_a_fitted_checkpoint(vae_fit_run, vae_llama):
    codec = VAECodec.from_checkpoint(vae_fit_run / "last.ckpt")  # torch.load(weights_only=True) inside
    assert codec.covers("model.layers.1.mlp.down_proj.weight") and not codec.covers("model.embed_tokens.weight")
    from lsmerge.io.store import open_checkpoint

    w = open_checkpoint(vae_llama).get("model.layers.0.mlp.up_proj.weight")
    lat = codec.encode("model.layers.0.mlp.up_proj.weight", w)
    assert lat.z.shape == (w.numel() // 32, 32) and lat.logvar.shape == lat.z.shape and lat.norm.shape == (2,)
    assert codec.decode("model.layers.0.mlp.up_proj.weight", lat).shape == w.shape
    assert len(codec.sample("model.layers.0.mlp.up_proj.weight", w, 2, 0.5)) == 2


@pytest.mark.parametrize("kind", ["url", "missing", "folder", "truncated", "text", "not_lightning", "foreign", "malicious"])
def test_bad_vae_checkpoints_are_refused_by_export_and_merge(kind, vae_fit_run, vae_llama, tmp_path):
    """`export --vae` and `merge --codec` read the VAE through lsmerge.io.ckpt: one LsMergeError, no output, no code run."""
    from lsmerge.codecs.load import load_codec
    from lsmerge.errors import LsMergeError
    from lsmerge.export import export
    from tests.ckpt_helpers import EXPECTED, bad_checkpoint, sentinel_path

    ckpt = bad_checkpoint(kind, tmp_path, good=vae_fit_run / "last.ckpt")
    with pytest.raises(LsMergeError, match=EXPECTED[kind]):
        export(vae=ckpt, model=vae_llama, out=str(tmp_path / "exported"))
    assert not (tmp_path / "exported").exists()
    if kind not in ("missing", "folder"):  # a missing path or a folder is a PCA codec question for load_codec
        with pytest.raises(LsMergeError, match=EXPECTED[kind]):
            load_codec(ckpt)
    assert not sentinel_path(tmp_path).exists()
