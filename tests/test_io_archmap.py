"""`lsmerge.io.archmap`: tensor names to (layer, kind) per architecture, module-kind selections."""

from __future__ import annotations

import pytest

from lsmerge.errors import LsMergeError
from lsmerge.io import ArchitectureMap, expand_kinds


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
