"""A base / expert pair and one held-out text, scored by perplexity under weight, hidden-state and
latent merges: the evaluation behind the `BaselineMerges` callback, usable without Lightning.

The models (base, expert, and one working copy of the base that merged state dicts are copied
into, tensor by tensor from the checkpoint stores) are loaded once by `load`, in eval mode.
Perplexity is `perplexity_of_ids` over sliding windows of `max_length` moved by `stride`, on one
tokenisation of the text (its tokenizer, or its UTF-8 bytes for tiny models without one).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Callable

import torch

from lsmerge.codecs.base import Codec
from lsmerge.errors import LsMergeError
from lsmerge.evaluate.perplexity import encode_text, perplexity_of_ids
from lsmerge.io.hf import load_causal_lm, load_tokenizer
from lsmerge.io.store import CheckpointStore
from lsmerge.io.text import read_text
from lsmerge.merge import latent
from lsmerge.merge.hidden import HiddenStateMixer, MixedForward, MixSpec
from lsmerge.merge.weight import MergeMethod, TensorContext, linear_merge

BYTES = "bytes"
#: merge(name, W_base, W_expert) -> merged tensor
PairMerge = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]


def byte_ids(text: str, max_tokens: int, vocab_size: int) -> torch.Tensor:
    """(n,) token ids = the text's UTF-8 bytes, at most max_tokens + 1 (for tiny models without a
    tokenizer); every byte must be below the model's vocab_size."""
    ids = torch.tensor(list(text.encode("utf-8")[: max_tokens + 1]), dtype=torch.long)
    if ids.numel() and int(ids.max()) >= vocab_size:
        raise LsMergeError(
            f"tokenizer: bytes gives token id {int(ids.max())}, but the model's vocabulary has {vocab_size} entries. "
            "Use an ASCII text (bytes < 128) or give the model's tokenizer folder."
        )
    return ids


class PairBench:
    """Perplexity of a base / expert pair and of their merges on one held-out text.

    Args:
        base, expert: the pair's checkpoint stores (same architecture, checked by the caller).
        text: held-out plain-text file; tokenizer: tokenizer folder, None (the base's) or "bytes".
        max_tokens: tokens of the text scored (a prefix); max_length, stride, batch_size: windows.
        dtype: dtype name of the loaded models.
        encoding_errors: strict (the text must be UTF-8) or replace.
    """

    def __init__(self, base: CheckpointStore, expert: CheckpointStore, text: Path, tokenizer: str | None, *,
                 max_tokens: int, max_length: int, stride: int, batch_size: int, dtype: str,
                 encoding_errors: str = "strict"):
        self.base_store, self.expert_store, self.text, self.tokenizer = base, expert, text, tokenizer
        self.max_tokens, self.max_length, self.stride, self.batch_size, self.dtype = max_tokens, max_length, stride, batch_size, dtype
        self.models: dict[str, torch.nn.Module] | None = None
        self.ids: torch.Tensor | None = None
        self.pad_id = 0
        self.encoding_errors = encoding_errors

    def load(self) -> None:
        """Load base, expert and the working copy; tokenize the text."""
        base = load_causal_lm(self.base_store.path, self.dtype)
        expert = load_causal_lm(self.expert_store.path, self.dtype)
        state = base.state_dict()
        missing = [n for n in self.base_store.names if n not in state]
        if missing:
            raise LsMergeError(
                f"tensor {missing[0]!r} of {self.base_store.path} is not a parameter of the loaded model; the checkpoint's "
                "names must match transformers' own (re-save it with save_pretrained)."
            )
        text = read_text(self.text, "held-out text", self.encoding_errors)
        if self.tokenizer == BYTES:
            self.ids = byte_ids(text, self.max_tokens, base.config.vocab_size)
        else:
            tok = load_tokenizer(self.tokenizer or self.base_store.path)
            tok.model_max_length = int(1e12)  # we window ourselves
            self.ids = encode_text(tok, text, self.max_tokens)
            self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        if self.ids.numel() < 2:
            raise LsMergeError(f"{self.text} gives {self.ids.numel()} token(s); at least 2 are needed to score one. Use a longer text.")
        self.models = {"base": base, "expert": expert, "merged": copy.deepcopy(base)}

    def to(self, device) -> None:
        for m in self.models.values():
            m.to(device)

    def perplexity(self, model, device) -> float:
        with torch.inference_mode():
            ppl, *_ = perplexity_of_ids(model, self.ids, max_length=self.max_length, stride=self.stride,
                                        batch_size=self.batch_size, pad_id=self.pad_id, device=device)  # fmt: skip
        return ppl

    def load_merge(self, merge: PairMerge) -> torch.nn.Module:
        """The working copy holding merge(name, W_base, W_expert) of every floating tensor (the
        base's otherwise), copied in one tensor at a time from the stores."""
        model = self.models["merged"]
        state = model.state_dict()
        with torch.no_grad():
            for name in self.base_store.names:
                b = self.base_store.get(name)
                out = merge(name, b, self.expert_store.get(name)) if b.is_floating_point() else b
                state[name].copy_(out.to(device=state[name].device, dtype=state[name].dtype))
        return model

    def inputs(self, device) -> dict[str, float]:
        """The pair as it is: {"base": ppl, "expert": ppl}."""
        return {"base": self.perplexity(self.models["base"], device), "expert": self.perplexity(self.models["expert"], device)}

    def weight_merge(self, method: MergeMethod, params: dict, device) -> float:
        """A registered weight-space method on [base, expert] (on the expert's task vector when the
        method takes a base)."""
        task = method.base == "required"
        model = self.load_merge(lambda n, b, e: method.merge([e] if task else [b, e], b if task else None, params, TensorContext(n)))
        return self.perplexity(model, device)

    def hidden_mix(self, spec: MixSpec, device) -> float:
        """The base with the expert's residual stream mixed in at `spec.mix_layer`."""
        base = self.models["base"]
        with HiddenStateMixer(base, spec) as mixer:
            return self.perplexity(MixedForward(base, [self.models["expert"]], mixer), device)

    def latent_lerp(self, codec: Codec, lam: float, device) -> float:
        """W = D((1 - lam) E(W_base) + lam E(W_expert)) for the tensors the codec covers, weight
        LERP at lam for the rest."""

        def merge(name, b, e):
            if not codec.covers(name):
                return linear_merge([b, e], [1.0 - lam, lam])
            return codec.decode(name, latent.apply("lerp", [codec.encode(name, b), codec.encode(name, e)], lam=lam))

        return self.perplexity(self.load_merge(merge), device)


def format_table(rows: dict[str, float], tokens: int) -> str:
    """Markdown table: row, perplexity, ratio to the base's."""
    base = rows.get("base", float("nan"))
    lines = [f"perplexity on {tokens} held-out tokens", "", "| model | perplexity | / base |", "| --- | ---: | ---: |"]
    for name, ppl in rows.items():
        ratio = ppl / base if base and math.isfinite(base) else float("nan")
        lines.append(f"| {name} | {ppl:.4f} | {ratio:.3f} |")
    return "\n".join(lines)
