"""The `lsmerge merge` command (`lsmerge.merge.latent.command`) with the PCA codec, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lsmerge.codecs.pca import PCACodec
from lsmerge.errors import LsMergeError
from lsmerge.io import open_checkpoint
from lsmerge.merge.latent.command import merge

from conftest import make_tiny_llama, make_tiny_model

UP = "model.layers.1.mlp.up_proj.weight"
EMBED = "model.embed_tokens.weight"


@pytest.fixture
def llamas(tiny_world):
    """Tiny Llamas `a`, `b`, `c`, `base` (seeds 0, 1, 2, 3; 2 layers, width 32)."""
    return {"a": tiny_world.base, "b": tiny_world.e1, "c": tiny_world.e2, "base": tiny_world.e3}


def _path(root, name):
    """`name` in a dict of paths, or in a folder."""
    return root[name] if isinstance(root, dict) else root / name


def _run(root, out, **kw):
    kw = {"chunk_size": 32, "progress": False, **kw}
    kw["models"] = [str(_path(root, m)) for m in kw["models"]]
    if kw.get("base"):
        kw["base"] = str(_path(root, kw["base"]))
    return Path(merge(out=str(out), **kw))


def _decoded(codec_dir, store, name):
    codec = PCACodec.load(codec_dir)
    return codec.decode(name, codec.encode(name, store.get(name)))


@pytest.mark.parametrize("lam,which", [(0.0, "a"), (1.0, "b")])
def test_lerp_endpoints_give_the_decoded_model(llamas, tmp_path, lam, which):
    out = _run(llamas, tmp_path / "out", method="lerp", models=["a", "b"], lam=lam, rank=8, save_codec=str(tmp_path / "codec"))
    merged, src = open_checkpoint(out), open_checkpoint(llamas[which])
    for name in src.names:
        if PCACodec.load(tmp_path / "codec").covers(name):
            assert torch.equal(merged.get(name), _decoded(tmp_path / "codec", src, name)), name
        else:  # fallback: the same method in weight space
            assert torch.equal(merged.get(name), src.get(name)), name
    assert not torch.equal(merged.get(UP), src.get(UP))  # rank 8 < 32: a real reconstruction
    with safe_open(out / "model.safetensors", framework="pt") as f:
        provenance = json.loads(f.metadata()["lsmerge_config"])
    assert provenance["command"] == "merge" and provenance["codecs"][0]["rank"] == 8


def test_soup_with_one_hot_weights_equals_that_models_decode(llamas, tmp_path):
    out = _run(llamas, tmp_path / "out", method="soup", models=["a", "b", "c"], weights=[0.0, 1.0, 0.0], rank=8,
               kinds=["mlp"], save_codec=str(tmp_path / "codec"))
    merged, b = open_checkpoint(out), open_checkpoint(llamas["b"])
    assert torch.equal(merged.get(UP), _decoded(tmp_path / "codec", b, UP))
    assert torch.equal(merged.get("model.layers.0.self_attn.q_proj.weight"), b.get("model.layers.0.self_attn.q_proj.weight"))


@pytest.mark.parametrize(
    "kw",
    [
        dict(method="task_arithmetic", models=["a", "b"], base="base", lam=0.5),
        dict(method="ties", models=["a", "b"], base="base", density=0.5),
        dict(method="dare", models=["a", "b"], base="base", density=0.5, sign_election=True, fallback_method="dare_ties"),
        dict(method="soup", models=["a", "b"], base="base", delta="weight", rank=8),
        dict(method="lerp", models=["a", "b"], base="base", delta="latent", lam_schedule=[0.0, 1.0], rank=8),
        dict(method="self", models=["a"], samples=3, rank=8, lam=0.2),
    ],
    ids=lambda kw: kw["method"] + ("-" + kw["delta"] if "delta" in kw else ""),
)
def test_every_method_writes_a_loadable_model(llamas, tmp_path, kw):
    from transformers import AutoModelForCausalLM

    out = _run(llamas, tmp_path / "out", **kw)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_delta_coding_with_a_lossless_codec_gives_back_the_expert(llamas, tmp_path):
    # base + D(E(W_a - W_base)) is W_a at full rank
    out = _run(llamas, tmp_path / "out", method="soup", models=["a"], base="base", delta="weight", weights=[1.0])
    a = open_checkpoint(llamas["a"])
    torch.testing.assert_close(open_checkpoint(out).get(UP), a.get(UP), rtol=0, atol=1e-6)


def test_self_merge_at_full_rank_and_zero_temperature_is_the_model(llamas, tmp_path):
    out = _run(llamas, tmp_path / "out", method="self", models=["a"], samples=2, temperature=0.0)
    a = open_checkpoint(llamas["a"])
    torch.testing.assert_close(open_checkpoint(out).get(UP), a.get(UP), rtol=0, atol=1e-6)


def test_heterogeneous_llama4_into_gemma3_loads_with_finite_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    make_tiny_llama(tmp_path / "llama4", seed=7, layers=4, hidden=32)
    make_tiny_model(tmp_path / "gemma", seed=5, hidden=48, family="gemma3")
    kw = dict(method="hetero", models=["gemma", "llama4"], codec="pca", rank=16, save_codec=str(tmp_path / "codecs"))
    out = _run(tmp_path, tmp_path / "out", lam=0.1, **kw)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "gemma3_text" and model.config.num_hidden_layers == 2
    assert torch.isfinite(model(torch.tensor([[1, 2, 3, 4]])).logits).all()
    target, merged = open_checkpoint(tmp_path / "gemma"), open_checkpoint(out)
    assert not torch.equal(merged.get(UP), target.get(UP))
    assert torch.equal(merged.get(EMBED), target.get(EMBED))  # uncovered: the target's
    # lam = 0 is the target's own reconstruction; saved codecs reload as a pair
    codecs = [str(tmp_path / "codecs" / "target"), str(tmp_path / "codecs" / "source")]
    out0 = _run(tmp_path, tmp_path / "out0", lam=0.0, **{**kw, "codec": codecs, "save_codec": None})
    assert torch.equal(open_checkpoint(out0).get(UP), _decoded(codecs[0], target, UP))
    # latent delta coding: W_t + D(Z) - D(Z_t), so lam = 0 gives the target itself
    kw_delta = {**kw, "codec": codecs, "save_codec": None, "delta": "latent"}
    out_d0 = _run(tmp_path, tmp_path / "out_d0", lam=0.0, **kw_delta)
    assert torch.allclose(open_checkpoint(out_d0).get(UP), target.get(UP), atol=1e-6)
    out_d = _run(tmp_path, tmp_path / "out_d", lam=0.1, **kw_delta)
    want = open_checkpoint(out).get(UP) - _decoded(codecs[0], target, UP) + target.get(UP)  # same codecs, lam 0.1
    assert torch.allclose(open_checkpoint(out_d).get(UP), want, atol=1e-6)
    assert not torch.equal(open_checkpoint(out_d).get(UP), target.get(UP))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(method="soup", models=["a", "b"], weights=[-0.5, 1.5]), "non-negative"),
        (dict(method="soup", models=["a", "b"], weights=[0.5, 0.6]), "sum to 1"),
        (dict(method="lerp", models=["a", "b"], lam=1.5), r"lam must be in \[0.0, 1.0\]"),
        (dict(method="lerp", models=["a", "b"], lam_schedule=[0.0, 2.0]), "lam_schedule"),
        (dict(method="self", models=["a"], lam=-0.1), "lam must be"),
        (dict(method="task_arithmetic", models=["a"]), "base"),
        (dict(method="lerp", models=["a"]), "exactly two"),
        (dict(method="hetero", models=["a", "b"], delta="weight"), "delta: latent"),
        (dict(method="hetero", models=["a", "b"], codec="CODEC"), "a codec for each side"),
        (dict(method="lerp", models=["a", "b"], kinds=["norm_x"]), "unknown module kind"),
        (dict(method="lerp", models=["a", "b"], delta="weight"), "needs a base"),
    ],
)
def test_bad_input_is_refused_before_writing(llamas, tmp_path, kw, match):
    if kw.get("codec") == "CODEC":
        PCACodec.fit([(UP, [torch.randn(64, 32)])], chunk_size=32, family="llama").save(tmp_path / "codec")
        kw["codec"] = str(tmp_path / "codec")
    with pytest.raises(LsMergeError, match=match):
        _run(llamas, tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_codec_of_another_family_or_kind_is_refused(llamas, tmp_path):
    gemma_codec = PCACodec.fit([(UP, [torch.randn(64, 32)])], chunk_size=32, family="gemma3_text")
    gemma_codec.save(tmp_path / "gemma_codec")
    with pytest.raises(LsMergeError, match="trained on gemma3_text"):
        _run(llamas, tmp_path / "out", method="lerp", models=["a", "b"], codec=str(tmp_path / "gemma_codec"))
    attn_codec = PCACodec.fit([("model.layers.0.self_attn.q_proj.weight", [torch.randn(32, 32)])], chunk_size=32, family="llama")
    attn_codec.save(tmp_path / "attn_codec")
    with pytest.raises(LsMergeError, match="covers none of the selected tensors"):
        _run(llamas, tmp_path / "out", method="lerp", models=["a", "b"], codec=str(tmp_path / "attn_codec"), kinds=["mlp"])
    assert not (tmp_path / "out").exists()


def test_different_tokenizers_or_architectures_are_refused(llamas, tmp_path):
    import shutil

    for name, vocab in (("t1", '{"a": 0}'), ("t2", '{"b": 0}')):
        shutil.copytree(llamas["a"], tmp_path / name)
        (tmp_path / name / "tokenizer.json").write_text(vocab)
    with pytest.raises(LsMergeError, match="tokenizer.json differs"):
        _run(tmp_path, tmp_path / "out", method="lerp", models=["t1", "t2"])
    make_tiny_llama(tmp_path / "deep", seed=1, layers=3, tokenizer=True)  # the same tokenizer as `a`
    shutil.copytree(llamas["a"], tmp_path / "a")
    with pytest.raises(LsMergeError, match="method: hetero"):
        _run(tmp_path, tmp_path / "out", method="lerp", models=["a", "deep"])
    assert not (tmp_path / "out").exists()


def test_shipped_configs_resolve(capsys):
    from lsmerge.cli import main

    configs = sorted(Path(__file__).resolve().parents[1].joinpath("configs", "merge").glob("*.yaml"))
    assert {c.stem for c in configs} >= {"lerp_two", "soup_n", "task_arithmetic", "self_merge", "delta_coding",
                                        "smollm2_to_gemma3_hetero"}
    for cfg in configs:
        with pytest.raises(SystemExit) as e:
            main(["merge", "--config", str(cfg), "--print_config"])
        assert e.value.code in (0, None)
        assert "method:" in capsys.readouterr().out
