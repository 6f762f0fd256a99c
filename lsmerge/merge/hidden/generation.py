"""Dual-model generation with hidden-state mixing (one base model, N fine-tuned "source" models).

Each decoding step:

1. every source model runs its embeddings and `layers[:mix_layer]` only (`residual_stream`,
   its own KV cache), giving its residual stream at `mix_layer` for the new positions;
2. the base model runs in full (its own KV cache) with a `HiddenStateMixer` hook that replaces
   its residual stream at `mix_layer` by the operator's combination (lerp / slerp / mean), or a
   `Steerer` that adds alpha * delta (steer: no source model is run at all);
3. the next token is chosen from the base's last-position logits (float32): greedy when
   temperature == 0, else softmax(logits / temperature) restricted to the top-p nucleus
   (transformers' logits warpers) and sampled with a seeded `torch.Generator`.

So a step costs about 1 + N_src * mix_layer / num_layers base forwards (the sources never run their
upper layers, final norm or LM head) instead of 1 + N_src.

Batches are left-padded (`prompts.left_pad`); the attention mask marks real tokens and position ids
count real tokens only (position = cumsum(mask) - 1), so each prompt's greedy continuation does not depend on the
batch it is in (up to float rounding). A row stops at its first EOS token (the EOS is kept in
`token_ids`, dropped from `text`); the batch stops when every row has, or after
`max_new_tokens`. With sampling, the random stream is shared by the batch: results depend on
`seed` and on the batching.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache, TemperatureLogitsWarper, TopPLogitsWarper

from lsmerge.errors import LsMergeError
from lsmerge.merge.hidden.hooks import cache_kwargs, check_mix_layer, num_layers, residual_stream
from lsmerge.merge.hidden.mixer import HiddenStateMixer, MixSpec, Steerer
from lsmerge.merge.hidden.prompts import Prompt, encode_prompts, left_pad, position_ids_from_mask


@dataclass
class Generation:
    """One prompt's result: generated ids (EOS included when hit), decoded text, why it stopped."""

    index: int
    token_ids: list[int]
    finish_reason: str  # "eos" | "length"
    num_prompt_tokens: int
    prompt: Prompt | None = None
    text: str | None = None
    extra: dict = field(default_factory=dict)


# -- sampling ----------------------------------------------------------------------------------


def sample_next_token(
    logits: torch.Tensor, *, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Choose one token per row from (batch, vocab) logits -> (batch,) long.

    temperature == 0: argmax. Otherwise p = softmax(logits / temperature); top_p < 1 keeps the
    smallest set of most likely tokens whose probability reaches top_p (the most likely token
    always stays), renormalises, and samples with `generator`. The logits are warped by
    transformers' `TemperatureLogitsWarper` and `TopPLogitsWarper` (as `model.generate` does).
    """
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise LsMergeError(f"temperature={temperature} must be >= 0 and top_p={top_p} in (0, 1]")
    logits = logits.float()
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    scores = TemperatureLogitsWarper(temperature)(None, logits)
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p)(None, scores)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def default_eos_ids(model: nn.Module, tokenizer=None) -> list[int]:
    """EOS ids from the model's generation config and the tokenizer (deduplicated)."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for source in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if source is None:
            continue
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if int(i) not in ids:
                ids.append(int(i))
    return ids


# -- the generator -----------------------------------------------------------------------------


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class DualModelGenerator:
    """Generate with a base model whose residual stream is mixed with source models' at one layer.

    Args:
        base: the base causal LM (its logits choose the tokens).
        sources: fine-tuned causal LMs of the same family (same hidden size and vocabulary);
            empty for `steer` or for plain base generation.
        spec: what to mix, or None for plain base generation.
        deltas: {layer: (hidden,) delta} for `steer`; None otherwise.
        steer_layers: layers to steer (default: `spec.mix_layer` only).
        tokenizer: used by `generate` (text in and out), not by `generate_ids`.
    """

    def __init__(
        self,
        base: nn.Module,
        sources: Sequence[nn.Module] = (),
        spec: MixSpec | None = None,
        *,
        deltas: dict[int, torch.Tensor] | None = None,
        steer_layers: Sequence[int] | None = None,
        tokenizer=None,
    ):
        self.base = base.eval()
        self.sources = [m.eval() for m in sources]
        self.spec = spec
        self.tokenizer = tokenizer
        n = num_layers(base)
        if spec is None:
            if self.sources:
                raise LsMergeError("source models were given without a mixing spec (operator, mix_layer, beta)")
        else:
            spec.check_sources(len(self.sources))
            check_mix_layer(spec.mix_layer, n, what="the base model")
            for i, m in enumerate(self.sources):
                check_mix_layer(spec.mix_layer, num_layers(m), what=f"fine-tuned model {i}")
                if m.config.hidden_size != base.config.hidden_size:
                    raise LsMergeError(
                        f"fine-tuned model {i} has hidden size {m.config.hidden_size}, the base "
                        f"{base.config.hidden_size}: hidden states can only be mixed within one model family"
                    )
                if m.get_input_embeddings().weight.shape[0] != base.get_input_embeddings().weight.shape[0]:
                    raise LsMergeError(
                        f"fine-tuned model {i} has a vocabulary of {m.get_input_embeddings().weight.shape[0]} "
                        f"tokens, the base {base.get_input_embeddings().weight.shape[0]}: they must share a tokenizer"
                    )
        self.deltas = None
        if spec is not None and spec.op.sources == "none":
            if not deltas:
                raise LsMergeError("operator 'steer' needs steering deltas; compute them with `lsmerge steer`")
            layers = list(steer_layers) if steer_layers else [spec.mix_layer]
            missing = [layer for layer in layers if layer not in deltas]
            if missing:
                raise LsMergeError(
                    f"the steering deltas have no entry for layer(s) {missing} (they cover {sorted(deltas)}); "
                    "recompute them with `lsmerge steer --layers ...`"
                )
            for layer in layers:
                check_mix_layer(layer, n, what="the base model")
            self.deltas = {layer: deltas[layer] for layer in layers}

    def _hook(self):
        spec = self.spec
        if spec is None:
            return nullcontext(None)
        if spec.op.sources == "none":
            return Steerer(self.base, self.deltas, spec.alpha, spec.tokens, spec.operator)
        return HiddenStateMixer(self.base, spec)

    @torch.no_grad()
    def _generate_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        generator: torch.Generator | None,
        eos_ids: torch.Tensor,
        pad_token_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, prompt_len) left-padded prompts -> ((batch, steps) new ids, (batch,) bool hit-EOS)."""
        device = _model_device(self.base)
        ids, attn = input_ids.to(device), attention_mask.to(device)
        pos = position_ids_from_mask(attn)
        batch = ids.shape[0]
        base_cache = DynamicCache(config=self.base.config)
        source_caches = [DynamicCache(config=m.config) for m in self.sources]
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        steps: list[torch.Tensor] = []
        with self._hook() as hook:
            for step in range(max_new_tokens):
                if hook is not None:
                    hook.generating = step > 0
                if self.sources:
                    hook.enabled = False  # a source may be the base model object itself
                    try:
                        states = [
                            residual_stream(
                                m, self.spec.mix_layer, ids, attention_mask=attn, position_ids=pos, cache=cache
                            )
                            for m, cache in zip(self.sources, source_caches)
                        ]
                    finally:
                        hook.enabled = True
                    hook.set_sources(states)
                out = self.base(
                    input_ids=ids,
                    attention_mask=attn,
                    position_ids=pos,
                    use_cache=True,
                    **cache_kwargs(self.base, base_cache),
                    logits_to_keep=1,
                )
                token = sample_next_token(out.logits[:, -1, :], temperature=temperature, top_p=top_p, generator=generator)
                token = torch.where(finished, torch.full_like(token, pad_token_id), token)
                steps.append(token)
                finished |= torch.isin(token, eos_ids)
                if bool(finished.all()):
                    break
                ids = token[:, None]
                pos = pos[:, -1:] + 1
                attn = torch.cat([attn, torch.ones((batch, 1), dtype=attn.dtype, device=device)], dim=1)
        new = torch.stack(steps, dim=1) if steps else torch.empty((batch, 0), dtype=torch.long, device=device)
        return new.cpu(), finished.cpu()

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        batch_size: int = 8,
        eos_token_ids: Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ) -> list[Generation]:
        """Generate for token-id prompts; results in prompt order.

        Prompts are batched `batch_size` at a time after sorting by length (less padding).
        `eos_token_ids` default to the base's generation config; `pad_token_id` to the first EOS
        (or 0).
        """
        if max_new_tokens < 0 or batch_size < 1:
            raise LsMergeError(f"max_new_tokens={max_new_tokens} must be >= 0 and batch_size={batch_size} >= 1")
        eos = list(eos_token_ids) if eos_token_ids is not None else default_eos_ids(self.base, self.tokenizer)
        if pad_token_id is None:
            pad = getattr(self.tokenizer, "pad_token_id", None)
            pad_token_id = pad if pad is not None else (eos[0] if eos else 0)
        eos_t = torch.as_tensor(eos, dtype=torch.long, device=_model_device(self.base))
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=_model_device(self.base)).manual_seed(int(seed))
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        results: dict[int, Generation] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = left_pad([prompt_ids[i] for i in chunk], pad_token_id)
            new, hit_eos = self._generate_batch(
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                generator=generator,
                eos_ids=eos_t,
                pad_token_id=pad_token_id,
            )
            for row, i in enumerate(chunk):
                tokens = new[row].tolist()
                if hit_eos[row]:
                    first = next(k for k, t in enumerate(tokens) if t in eos)
                    tokens = tokens[: first + 1]
                results[i] = Generation(
                    index=i,
                    token_ids=tokens,
                    finish_reason="eos" if bool(hit_eos[row]) else "length",
                    num_prompt_tokens=len(prompt_ids[i]),
                )
        return [results[i] for i in range(len(prompt_ids))]

    def generate(self, prompts: Sequence[Prompt], *, chat_template: bool = True, **kwargs) -> list[Generation]:
        """Generate for text prompts (or chat message lists) and decode the responses.

        Keyword arguments are those of `generate_ids`.
        """
        if self.tokenizer is None:
            raise LsMergeError("generate() needs a tokenizer; pass tokenizer= or use generate_ids()")
        prompt_ids = encode_prompts(self.tokenizer, prompts, chat_template=chat_template)
        results = self.generate_ids(prompt_ids, **kwargs)
        eos = set(kwargs.get("eos_token_ids") or default_eos_ids(self.base, self.tokenizer))
        for r, p in zip(results, prompts):
            r.prompt = p
            body = [t for t in r.token_ids if t not in eos]
            r.text = self.tokenizer.decode(body, skip_special_tokens=True)
        return results

