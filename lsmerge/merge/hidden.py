"""Hidden-state (representation) merging: mix the residual streams of models while they run.

Where (`mix_layer`)
    `mix_layer = L` names the residual stream *entering* decoder layer L (0-indexed), which is
    Hugging Face's `output_hidden_states[L]`: L = 0 is the token embeddings, L = N (the model's
    number of decoder layers) is the output of the last decoder layer, before the final norm.
    Mixing at L leaves every hidden state below L untouched, and a source model needs only its
    embeddings and `layers[:L]` to produce its state at L (`residual_stream`). The index is
    validated, never clamped: anything outside 0..N raises `LsMergeError` naming N.

Operators (pure functions on tensors of shape (..., hidden); computed in float32, returned in
the dtype of `h_base`; beta = 0 returns `h_base` itself, bit for bit):

    lerp:   h = (1 - beta) * h_base + beta * h_ft
    slerp:  u = h_base / |h_base|, v = h_ft / |h_ft|, theta = arccos(<u, v>)
            d = sin((1 - beta) theta) / sin(theta) * u + sin(beta theta) / sin(theta) * v
            h = ((1 - beta) |h_base| + beta |h_ft|) * d / |d|
            (near-parallel or antipodal u, v, where sin(theta) < `small_angle`, use the
            normalised lerp direction d = (1 - beta) u + beta v instead)
    mean:   h = (1 - beta) * h_base + beta * sum_i w_i h_i / sum_i w_i    (N fine-tuned states h_i;
            equal weights unless given; with one fine-tuned model this is lerp. It is a plain
            weighted mean -- the research code's "RegMean" is this with beta = 1 / (1 + lambda).)
    steer:  h = h_base + alpha * delta    (delta: a task vector of shape (hidden,), see
            `lsmerge.steering` for how it is computed)

Which tokens (`tokens`)
    "all":       every position of every forward call (prompt and generated tokens);
    "last":      only the last position of each forward call: the last prompt token at the
                 prefill, then each generated token (with a KV cache a decode step has one
                 position, so after the prefill "last" and "all" agree);
    "generated": only the forward calls after the prefill (the generator sets
                 `mixer.generating`), i.e. the positions of generated tokens; the prompt is left
                 as the base model reads it.

Hooks are registered when a context is entered and always removed when it exits, exceptions
included. A hook finds the hidden state whether the decoder layer receives it positionally
(`layer(hidden_states, ...)`, transformers 5.x) or by keyword (`layer(hidden_states=...)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lsmerge.errors import LsMergeError

OPERATORS = ("lerp", "slerp", "mean", "steer")
TOKEN_MODES = ("last", "all", "generated")

HiddenEdit = Callable[[torch.Tensor], torch.Tensor]


# -- operators (pure) --------------------------------------------------------------------------


def _check_beta(beta: float) -> None:
    if not (0.0 <= float(beta) <= 1.0) or math.isnan(float(beta)):
        raise LsMergeError(f"beta={beta} is out of range: a mixing ratio must lie in [0, 1] (0 = base, 1 = fine-tuned)")


def lerp(h_base: torch.Tensor, h_ft: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 - beta) * h_base + beta * h_ft, in float32; shapes (..., hidden) -> h_base's shape/dtype."""
    _check_beta(beta)
    if beta == 0.0:
        return h_base
    out = torch.lerp(h_base.float(), h_ft.float(), float(beta))
    return out.to(h_base.dtype)


def slerp(
    h_base: torch.Tensor, h_ft: torch.Tensor, beta: float, *, eps: float = 1e-12, small_angle: float = 1e-4
) -> torch.Tensor:
    """Spherical interpolation of directions with linearly interpolated norms (see module doc).

    Args:
        h_base, h_ft: (..., hidden) states; any float dtype, computed in float32.
        beta: 0 returns h_base exactly, 1 gives h_ft up to rounding.
        eps: floor on norms (a zero vector keeps a zero norm and an arbitrary direction).
        small_angle: where sin(theta) is below it the normalised lerp direction is used.

    Returns:
        (..., hidden) tensor in h_base's dtype.
    """
    _check_beta(beta)
    if beta == 0.0:
        return h_base
    b, f = h_base.float(), h_ft.float()
    nb = b.norm(dim=-1, keepdim=True)
    nf = f.norm(dim=-1, keepdim=True)
    u = b / nb.clamp_min(eps)
    v = f / nf.clamp_min(eps)
    cos = (u * v).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin_theta = torch.sin(theta)
    degenerate = sin_theta < small_angle
    safe_sin = torch.where(degenerate, torch.ones_like(sin_theta), sin_theta)
    w_base = torch.sin((1.0 - beta) * theta) / safe_sin
    w_ft = torch.sin(beta * theta) / safe_sin
    direction = torch.where(degenerate, (1.0 - beta) * u + beta * v, w_base * u + w_ft * v)
    dnorm = direction.norm(dim=-1, keepdim=True)
    # Antipodal u, v with beta = 0.5 leave no direction: keep the nearer endpoint's.
    fallback = u if beta < 0.5 else v
    direction = torch.where(dnorm < small_angle, fallback, direction / dnorm.clamp_min(eps))
    norm = (1.0 - beta) * nb + beta * nf
    return (norm * direction).to(h_base.dtype)


def mean(
    h_base: torch.Tensor, h_fts: Sequence[torch.Tensor], beta: float, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """(1 - beta) * h_base + beta * (sum_i w_i h_fts[i]) / sum_i w_i, in float32.

    Args:
        h_base: (..., hidden).
        h_fts: N >= 1 tensors of h_base's shape.
        beta: weight of the fine-tuned mean against the base.
        weights: N non-negative weights with a positive sum; None = equal weights.
    """
    _check_beta(beta)
    if not h_fts:
        raise LsMergeError("the mean operator needs at least one fine-tuned model's hidden states")
    if weights is None:
        weights = [1.0] * len(h_fts)
    if len(weights) != len(h_fts):
        raise LsMergeError(f"mean: {len(weights)} weights for {len(h_fts)} fine-tuned models; give one weight per model")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise LsMergeError(f"mean: weights {list(weights)} must be non-negative with a positive sum")
    if beta == 0.0:
        return h_base
    total = float(sum(weights))
    m = sum((float(w) / total) * h.float() for w, h in zip(weights, h_fts))
    return torch.lerp(h_base.float(), m, float(beta)).to(h_base.dtype)


def steer(h: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
    """h + alpha * delta, in float32; h: (..., hidden), delta: (hidden,) broadcast over positions."""
    if alpha == 0.0:
        return h
    if delta.shape[-1] != h.shape[-1]:
        raise LsMergeError(
            f"steering delta has size {delta.shape[-1]} but the hidden states have size {h.shape[-1]}; "
            "compute the deltas with `lsmerge steer` for this base model"
        )
    return (h.float() + float(alpha) * delta.to(device=h.device, dtype=torch.float32)).to(h.dtype)


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
    past_key_values=None,
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
        past_key_values: a transformers Cache, or None for no caching.

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
                past_key_values=past_key_values,
                use_cache=past_key_values is not None,
            )
        except _ResidualReached as reached:
            return reached.hidden
    raise RuntimeError(f"{type(model).__name__} finished its forward without reaching residual stream {mix_layer}")


# -- the mixer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MixSpec:
    """What to mix, where and how much.

    Attributes:
        operator: lerp | slerp | mean | steer.
        mix_layer: residual-stream index (0..N, see module doc).
        beta: mixing ratio for lerp / slerp / mean (0 = base, 1 = fine-tuned).
        tokens: last | all | generated.
        weights: per fine-tuned model weights for `mean` (None = equal).
        alpha: steering strength for `steer`.
    """

    operator: str = "slerp"
    mix_layer: int = 0
    beta: float = 0.5
    tokens: str = "last"
    weights: tuple[float, ...] | None = None
    alpha: float = 1.0

    def __post_init__(self):
        if self.operator not in OPERATORS:
            raise LsMergeError(f"unknown operator {self.operator!r}; choose one of {', '.join(OPERATORS)}")
        if self.tokens not in TOKEN_MODES:
            raise LsMergeError(f"unknown tokens mode {self.tokens!r}; choose one of {', '.join(TOKEN_MODES)}")
        if self.operator != "steer":
            _check_beta(self.beta)

    @property
    def is_identity(self) -> bool:
        """True when the operator leaves the base's states unchanged (beta = 0, or alpha = 0 for steer)."""
        return self.alpha == 0.0 if self.operator == "steer" else self.beta == 0.0

    def check_sources(self, n_sources: int) -> None:
        """Validate the number of fine-tuned models this operator combines with the base."""
        need = {"lerp": "exactly one", "slerp": "exactly one", "mean": "at least one", "steer": "no"}[self.operator]
        ok = {"lerp": n_sources == 1, "slerp": n_sources == 1, "mean": n_sources >= 1, "steer": n_sources == 0}
        if not ok[self.operator]:
            raise LsMergeError(
                f"operator {self.operator!r} takes {need} fine-tuned model(s), got {n_sources}"
                + ("; use `mean` to combine several" if self.operator in ("lerp", "slerp") and n_sources > 1 else "")
            )
        if self.operator == "mean" and self.weights is not None and len(self.weights) != n_sources:
            raise LsMergeError(f"mean: {len(self.weights)} weights for {n_sources} fine-tuned models")

    def combine(self, h_base: torch.Tensor, sources: Sequence[torch.Tensor], delta: torch.Tensor | None = None):
        """Apply the operator to (..., hidden) states."""
        if self.operator == "lerp":
            return lerp(h_base, sources[0], self.beta)
        if self.operator == "slerp":
            return slerp(h_base, sources[0], self.beta)
        if self.operator == "mean":
            return mean(h_base, sources, self.beta, self.weights)
        if delta is None:
            raise LsMergeError("operator 'steer' needs a steering delta; compute one with `lsmerge steer`")
        return steer(h_base, delta, self.alpha)


class HiddenStateMixer:
    """Context manager mixing a base model's residual stream at `spec.mix_layer`.

    Before each base forward the caller hands over the fine-tuned models' states at the same
    layer for the same positions (`set_sources`, each (batch, seq, hidden)); the hook combines
    them with the base's state for the selected tokens. For `steer` the delta replaces the
    sources. The generator sets `generating = True` after the prefill (for tokens="generated").
    """

    def __init__(self, model: nn.Module, spec: MixSpec, *, delta: torch.Tensor | None = None):
        self.model = model
        self.spec = spec
        self.delta = delta
        self.n_layers = num_layers(model)
        check_mix_layer(spec.mix_layer, self.n_layers)
        if spec.operator == "steer" and delta is None:
            raise LsMergeError("operator 'steer' needs a steering delta; compute one with `lsmerge steer`")
        self.sources: list[torch.Tensor] | None = None
        self.generating = False
        self.enabled = True  # off while a source that is the base model itself computes its states
        self._hooks = ResidualHooks(model, {spec.mix_layer: self._edit})

    def set_sources(self, sources: Sequence[torch.Tensor] | None) -> None:
        self.sources = None if sources is None else list(sources)

    def _edit(self, h: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if not self.enabled or (spec.tokens == "generated" and not self.generating):
            return h
        sources = self.sources or []
        if spec.operator != "steer":
            if not sources:
                raise RuntimeError("HiddenStateMixer: no source hidden states were set before the base forward")
            for s in sources:
                if s.shape != h.shape:
                    raise RuntimeError(f"source hidden states {tuple(s.shape)} do not match the base's {tuple(h.shape)}")
        if spec.is_identity:
            return h
        if spec.tokens == "last":
            last = spec.combine(h[:, -1:], [s[:, -1:] for s in sources], self.delta)
            return torch.cat([h[:, :-1], last], dim=1)
        return spec.combine(h, sources, self.delta)

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        self.sources = None


class Steerer:
    """Context manager adding alpha * delta_l to the residual stream at several layers l.

    Args:
        model: the base model.
        deltas: {layer: (hidden,) delta}; layers are residual-stream indices (0..N).
        alpha: steering strength.
        tokens: last | all | generated (see module doc; set `generating` for "generated").
    """

    def __init__(self, model: nn.Module, deltas: dict[int, torch.Tensor], alpha: float, tokens: str = "all"):
        if tokens not in TOKEN_MODES:
            raise LsMergeError(f"unknown tokens mode {tokens!r}; choose one of {', '.join(TOKEN_MODES)}")
        if not deltas:
            raise LsMergeError("no steering deltas given; compute them with `lsmerge steer`")
        self.alpha = float(alpha)
        self.tokens = tokens
        self.generating = False
        edits = {int(layer): self._make_edit(delta) for layer, delta in deltas.items()}
        self._hooks = ResidualHooks(model, edits)

    def _make_edit(self, delta: torch.Tensor) -> HiddenEdit:
        def edit(h: torch.Tensor) -> torch.Tensor:
            if (self.tokens == "generated" and not self.generating) or self.alpha == 0.0:
                return h
            if self.tokens == "last":
                return torch.cat([h[:, :-1], steer(h[:, -1:], delta, self.alpha)], dim=1)
            return steer(h, delta, self.alpha)

        return edit

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
