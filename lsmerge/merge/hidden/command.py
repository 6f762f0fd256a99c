"""`lsmerge generate`: responses of a base model mixed with fine-tuned models' hidden states.

Loads the checkpoints (local folders, safetensors), reads the prompts, runs
`generation.DualModelGenerator` and prints the responses or writes them as JSONL, one
object per prompt: {"index", "prompt", "response", "finish_reason", "num_prompt_tokens",
"num_new_tokens", "operator", "mix_layer", "beta", "alpha", "tokens"}.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import atomic_path
from lsmerge.io.hf import load_causal_lm, load_tokenizer, resolve_model
from lsmerge.io.text import EncodingErrors
from lsmerge.merge.hidden.base import OPERATORS, TokenMode, operator_names
from lsmerge.merge.hidden.generation import DualModelGenerator
from lsmerge.merge.hidden.mixer import MixSpec
from lsmerge.merge.hidden.prompts import read_prompts
from lsmerge.merge.hidden.steering import load_deltas

# The registered operator names as a typed choice (jsonargparse validates and lists them).
OperatorName = Literal[tuple(OPERATORS)]  # type: ignore[valid-type]


def generate(
    *,
    base: str,
    prompts: str | list[str],
    fine_tuned: list[str] | None = None,
    operator: OperatorName | None = "slerp",
    mix_layer: int = 0,
    beta: float = 0.5,
    tokens: TokenMode = "last",
    weights: list[float] | None = None,
    steering_deltas: str | None = None,
    steer_layers: list[int] | None = None,
    alpha: float = 1.0,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    chat_template: bool = True,
    dtype: str = "float32",
    device: str = "cpu",
    output: str | None = None,
    overwrite: bool = False,
    encoding_errors: EncodingErrors = "strict",
) -> None:
    """Generate with hidden-state mixing (LERP / SLERP / mean) or task-vector steering.

    Args:
        base: base model checkpoint folder or name under checkpoints/base/ (its tokenizer and LM head are used).
        prompts: a prompt file (.txt one per line, .jsonl with "prompt" or "messages") or a list.
        fine_tuned: fine-tuned checkpoint folders or names (one for lerp / slerp, one or more for mean, none for steer).
        operator: lerp | slerp | mean | steer, or null for the plain base model.
        mix_layer: residual-stream index 0..N (L = input of decoder layer L; N = last layer output).
        beta: mixing ratio in [0, 1] (0 = base, 1 = fine-tuned) for lerp / slerp / mean.
        tokens: which positions are mixed: last | all | generated.
        weights: per fine-tuned model weights for mean (default equal).
        steering_deltas: .safetensors from `lsmerge steer` (operator steer).
        steer_layers: layers to steer (default: mix_layer).
        alpha: steering strength (operator steer).
        max_new_tokens: most tokens generated per prompt.
        temperature: 0 = greedy; > 0 samples.
        top_p: nucleus mass kept when sampling.
        seed: random seed for sampling.
        batch_size: prompts per batch (left-padded).
        chat_template: wrap plain prompts as a user message in the tokenizer's chat template.
        dtype: float32 | bfloat16 | float16.
        device: torch device.
        output: JSONL file to write; null prints the responses.
        overwrite: replace an existing output file.
        encoding_errors: strict (a prompt file that is not UTF-8 is an error) or replace (bad bytes become U+FFFD).
    """
    fine_tuned = list(fine_tuned or [])
    if output and os.path.exists(output) and not overwrite:
        raise LsMergeError(f"{output} exists; choose another output or set overwrite: true")
    spec = None
    if operator is not None:
        spec = MixSpec(operator, mix_layer, beta, tokens, tuple(weights) if weights else None, alpha)
        spec.check_sources(len(fine_tuned))
    elif fine_tuned:
        raise LsMergeError(
            f"fine_tuned models were given but operator is null; choose one of {', '.join(operator_names('one', 'many'))}"
        )
    deltas = None
    if spec is not None and spec.op.sources == "none":
        if not steering_deltas:
            raise LsMergeError("operator steer needs steering_deltas: compute them with `lsmerge steer`")
        deltas = load_deltas(steering_deltas)
    prompt_list = read_prompts(prompts, encoding_errors)
    base = str(resolve_model(base))  # folders, names under checkpoints/, tiny:DIR
    fine_tuned = [str(resolve_model(p)) for p in fine_tuned]
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(base)
    base_model = load_causal_lm(base, dtype, device)
    sources = [load_causal_lm(p, dtype, device) for p in fine_tuned]
    gen = DualModelGenerator(base_model, sources, spec, deltas=deltas, steer_layers=steer_layers, tokenizer=tokenizer)
    results = gen.generate(
        prompt_list,
        chat_template=chat_template,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        batch_size=batch_size,
    )
    rows = [
        {
            "index": r.index,
            "prompt": r.prompt,
            "response": r.text,
            "finish_reason": r.finish_reason,
            "num_prompt_tokens": r.num_prompt_tokens,
            "num_new_tokens": len(r.token_ids),
            "operator": operator,
            "mix_layer": mix_layer if spec else None,
            "beta": beta if spec and spec.op.strength == "beta" else None,
            "alpha": alpha if spec and spec.op.strength == "alpha" else None,
            "tokens": tokens if spec else None,
        }
        for r in results
    ]
    if output:
        with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} responses to {output}")
    else:
        for row in rows:
            print(f"### [{row['index']}] {row['prompt']}\n{row['response']}\n")
