"""Shared data for the perplexity tests: Shakespeare words and a word-level tokenizer trained on
them (tiny models and the tokenizer builder come from conftest)."""

from __future__ import annotations

import torch

from conftest import word_tokenizer as _word_tokenizer

WORDS = (
    "to be or not to be that is the question whether tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune or to take arms against a sea of troubles"
).split()
TRAIN_TEXT = " ".join(WORDS)


def sample_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx.tolist()) + "\n"


def word_tokenizer():
    """A WordLevel tokenizer trained here on TRAIN_TEXT, wrapped for transformers."""
    return _word_tokenizer([TRAIN_TEXT], unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")
