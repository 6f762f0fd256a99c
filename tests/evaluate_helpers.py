"""Shared data for the perplexity tests: Shakespeare words, an unsaved tiny Llama, a word-level
tokenizer trained on the words."""

from __future__ import annotations

import torch

WORDS = (
    "to be or not to be that is the question whether tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune or to take arms against a sea of troubles"
).split()
TRAIN_TEXT = " ".join(WORDS)


def sample_text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx.tolist()) + "\n"


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def word_tokenizer():
    """A WordLevel tokenizer trained here on TRAIN_TEXT, wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TRAIN_TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")
