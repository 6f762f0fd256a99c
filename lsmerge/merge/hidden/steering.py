"""Steering deltas (task vectors in representation space) and the `lsmerge steer` command.

For each residual-stream index l (0..N, as in `lsmerge.merge.hidden.hooks`):

    delta_l = (1 / |T|) * sum_{(p, t) in T} ( h_ft,l(p)_t - h_base,l(p)_t )

where T is the set of all real (non-padding) token positions t of all prompts p in the prompt
set: a token-weighted mean over the prompt tokens, so long prompts weigh more than short ones.
Both models read the same token ids (the base's tokenizer and, by default, its chat template).
The deltas are saved as safetensors, one float32 tensor of shape (hidden,) per layer under the
key "layers.<l>", with metadata naming the models, the number of prompts and tokens and the
aggregation; `load_deltas` reads them back for `lsmerge generate` (operator: steer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from safetensors.torch import load_file, save
from torch import nn

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import write_bytes_atomic
from lsmerge.merge.hidden.hooks import ResidualRecorder, check_mix_layer, num_layers
from lsmerge.io.text import EncodingErrors
from lsmerge.merge.hidden.prompts import encode_prompts, left_pad, position_ids_from_mask, read_prompts

AGGREGATION = "token-weighted mean over all non-padding prompt tokens of h_ft - h_base"


@torch.no_grad()
def _residual_streams(model: nn.Module, layers: Sequence[int], input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """{layer: (batch, seq, hidden) float32 residual stream} of one forward of the model body (no LM head)."""
    with ResidualRecorder(model, layers) as rec:
        getattr(model, "base_model", model)(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
    return {layer: h.float() for layer, h in rec.states.items()}


@torch.no_grad()
def compute_deltas(
    base: nn.Module,
    fine_tuned: nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> tuple[dict[int, torch.Tensor], int]:
    """Per-layer token-weighted mean of h_ft - h_base over the prompts (see module doc).

    Returns ({layer: (hidden,) float32 delta}, number of tokens averaged).
    """
    n = num_layers(base)
    for layer in layers:
        check_mix_layer(layer, n, what="the base model")
        check_mix_layer(layer, num_layers(fine_tuned), what="the fine-tuned model")
    if not prompt_ids:
        raise LsMergeError("no prompts given: steering deltas are averaged over a prompt set")
    device = next(base.parameters()).device
    sums = {layer: torch.zeros(base.config.hidden_size, dtype=torch.float64) for layer in layers}
    count = 0
    for start in range(0, len(prompt_ids), batch_size):
        ids, mask = left_pad(prompt_ids[start : start + batch_size], pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        hb = _residual_streams(base.eval(), layers, ids, mask)
        hf = _residual_streams(fine_tuned.eval(), layers, ids, mask)
        real = mask.bool()
        for layer in layers:
            sums[layer] += (hf[layer] - hb[layer])[real].double().sum(dim=0).cpu()
        count += int(real.sum())
    return {layer: (s / count).float() for layer, s in sums.items()}, count


def save_deltas(deltas: dict[int, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    tensors = {f"layers.{layer}": d.contiguous() for layer, d in deltas.items()}
    # serialised in memory (deltas are small) so a failed write is an OSError naming the path
    write_bytes_atomic(path, save(tensors, metadata={k: str(v) for k, v in metadata.items()}))


def load_deltas(path: str) -> dict[int, torch.Tensor]:
    """{layer: (hidden,) float32} from a file written by `lsmerge steer`."""
    if not os.path.isfile(path):
        raise LsMergeError(f"steering deltas file {path} not found; compute it with `lsmerge steer`")
    raw = load_file(path)
    try:
        return {int(k.split(".", 1)[1]): v.float() for k, v in raw.items()}
    except (IndexError, ValueError):
        raise LsMergeError(f"{path} is not a steering deltas file (keys must be 'layers.<index>')") from None


def steer(
    *,
    base: str,
    fine_tuned: str,
    prompts: str | list[str],
    output: str,
    layers: list[int] | None = None,
    chat_template: bool = True,
    batch_size: int = 8,
    dtype: str = "float32",
    device: str = "cpu",
    overwrite: bool = False,
    encoding_errors: EncodingErrors = "strict",
) -> None:
    """Compute steering deltas (mean of h_ft - h_base over prompt tokens, per layer) to safetensors.

    Args:
        base: base model checkpoint folder or name under checkpoints/base/ (as merge takes them).
        fine_tuned: fine-tuned model checkpoint folder or name (same family as the base).
        prompts: a prompt file (.txt: one per line; .jsonl: {"prompt": ...} or {"messages": [...]}) or a list of prompts.
        output: the .safetensors file to write.
        layers: residual-stream indices to compute (default: all, 0..N).
        chat_template: wrap prompts in the tokenizer's chat template.
        batch_size: prompts per forward pass.
        dtype: model dtype (float32, bfloat16, float16).
        device: torch device.
        overwrite: replace an existing output file.
        encoding_errors: strict (a prompt file that is not UTF-8 is an error) or replace (bad bytes become U+FFFD).
    """
    from lsmerge.io.hf import load_causal_lm, load_tokenizer, resolve_model

    if os.path.exists(output) and not overwrite:
        raise LsMergeError(f"{output} exists; choose another output or set overwrite: true")
    prompt_list = read_prompts(prompts, encoding_errors)
    base_path, ft_path = str(resolve_model(base)), str(resolve_model(fine_tuned))  # folders or names
    tokenizer = load_tokenizer(base_path)
    base_model = load_causal_lm(base_path, dtype, device)
    ft_model = load_causal_lm(ft_path, dtype, device)
    layer_list = list(range(num_layers(base_model) + 1)) if layers is None else list(layers)
    ids = encode_prompts(tokenizer, prompt_list, chat_template=chat_template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    deltas, count = compute_deltas(base_model, ft_model, ids, layer_list, batch_size=batch_size, pad_token_id=pad)
    meta = {
        "base": base,
        "fine_tuned": fine_tuned,
        "num_prompts": len(prompt_list),
        "num_tokens": count,
        "aggregation": AGGREGATION,
        "layers": json.dumps(layer_list),
        "convention": "layers.<l> = residual stream entering decoder layer l (l = N: last layer output)",
    }
    save_deltas(deltas, output, meta)
    print(f"wrote {len(deltas)} steering deltas ({count} tokens, {len(prompt_list)} prompts) to {output}")
