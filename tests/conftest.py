"""Shared fixtures: tiny checkpoints built in the test session (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_tiny_llama(path, seed: int = 0, layers: int = 2, hidden: int = 32, vocab: int = 128, tie: bool = False):
    """Save a random tiny Llama checkpoint (safetensors) at `path` and return the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=tie, max_position_embeddings=256,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture
def tiny_llama(tmp_path):
    path = tmp_path / "tiny_llama"
    make_tiny_llama(path)
    return path


def tiny_causal_lm(seed: int, layers: int = 4, **config):
    """An in-memory random tiny Llama in eval mode (hidden 32, vocab 128) for hidden-state tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, initializer_range=0.2, **config,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()
