"""`lsmerge.codecs.task_code_vae`: a VAE fitted on task-vector codes, used by `lsmerge merge`.

The fixture `task_code_vae_run` fits configs/vae/tiny_task_codes.yaml on the codes of tiny_world's e1, e2 against its
base at rank fraction 0.5; every test binds it to those inputs (or to others, to see them refused)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from lsmerge.codecs.load import load_codec
from lsmerge.codecs.task_code_vae import TaskCodeVAECodec
from lsmerge.codecs.task_vector import TaskVectorCodec
from lsmerge.codecs.vae import VAECodec
from lsmerge.data.chunking import num_chunks, tensor_stats
from lsmerge.data.task_codes import TASK_CODE_INPUTS, TaskCodeReader
from lsmerge.errors import LsMergeError
from lsmerge.io import open_checkpoint
from lsmerge.io.provenance import input_digests
from lsmerge.merge.latent.command import merge

torch.set_num_threads(1)  # as tests/vae_helpers.py: a tiny fit on 2 shared cores is many times slower with 2 threads


@pytest.fixture(scope="module")
def st(tiny_world):
    return {n: open_checkpoint(getattr(tiny_world, n)) for n in ("base", "e1", "e2", "e3")}


@pytest.fixture(scope="module")
def ckpt(task_code_vae_run):
    return task_code_vae_run / "last.ckpt"


@pytest.fixture(scope="module")
def codec(ckpt, st) -> TaskCodeVAECodec:
    return load_codec(str(ckpt)).bind(st["base"], [st["e1"], st["e2"]])


def _merge(ckpt, w, out, **kw):
    args = dict(codec=str(ckpt), base=str(w.base), models=[str(w.e1), str(w.e2)], kinds=["mlp"], progress=False, out=str(out))
    with contextlib.redirect_stdout(io.StringIO()):
        return merge(**{**args, **kw})


def test_fit_records_its_inputs_and_load_codec_recognises_it(ckpt, tiny_world, vae_fit_run):
    data = torch.load(ckpt, weights_only=True, map_location="cpu")["datamodule_hyper_parameters"]
    assert data["source"] == "task_codes" and data["rank_fraction"] == 0.5
    assert data[TASK_CODE_INPUTS]["base"] == input_digests([tiny_world.base])[0]
    assert data[TASK_CODE_INPUTS]["experts"] == input_digests([tiny_world.e1, tiny_world.e2])
    assert isinstance(load_codec(str(ckpt)), TaskCodeVAECodec)
    plain = load_codec(str(vae_fit_run / "last.ckpt"))  # a VAE fitted on weights stays a plain VAE codec
    assert isinstance(plain, VAECodec) and not isinstance(plain, TaskCodeVAECodec)


def test_encode_feeds_the_vae_the_trained_codes_and_decode_goes_through_it(codec, st):
    base, e1 = st["base"], st["e1"]
    assert set(codec.names) == {n for n in base.names if ".mlp." in n}  # 2-d MLP matrices only: norms go to the fallback
    reader = TaskCodeReader(base, [e1, st["e2"]], rank_fraction=0.5)  # what the datamodule cached for training
    for name in codec.names:
        w, b = e1.get(name).float(), base.get(name).float()
        lat = codec.encode(name, w)
        want = reader.codes(name)[0]
        assert want.shape[0] < w.shape[0] or want.shape[1] != w.shape[1]  # a code block, not the weight
        torch.testing.assert_close(lat.code, want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(lat.norm, tensor_stats(want).float(), rtol=1e-4, atol=1e-7)
        assert tuple(lat.z.shape) == (num_chunks(tuple(want.shape), 32, "rows"), 32)
        dec = codec.decode(name, lat)
        assert dec.shape == w.shape and dec.dtype == torch.float32
        u = codec.tv._basis(name)[0]
        d = dec - b
        assert float((d - u @ (u.T @ d)).norm()) < 1e-4 * float(d.norm())  # W_base + U_r D(z): in the experts' span
        torch.testing.assert_close(u.T @ d, codec.code_block(name, lat), rtol=1e-4, atol=1e-5)
        rel = float((dec - w).norm() / (w - b).norm())
        assert 1e-3 < rel < 1.0, (name, rel)  # lossy (through the VAE), yet better than the base alone
        assert torch.equal(codec.decode(name, codec.encode(name, base.get(name))), b)  # the zero block decodes to W_base


def test_delta_latent_cancels_each_inputs_error_at_the_merge_coefficients(codec, st):
    name = codec.names[0]
    lats = [codec.encode(name, st[k].get(name)) for k in ("e1", "e2")]
    tv = codec.tv
    exact = [tv.decode(name, tv.encode(name, st[k].get(name))) for k in ("e1", "e2")]
    torch.testing.assert_close(codec.decode_merged(name, lats[0].with_z(lats[0].z), lats, [1.0, 0.0]), exact[0],
                               rtol=1e-5, atol=1e-6)  # a corner: the input's task-vector reconstruction
    merged = lats[0].with_z(0.5 * lats[0].z + 0.5 * lats[1].z, 0.5 * lats[0].norm + 0.5 * lats[1].norm)
    assert merged.code is None  # a combination carries no exact code
    want = codec.decode(name, merged) + 0.5 * sum(e - codec.decode(name, lt) for e, lt in zip(exact, lats))
    torch.testing.assert_close(codec.decode_merged(name, merged, lats, [0.5, 0.5]), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no exact code"):
        codec.decode_merged(name, merged, [merged, lats[1]], [0.5, 0.5])


def test_merge_soup_and_lerp_end_to_end(ckpt, tiny_world, st, tmp_path):
    from lsmerge.io.hf import load_causal_lm

    w = tiny_world
    out = _merge(ckpt, w, tmp_path / "soup", method="soup")
    model = load_causal_lm(out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    got = open_checkpoint(out)
    tv = TaskVectorCodec.fit(st["base"], [st["e1"], st["e2"]], list(load_codec(str(ckpt)).names), rank_fraction=0.5)
    fixed = _merge(ckpt, w, tmp_path / "soup_dl", method="soup", delta="latent")
    err = {}
    for name in st["base"].names:
        avg = 0.5 * (st["e1"].get(name).float() + st["e2"].get(name).float())
        if name in tv.names:  # through the VAE: not the task-vector soup, closer with delta: latent
            tv_soup = 0.5 * (tv.decode(name, tv.encode(name, st["e1"].get(name))) + tv.decode(name, tv.encode(name, st["e2"].get(name))))
            err.setdefault("none", []).append(float((got.get(name) - tv_soup).norm()))
            err.setdefault("latent", []).append(float((open_checkpoint(fixed).get(name) - tv_soup).norm()))
        else:  # the weight-space fallback: the same soup on plain tensors
            torch.testing.assert_close(got.get(name).float(), avg)
    assert min(err["none"]) > 1e-3 and sum(err["latent"]) < sum(err["none"])
    lerp0 = open_checkpoint(_merge(ckpt, w, tmp_path / "lerp0_dl", method="lerp", lam=0.0, delta="latent"))
    lerp0_plain = open_checkpoint(_merge(ckpt, w, tmp_path / "lerp0", method="lerp", lam=0.0))
    for name in tv.names:
        rec = tv.decode(name, tv.encode(name, st["e1"].get(name)))
        torch.testing.assert_close(lerp0.get(name), rec, rtol=1e-5, atol=1e-6)
        assert float((lerp0_plain.get(name) - rec).abs().max()) > 1e-3  # without the correction: the VAE's error


@pytest.mark.parametrize("delta", ["none", "latent"])
def test_task_arithmetic_at_lam_0_gives_the_base_exactly(ckpt, tiny_world, st, tmp_path, delta):
    got = open_checkpoint(_merge(ckpt, tiny_world, tmp_path / "ta0", method="task_arithmetic", lam=0.0, delta=delta))
    for name in st["base"].names:
        assert torch.equal(got.get(name), st["base"].get(name)), name


def test_other_inputs_are_refused_before_anything_is_written(ckpt, tiny_world, st, tmp_path):
    w, out = tiny_world, tmp_path / "out"
    load_codec(str(ckpt)).bind(st["base"], [st["e2"], st["e1"]])  # the experts are a set: order is free
    cases = [(dict(base=str(w.e3)), "differs from it"), (dict(models=[str(w.e1), str(w.e3)]), "another set"),
             (dict(method="lerp", models=[str(w.e1), str(w.e2)], base=None), "set base"),
             (dict(delta="weight"), "apply it twice"), (dict(method="ties", delta="latent"), "not linear"),
             (dict(rank_fraction=0.25), "rank_fraction it was fitted at"), (dict(side_channel=0.01), "no side channel")]
    for kw, fragment in [*cases, (dict(models=[str(w.e1)]), "another set")]:
        kw = {"method": "soup", **kw}
        with pytest.raises(LsMergeError, match=fragment):
            _merge(ckpt, w, out, **kw)
        assert not out.exists()


def test_a_checkpoint_without_input_digests_is_refused(ckpt, st, tmp_path):
    raw = torch.load(ckpt, weights_only=True, map_location="cpu")
    del raw["datamodule_hyper_parameters"][TASK_CODE_INPUTS]
    torch.save(raw, tmp_path / "old.ckpt")
    codec = load_codec(str(tmp_path / "old.ckpt"))
    with pytest.raises(LsMergeError, match="Refit it"):
        codec.bind(st["base"], [st["e1"], st["e2"]])
    with pytest.raises(LsMergeError, match="not bound"):
        codec.encode(codec.names[0], st["e1"].get(codec.names[0]))
