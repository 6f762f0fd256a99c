"""Shared fixtures: tiny checkpoints built in the test session (no downloads).

`make_tiny_llama` saves one random tiny Llama; `tiny_world` (session scope) is the shared set
most tests merge: a base, two experts, a copy of the first expert, a deeper and wider model,
each saved with the word-level tokenizer of `lsmerge.io.tiny`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_tiny_llama(path, seed: int = 0, layers: int = 2, hidden: int = 32, vocab: int = 128, tie: bool = False,
                    tokenizer: bool = False):
    """Save a random tiny Llama checkpoint (safetensors) at `path` and return the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=tie, max_position_embeddings=256,
        pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    if tokenizer:
        from lsmerge.io.tiny import tiny_tokenizer

        tiny_tokenizer().save_pretrained(path)
    return model


@pytest.fixture
def tiny_llama(tmp_path):
    path = tmp_path / "tiny_llama"
    make_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> SimpleNamespace:
    """Paths of tiny Llamas with one tokenizer: `base`, `e1`, `e2` (2 layers, width 32), `e1_copy`
    (a byte copy of e1 in another folder), `deep` (3 layers, width 48); and `text`, a held-out file."""
    root = Path(tmp_path_factory.mktemp("tiny_world"))
    for name, seed in (("base", 0), ("e1", 1), ("e2", 2)):
        make_tiny_llama(root / name, seed=seed, tokenizer=True)
    shutil.copytree(root / "e1", root / "e1_copy")
    make_tiny_llama(root / "deep", seed=3, layers=3, hidden=48, tokenizer=True)
    from lsmerge.io.tiny import TINY_WORDS

    g = torch.Generator().manual_seed(5)
    (root / "text.txt").write_text(" ".join(TINY_WORDS[i] for i in torch.randint(len(TINY_WORDS), (400,), generator=g).tolist()) + "\n")
    return SimpleNamespace(root=root, text=root / "text.txt",
                           **{n: root / n for n in ("base", "e1", "e2", "e1_copy", "deep")})


def tiny_causal_lm(seed: int, layers: int = 4, **config):
    """An in-memory random tiny Llama in eval mode (hidden 32, vocab 128) for hidden-state tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, initializer_range=0.2, **config,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()
