"""Hooks on the residual stream of decoder-only causal LMs.

Where (`mix_layer`)
    `mix_layer = L` names the residual stream *entering* decoder layer L (0-indexed), which is
    Hugging Face's `output_hidden_states[L]`: L = 0 is the token embeddings, L = N (the model's
    number of decoder layers) is the output of the last decoder layer, before the final norm.
    Mixing at L leaves every hidden state below L untouched, and a source model needs only its
    embeddings and `layers[:L]` to produce its state at L (`residual_stream`). The index is
    validated, never clamped: anything outside 0..N raises `LsMergeError` naming N.

Hooks are registered when a context is entered and always removed when it exits, exceptions
included. A hook finds the hidden state whether the decoder layer receives it positionally
(`layer(hidden_states, ...)`, transformers 5.x) or by keyword (`layer(hidden_states=...)`).
`ResidualRecorder` is the one recorder of residual streams at several layers.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lsmerge.errors import LsMergeError

HiddenEdit = Callable[[torch.Tensor], torch.Tensor]


def cache_kwargs(model: nn.Module, cache) -> dict:
    """`{name: cache}` for a causal LM's forward: `cache=` where the installed transformers takes
    it (5.x, where `past_key_values=` is deprecated), `past_key_values=` on older releases."""
    params = inspect.signature(model.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return {name: cache}
    return {_transformers_cache_name(): cache}  # a wrapper (PEFT) that passes **kwargs on


@functools.cache
def _transformers_cache_name() -> str:
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


# -- model structure ---------------------------------------------------------------------------


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (`model.model.layers` for Llama / Qwen2 / Gemma 3)."""
    body = getattr(model, "base_model", model)
    layers = getattr(body, "layers", None)
    if layers is None and hasattr(model, "model"):
        layers = getattr(model.model, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise LsMergeError(
            f"cannot find the decoder layers of {type(model).__name__}: hidden-state merging supports "
            "decoder-only models with `model.model.layers` (Llama, Qwen2, Mistral, Gemma 3, ...)"
        )
    return layers


def num_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def check_mix_layer(mix_layer: int, n_layers: int, *, what: str = "the model") -> int:
    """Validate a residual-stream index against a model with `n_layers` decoder layers (never clamps)."""
    if isinstance(mix_layer, bool) or not isinstance(mix_layer, int) or not 0 <= mix_layer <= n_layers:
        raise LsMergeError(
            f"mix_layer={mix_layer!r} is out of range: {what} has {n_layers} decoder layers, so mix_layer must "
            f"be an integer in 0..{n_layers} (0 = token embeddings, L = the input of decoder layer L, "
            f"{n_layers} = the output of the last layer)"
        )
    return mix_layer


def _replace_output(output, hidden):
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    raise TypeError(f"unexpected decoder layer output type {type(output).__name__}")


def _output_hidden(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def register_residual_hook(model: nn.Module, mix_layer: int, edit: HiddenEdit):
    """Register `edit(h) -> h` on the residual stream at `mix_layer`; returns the hook handle.

    L < N: a forward pre-hook on layers[L] (hidden states read from args[0] or
    kwargs["hidden_states"]); L = N: a forward hook on layers[N-1]'s output. `edit` receives
    (batch, seq, hidden) and may return the same object to leave it unchanged.
    """
    layers = decoder_layers(model)
    check_mix_layer(mix_layer, len(layers))
    if mix_layer < len(layers):

        def pre_hook(module, args, kwargs):
            if args:
                new = edit(args[0])
                return None if new is args[0] else ((new, *args[1:]), kwargs)
            if "hidden_states" not in kwargs:
                raise RuntimeError(f"{type(module).__name__} was called without hidden states")
            new = edit(kwargs["hidden_states"])
            return None if new is kwargs["hidden_states"] else (args, {**kwargs, "hidden_states": new})

        return layers[mix_layer].register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(module, args, kwargs, output):
        h = _output_hidden(output)
        new = edit(h)
        return None if new is h else _replace_output(output, new)

    return layers[-1].register_forward_hook(post_hook, with_kwargs=True)


class ResidualHooks:
    """Context manager owning hooks on the residual stream; all removed on exit, exceptions included.

    >>> with ResidualHooks(model, {12: edit_fn}):
    ...     model(input_ids)
    """

    def __init__(self, model: nn.Module, edits: dict[int, HiddenEdit]):
        n = num_layers(model)
        for layer in edits:
            check_mix_layer(layer, n)
        self.model = model
        self.edits = dict(edits)
        self.handles: list = []

    def __enter__(self):
        try:
            for layer, edit in self.edits.items():
                self.handles.append(register_residual_hook(self.model, layer, edit))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __exit__(self, *exc) -> None:
        self.remove()


class ResidualRecorder(ResidualHooks):
    """Context manager recording the residual streams at `layers` on each forward pass.

    `states[l]` is the (batch, seq, hidden) stream at layer l of the latest forward (detached,
    the model's dtype); the streams are recorded, not changed.

    >>> with ResidualRecorder(model, [0, 4]) as rec:
    ...     model(input_ids)
    >>> rec.states[4]
    """

    def __init__(self, model: nn.Module, layers: Sequence[int]):
        self.states: dict[int, torch.Tensor] = {}
        super().__init__(model, {int(layer): self._recorder(int(layer)) for layer in layers})

    def _recorder(self, layer: int) -> HiddenEdit:
        def edit(h: torch.Tensor) -> torch.Tensor:
            self.states[layer] = h.detach()
            return h

        return edit


# -- early exit: a source model runs only the layers below the mix layer ------------------------


class _ResidualReached(Exception):
    """Raised by a hook to stop a forward pass once the wanted residual stream is known."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__("residual stream reached")
        self.hidden = hidden


@torch.no_grad()
def residual_stream(
    model: nn.Module,
    mix_layer: int,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache=None,
) -> torch.Tensor:
    """The residual stream at `mix_layer`, running only the embeddings and layers[:mix_layer].

    The model's own forward (masks, rotary / sliding-window specifics, embedding scaling) runs
    unchanged; a hook raises once the stream at `mix_layer` is known, so the upper layers, the
    final norm and the LM head never run. A KV cache passed in is filled for layers[:mix_layer]
    only, which is all a later call at the same `mix_layer` reads.

    Args:
        input_ids: (batch, seq) token ids.
        attention_mask: (batch, past + seq) 0/1 mask (left padding), or None.
        position_ids: (batch, seq), or None for 0.. (+ cached length).
        cache: a transformers Cache, or None for no caching.

    Returns:
        (batch, seq, hidden) tensor.
    """
    body = getattr(model, "base_model", model)

    def stop(h: torch.Tensor) -> torch.Tensor:
        raise _ResidualReached(h)

    with ResidualHooks(model, {mix_layer: stop}):
        try:
            body(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=cache is not None,
                **cache_kwargs(body, cache),
            )
        except _ResidualReached as reached:
            return reached.hidden
    raise RuntimeError(f"{type(model).__name__} finished its forward without reaching residual stream {mix_layer}")
