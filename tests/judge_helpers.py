"""Shared data for the judge tests: response sets as `lsmerge generate` writes them, a word-level
tokenizer that covers the judging prompt, a tiny judge checkpoint and a scripted judge."""

from __future__ import annotations

import json
import re

from lsmerge.evaluate.judge.verdicts import JUDGE_INSTRUCTION, JUDGE_QUESTION, Verdict
from conftest import make_tiny_llama, word_tokenizer

PROMPTS = ["name a fruit", "say hello", "count to three", "what is two plus two"]
GOOD = ["apple good", "hello good", "one two three good", "four good"]
BAD = ["rock", "bye", "five", "seven"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def response_set(path, responses, prompts=PROMPTS, **extra):
    """A response set in the format `lsmerge generate` writes."""
    rows = [{"index": i, "prompt": p, "response": r, "finish_reason": "eos", "operator": None, **extra}
            for i, (p, r) in enumerate(zip(prompts, responses))]  # fmt: skip
    return write_jsonl(path, rows)


def good_and_bad_sets(tmp_path):
    """A (all good responses) and B (all bad), in different orders."""
    a = response_set(tmp_path / "good.jsonl", GOOD)
    b = response_set(tmp_path / "bad.jsonl", BAD[::-1], prompts=PROMPTS[::-1])
    return a, b


def judge_tokenizer(chat: bool, verdict_words: bool = True):
    """A word-level tokenizer trained here on the judging prompt's words (vocab < 128)."""
    words = " ".join([JUDGE_INSTRUCTION, JUDGE_QUESTION, *PROMPTS, *GOOD, *BAD, "Answer :"])
    if not verdict_words:
        words = re.sub(r"\b[AB]\b", "", words)
    template = "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    wrapped = word_tokenizer([words], specials=["[UNK]", "[PAD]", "<s>", "<|user|>", "<|assistant|>"],
                             chat_template=template if chat else None, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")
    assert wrapped.backend_tokenizer.get_vocab_size() <= 128
    return wrapped


def make_judge_model(path):
    """A tiny Llama judge saved at `path` with the chat tokenizer; (path, model)."""
    model = make_tiny_llama(path, seed=3, hidden=32)
    judge_tokenizer(chat=True).save_pretrained(path)
    return path, model


class FixedJudge:
    """Answers from a function of the ask; records every ask."""

    def __init__(self, answer):
        self.answer, self.asks, self.name = answer, [], "fixed"

    def judge(self, asks):
        self.asks += asks
        return [Verdict(self.answer(a)) for a in asks]
