"""Prompts for hidden-state generation and steering: reading, chat-template encoding, left padding.

A prompt is plain text or a list of chat messages [{"role": ..., "content": ...}]. Batches are
left-padded; position ids count real tokens only (position = cumsum(mask) - 1), so a prompt's
states do not depend on the batch it is in (up to float rounding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.text import read_text

Prompt = str | list[dict]  # plain text, or chat messages [{"role": ..., "content": ...}]


def read_prompts(prompts: str | list, encoding_errors: str = "strict") -> list:
    """Prompts from a list, a .txt file (one per non-empty line) or a .jsonl file ({"prompt": str}
    or {"messages": [{"role", "content"}, ...]} per line)."""
    if isinstance(prompts, list):
        items = prompts
    elif isinstance(prompts, str) and os.path.isfile(prompts):
        lines = [line for line in read_text(prompts, "prompt file", encoding_errors).splitlines() if line.strip()]
        if prompts.endswith(".jsonl"):
            items = []
            for k, line in enumerate(lines, 1):
                obj = json.loads(line)
                if "messages" in obj:
                    items.append(obj["messages"])
                elif "prompt" in obj:
                    items.append(obj["prompt"])
                else:
                    raise LsMergeError(f"{prompts}:{k}: each JSONL line needs a 'prompt' or 'messages' field")
        else:
            items = lines
    else:
        raise LsMergeError(f"prompt file {prompts!r} not found; give a .txt / .jsonl file or a list of prompts")
    if not items:
        raise LsMergeError("the prompt set is empty")
    return items


def encode_prompts(tokenizer, prompts: Sequence[Prompt], *, chat_template: bool = True) -> list[list[int]]:
    """Token ids of each prompt; with `chat_template`, strings become one user message and the
    tokenizer's template (with the generation prompt) is applied; chat messages require it."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    out = []
    for p in prompts:
        if isinstance(p, str) and not chat_template:
            out.append(list(tokenizer(p, add_special_tokens=True)["input_ids"]))
            continue
        if not has_template:
            raise LsMergeError(
                "the tokenizer has no chat template: set chat_template: false and give plain-text prompts"
            )
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def left_pad(prompt_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into (batch, max_len) `input_ids` and a 0/1 `attention_mask`."""
    if any(len(p) == 0 for p in prompt_ids):
        raise LsMergeError("an empty prompt was given: every prompt needs at least one token")
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for row, p in enumerate(prompt_ids):
        ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) positions counting real tokens only: cumsum(mask) - 1, pads get 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
