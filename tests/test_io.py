"""Checkpoint I/O: lazy reading, architecture map, streaming atomic writer, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lsmerge.errors import LsMergeError
from lsmerge.io import ArchitectureMap, CheckpointWriter, expand_kinds, open_checkpoint
from lsmerge.io.writer import clean_stale_tmp, parse_size

from conftest import make_tiny_llama


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# -- reading ------------------------------------------------------------------------------
def test_store_reads_lazily_and_exactly(tiny_llama):
    from transformers import AutoModelForCausalLM

    store = open_checkpoint(tiny_llama)
    sd = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert set(store.names) == set(sd)
    for name in store.names:
        assert store.shape(name) == tuple(sd[name].shape)
        assert store.dtype(name) == sd[name].dtype
        assert torch.equal(store.get(name), sd[name])
    assert store.config["model_type"] == "llama"
    assert any(p.name == "config.json" for p in store.side_files)


def test_store_follows_sharded_index(tmp_path):
    model = make_tiny_llama(tmp_path / "src")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    store = open_checkpoint(tmp_path / "sharded")
    assert len({store.info(n).file for n in store.names}) > 1
    for name, t in store.items():
        assert torch.equal(t, model.state_dict()[name])


def test_store_reads_bin_with_weights_only(tmp_path):
    model = make_tiny_llama(tmp_path / "src")
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    store = open_checkpoint(tmp_path / "bin")
    assert store.format == "bin"
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(store.get(name), model.state_dict()[name])


# -- architecture map ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_type,name,layer,kind",
    [
        ("llama", "model.layers.3.self_attn.q_proj.weight", 3, "attn_q"),
        ("mistral", "model.layers.0.mlp.gate_proj.weight", 0, "mlp_gate"),
        ("qwen2", "model.layers.1.self_attn.k_proj.bias", 1, "attn_k"),
        ("gemma3_text", "model.layers.2.pre_feedforward_layernorm.weight", 2, "norm"),
        ("gemma3_text", "model.layers.2.self_attn.q_norm.weight", 2, "norm"),
        ("gemma", "model.embed_tokens.weight", None, "embed"),
        ("llama", "lm_head.weight", None, "lm_head"),
        ("llama", "model.norm.weight", None, "norm"),
        ("gpt2", "transformer.h.5.attn.c_attn.weight", 5, "attn_qkv"),
        ("gpt2", "h.5.mlp.c_fc.bias", 5, "mlp_up"),
        ("gpt2", "transformer.h.0.mlp.c_proj.weight", 0, "mlp_down"),
        ("gpt2", "transformer.h.0.attn.c_proj.weight", 0, "attn_o"),
        ("gpt2", "transformer.wpe.weight", None, "pos_embed"),
        ("gpt2", "transformer.ln_f.weight", None, "norm"),
        ("gpt_neox", "gpt_neox.layers.4.attention.query_key_value.weight", 4, "attn_qkv"),
        ("gpt_neox", "gpt_neox.layers.4.mlp.dense_4h_to_h.weight", 4, "mlp_down"),
        ("gpt_neox", "embed_out.weight", None, "lm_head"),
        ("gpt_neox", "gpt_neox.embed_in.weight", None, "embed"),
    ],
)
def test_architecture_map(model_type, name, layer, kind):
    role = ArchitectureMap(model_type).role(name)
    assert (role.layer, role.kind) == (layer, kind)


def test_architecture_map_from_real_configs(tmp_path):
    from transformers import Gemma3TextConfig, GPT2Config, Qwen2Config

    for cfg in (Qwen2Config(), Gemma3TextConfig(), GPT2Config()):
        arch = ArchitectureMap.from_config(cfg.to_dict())
        assert arch.family.name in (cfg.model_type,)
    assert ArchitectureMap.from_config(Gemma3TextConfig().to_dict()).tie_word_embeddings


def test_unknown_architecture_names_supported_and_pattern():
    with pytest.raises(LsMergeError, match="llama.*layer_pattern"):
        ArchitectureMap("mamba")
    arch = ArchitectureMap("custom", layer_pattern=r"blocks\.(?P<layer>\d+)\.")
    assert arch.role("blocks.7.attn.q_proj.weight").layer == 7
    assert arch.role("blocks.7.attn.q_proj.weight").kind == "attn_q"
    assert arch.role("blocks.7.ffn.fc1.weight").kind == "mlp_up"


def test_expand_kinds():
    assert expand_kinds(["qkv"]) == {"attn_q", "attn_k", "attn_v", "attn_qkv"}
    assert "mlp_down" in expand_kinds(["mlp", "norm"])
    with pytest.raises(LsMergeError, match="unknown module kind"):
        expand_kinds(["attention"])


# -- writing ------------------------------------------------------------------------------
def test_writer_round_trip_sharded_and_loadable(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    store = open_checkpoint(tiny_llama)
    out = tmp_path / "out"
    with CheckpointWriter(out, source=tiny_llama, inputs=[tiny_llama], max_shard_size="16KB", config={"k": 1}) as w:
        for name, t in store.items():
            w.add(name, t)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert (out / "config.json").exists()
    with safe_open(out / shards[0], "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta["lsmerge_config"]) == {"k": 1} and "lsmerge_version" in meta
    a = AutoModelForCausalLM.from_pretrained(tiny_llama)
    b = AutoModelForCausalLM.from_pretrained(out)
    x = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(a(x).logits, b(x).logits)
    assert not [p for p in tmp_path.iterdir() if "lsmerge-tmp" in p.name]


def test_writer_is_byte_deterministic(tiny_llama, tmp_path):
    store = open_checkpoint(tiny_llama)
    for out in ("a", "b"):
        with CheckpointWriter(tmp_path / out, source=tiny_llama, max_shard_size="16KB", config={"x": [1, 2]}) as w:
            for name, t in store.items():
                w.add(name, t)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_writer_header_overflow_rewrites_shard(tmp_path):
    tensors = {f"t.{i:03d}.weight": torch.full((3,), float(i)) for i in range(50)}
    with CheckpointWriter(tmp_path / "out", header_reserve=64) as w:
        for k, v in tensors.items():
            w.add(k, v)
    store = open_checkpoint(tmp_path / "out")
    assert store.names == list(tensors)
    for k, v in tensors.items():
        assert torch.equal(store.get(k), v)


def test_writer_dtype_cast_and_bf16(tmp_path):
    with CheckpointWriter(tmp_path / "out", dtype=torch.bfloat16) as w:
        w.add("a.weight", torch.randn(4, 4))
        w.add("ids", torch.arange(3))
    store = open_checkpoint(tmp_path / "out")
    assert store.dtype("a.weight") == torch.bfloat16 and store.dtype("ids") == torch.int64


def test_writer_error_inside_block_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with CheckpointWriter(out) as w:
            w.add("a", torch.zeros(2))
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_only_tmp_which_next_run_cleans(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from lsmerge.io import CheckpointWriter
        with CheckpointWriter({str(out)!r}) as w:
            w.add("a", torch.zeros(1000))
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = list(tmp_path.iterdir())
    assert not out.exists() and len(left) == 1 and "lsmerge-tmp" in left[0].name
    assert clean_stale_tmp(out) == left
    with CheckpointWriter(out) as w:
        w.add("a", torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("5MiB") == 5 * 2**20 and parse_size(123) == 123
    with pytest.raises(LsMergeError):
        parse_size("lots")


# -- bad input: one clear error, nothing written -------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(LsMergeError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LsMergeError, match="no weights"):
        open_checkpoint(tmp_path)


def test_corrupted_header(tmp_path):
    (tmp_path / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    with pytest.raises(LsMergeError, match="not a valid safetensors"):
        open_checkpoint(tmp_path)


def test_truncated_file(tmp_path):
    save_file({"w": torch.randn(100)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-50])
    with pytest.raises(LsMergeError, match="truncated"):
        open_checkpoint(tmp_path)


def test_pickle_file_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(LsMergeError, match="weights_only"):
        open_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(LsMergeError, match="pickle"):
        open_checkpoint(tmp_path / "pytorch_model.bin")


def test_output_folder_exists(tiny_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LsMergeError, match="not empty"):
        CheckpointWriter(out)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_output_inside_input(tiny_llama):
    before = _files(tiny_llama)
    with pytest.raises(LsMergeError, match="overlaps input"):
        CheckpointWriter(tiny_llama / "merged", inputs=[tiny_llama])
    with pytest.raises(LsMergeError, match="overlaps input"):
        CheckpointWriter(tiny_llama, source=tiny_llama, overwrite=True)
    assert _files(tiny_llama) == before


def test_overwrite_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with CheckpointWriter(out) as w:
        w.add("a", torch.zeros(2))
    with pytest.raises(RuntimeError):
        with CheckpointWriter(out, overwrite=True) as w:
            w.add("a", torch.ones(2))
            raise RuntimeError("crash")
    assert torch.equal(open_checkpoint(out).get("a"), torch.zeros(2))
    with CheckpointWriter(out, overwrite=True) as w:
        w.add("a", torch.ones(2))
    assert torch.equal(open_checkpoint(out).get("a"), torch.ones(2))
