"""A tiny random Llama checkpoint built on the spot, so recipes, demos and tests run without a
download (model reference `tiny[@SEED]:DIR`, see `lsmerge.io.hf.resolve_model`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lsmerge.io.writer import CheckpointWriter


def make_tiny_llama(out: str | os.PathLike, seed: int = 0) -> Path:
    """Create a tiny random Llama checkpoint (safetensors + config.json) in `out` if missing.

    hidden 64, MLP 128, 2 layers, 4 heads / 2 KV heads, vocab 128; Llama's own init
    (normal, std 0.02) under `torch.manual_seed(seed)`, so every machine gets the same weights.
    """
    out = Path(out).expanduser()
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out.resolve()
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    with CheckpointWriter(out, overwrite=True) as w:
        for name, t in model.state_dict().items():
            w.add(name, t)
        cfg.save_pretrained(w.tmp)
    return out.resolve()
