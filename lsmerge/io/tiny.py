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


#: the words the tiny tokenizer knows (a Shakespeare line, and the judge's verdict labels)
TINY_WORDS = ("to be or not to be that is the question whether tis nobler in the mind to suffer the slings and "
              "arrows of outrageous fortune or to take arms against a sea of troubles").split()


def tiny_tokenizer():
    """A word-level tokenizer over `TINY_WORDS` (+ "A", "B", "tie", "Answer", ":"), built here with no
    download: ids 0-2 are [UNK], [PAD] and <s> (bos = eos), so it fits a vocabulary of 128."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(TINY_WORDS) + " A B tie Answer :"],
                            trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>",
                                   eos_token="<s>")
