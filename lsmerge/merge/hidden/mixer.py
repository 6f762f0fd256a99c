"""Mixing a model's residual stream while it runs: `MixSpec`, `HiddenStateMixer`, `Steerer`, `MixedForward`.

Which tokens (`tokens`)
    "all":       every position of every forward call (prompt and generated tokens);
    "last":      only the last position of each forward call: the last prompt token at the
                 prefill, then each generated token (with a KV cache a decode step has one
                 position, so after the prefill "last" and "all" agree);
    "generated": only the forward calls after the prefill (the generator sets
                 `mixer.generating`), i.e. the positions of generated tokens; the prompt is left
                 as the base model reads it.

The operators (lerp, slerp, mean, steer, ...) are the registry's (`base.OPERATORS`); `MixSpec`
names one and dispatches through the registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lsmerge.errors import LsMergeError
from lsmerge.merge.hidden.base import NEED, TOKEN_MODES, Operator, check_beta, get_operator, operator_names
from lsmerge.merge.hidden.hooks import HiddenEdit, ResidualHooks, check_mix_layer, num_layers, residual_stream


@dataclass(frozen=True)
class MixSpec:
    """What to mix, where and how much.

    Attributes:
        operator: a registered operator name (lerp | slerp | mean | steer, see `base.OPERATORS`).
        mix_layer: residual-stream index (0..N, see `hooks`).
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
        op = get_operator(self.operator)
        if self.tokens not in TOKEN_MODES:
            raise LsMergeError(f"unknown tokens mode {self.tokens!r}; choose one of {', '.join(TOKEN_MODES)}")
        if op.strength == "beta":
            check_beta(self.beta)

    @property
    def op(self) -> Operator:
        """The registered operator."""
        return get_operator(self.operator)

    @property
    def is_identity(self) -> bool:
        """True when the operator leaves the base's states unchanged (beta = 0, or alpha = 0 for steer)."""
        return (self.alpha if self.op.strength == "alpha" else self.beta) == 0.0

    def check_sources(self, n_sources: int) -> None:
        """Validate the number of fine-tuned models this operator combines with the base."""
        op = self.op
        if not op.accepts(n_sources):
            several = operator_names("many")
            hint = f"; use `{'` or `'.join(several)}` to combine several" if op.sources == "one" and n_sources > 1 and several else ""
            raise LsMergeError(f"operator {self.operator!r} takes {NEED[op.sources]} fine-tuned model(s), got {n_sources}{hint}")
        if op.sources == "many" and self.weights is not None and len(self.weights) != n_sources:
            raise LsMergeError(f"{self.operator}: {len(self.weights)} weights for {n_sources} fine-tuned models")

    def combine(self, h_base: torch.Tensor, sources: Sequence[torch.Tensor], delta: torch.Tensor | None = None):
        """Apply the operator to (..., hidden) states (sources for lerp / slerp / mean, delta for steer)."""
        return self.op.apply(h_base, sources, beta=self.beta, alpha=self.alpha, weights=self.weights, delta=delta)


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
        if spec.op.sources == "none" and delta is None:
            raise LsMergeError(f"operator {spec.operator!r} needs a steering delta; compute one with `lsmerge steer`")
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
        if spec.op.sources != "none":
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
    """Context manager steering the residual stream at several layers l: h <- op(h, delta_l, alpha)
    (for `steer`, h + alpha * delta_l).

    Args:
        model: the base model.
        deltas: {layer: (hidden,) delta}; layers are residual-stream indices (0..N).
        alpha: steering strength.
        tokens: last | all | generated (see module doc; set `generating` for "generated").
        operator: a registered operator without sources (default `steer`).
    """

    def __init__(
        self, model: nn.Module, deltas: dict[int, torch.Tensor], alpha: float, tokens: str = "all", operator: str = "steer"
    ):
        self.op = get_operator(operator)
        if self.op.sources != "none":
            raise LsMergeError(f"operator {operator!r} mixes fine-tuned models' states; steer with one of {', '.join(operator_names('none'))}")
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
                return torch.cat([h[:, :-1], self.op.fn(h[:, -1:], delta, self.alpha)], dim=1)
            return self.op.fn(h, delta, self.alpha)

        return edit

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class MixedForward:
    """Callable LM (`model(input_ids=..., attention_mask=...)`, e.g. for `perplexity_of_ids`): each
    source runs its embeddings and layers[:mix_layer] only (`residual_stream`), then the base runs
    with its residual stream at mix_layer mixed by an entered `HiddenStateMixer`.

    Args:
        base: the base model the mixer is registered on.
        sources: the fine-tuned models, in the order the mixer's operator expects.
        mixer: an entered `HiddenStateMixer` on `base`.
    """

    def __init__(self, base: nn.Module, sources: Sequence[nn.Module], mixer: HiddenStateMixer):
        self.base, self.sources, self.mixer = base, list(sources), mixer

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        layer = self.mixer.spec.mix_layer
        states = [residual_stream(m, layer, input_ids, attention_mask=attention_mask) for m in self.sources]  # (b, w, hidden) each
        self.mixer.set_sources(states)
        return self.base(input_ids=input_ids, attention_mask=attention_mask)
