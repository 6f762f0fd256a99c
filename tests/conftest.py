"""Shared fixtures: tiny checkpoints built in the test session (no downloads).

`make_tiny_llama` / `make_tiny_model` save one random tiny model (any size, vocabulary, config
field, or a Gemma-3) and `tiny_causal_lm` builds one in memory: every test gets its tiny models
here. Session fixtures share the common ones: `tiny_world` (a base, three experts, a copy of the
first expert, a deeper and wider model, each saved with the word-level tokenizer of
`lsmerge.io.tiny`), `tiny_llamas_3layer`, `tiny_lms` (in memory) and `vae_llama`.
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


def tiny_config(family: str = "llama", layers: int = 2, hidden: int = 32, vocab: int = 128, **config):
    """The config of a tiny random model: MLP 2 x hidden, 4 heads / 2 KV heads; `family` "llama" or
    "gemma3" (head_dim hidden / 4, sliding window 16); `config` sets or overrides any other field."""
    from transformers import Gemma3TextConfig, LlamaConfig

    args = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=vocab)  # fmt: skip
    if family == "gemma3":
        args.update(head_dim=hidden // 4, max_position_embeddings=256, sliding_window=16)
        return Gemma3TextConfig(**{**args, **config})
    if family != "llama":
        raise ValueError(f"no tiny {family!r} model")
    return LlamaConfig(**{**args, **config})


def _tiny_model(seed: int | None, family: str, layers: int, hidden: int, vocab: int, **config):
    """A random tiny causal LM in eval mode; `seed` None draws from the global RNG as it stands."""
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    cls = Gemma3ForCausalLM if family == "gemma3" else LlamaForCausalLM
    return cls(tiny_config(family, layers, hidden, vocab, **config)).eval()


def make_tiny_model(path, seed: int | None = 0, layers: int = 2, hidden: int = 32, vocab: int = 128, tie: bool | None = None,
                    tokenizer=False, family: str = "llama", **config):
    """Save a random tiny checkpoint (safetensors) at `path` and return the model.

    Llama defaults: max_position_embeddings 256, pad id 1, bos = eos id 2 (override through
    `config`). `tokenizer` True saves the word-level tokenizer of `lsmerge.io.tiny` beside it; a
    tokenizer object saves that one. `tie` None keeps the family's default (Llama: untied)."""
    if tie is not None:
        config = {"tie_word_embeddings": tie, **config}
    if family == "llama":
        config = {"max_position_embeddings": 256, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2, **config}
    model = _tiny_model(seed, family, layers, hidden, vocab, **config)
    model.save_pretrained(path)
    if tokenizer is True:
        from lsmerge.io.tiny import tiny_tokenizer

        tokenizer = tiny_tokenizer()
    if tokenizer is not False and tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def make_tiny_llama(path, seed: int | None = 0, layers: int = 2, hidden: int = 32, vocab: int = 128, tie: bool = False,
                    tokenizer=False, **config):
    """`make_tiny_model` for a Llama."""
    return make_tiny_model(path, seed, layers, hidden, vocab, tie, tokenizer, family="llama", **config)


@pytest.fixture
def tiny_llama(tmp_path):
    path = tmp_path / "tiny_llama"
    make_tiny_llama(path)
    return path


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> SimpleNamespace:
    """Paths of tiny Llamas with one tokenizer: `base`, `e1`, `e2`, `e3` (seeds 0-3; 2 layers, width 32), `e1_copy`
    (a byte copy of e1 in another folder), `deep` (3 layers, width 48); and `text`, a held-out file."""
    root = Path(tmp_path_factory.mktemp("tiny_world"))
    for name, seed in (("base", 0), ("e1", 1), ("e2", 2), ("e3", 3)):
        make_tiny_llama(root / name, seed=seed, tokenizer=True)
    shutil.copytree(root / "e1", root / "e1_copy")
    make_tiny_llama(root / "deep", seed=3, layers=3, hidden=48, tokenizer=True)
    from lsmerge.io.tiny import TINY_WORDS

    g = torch.Generator().manual_seed(5)
    (root / "text.txt").write_text(" ".join(TINY_WORDS[i] for i in torch.randint(len(TINY_WORDS), (400,), generator=g).tolist()) + "\n")
    return SimpleNamespace(root=root, text=root / "text.txt",
                           **{n: root / n for n in ("base", "e1", "e2", "e3", "e1_copy", "deep")})


@pytest.fixture(scope="session")
def tiny_lms():
    """Two in-memory `tiny_causal_lm`s, seeds 0 and 1 (4 layers): a base and a fine-tune. Shared by the
    session: tests must not change their weights."""
    return tiny_causal_lm(0), tiny_causal_lm(1)


@pytest.fixture(scope="session")
def tiny_llamas_3layer(tmp_path_factory) -> dict:
    """Paths `A`, `B`, `C` of saved tiny Llamas (seeds 0, 1, 2; 3 layers, width 32; no tokenizer)."""
    root = Path(tmp_path_factory.mktemp("llamas_3layer"))
    for i, name in enumerate("ABC"):
        make_tiny_llama(root / name, seed=i, layers=3)
    return {name: root / name for name in "ABC"}


@pytest.fixture(scope="session")
def vae_llama(tmp_path_factory) -> str:
    """A tiny Llama of width 64 (seed 0, LlamaConfig's default token ids): the weights of
    `lsmerge.io.tiny.make_tiny_llama`, which configs/vae/tiny.yaml trains on."""
    path = Path(tmp_path_factory.mktemp("vae_llama")) / "tiny-llama"
    make_tiny_llama(path, seed=0, hidden=64, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    return str(path)


def tiny_causal_lm(seed: int | None, layers: int = 4, hidden: int = 32, vocab: int = 128, family: str = "llama",
                   **config):
    """An in-memory random tiny model in eval mode (hidden 32, vocab 128) for hidden-state tests.

    Llama defaults here: max_position_embeddings 128, initializer_range 0.2 (override through
    `config`); `seed` None draws from the global RNG as it stands."""
    if family == "llama":
        config = {"max_position_embeddings": 128, "initializer_range": 0.2, **config}
    return _tiny_model(seed, family, layers, hidden, vocab, **config)
