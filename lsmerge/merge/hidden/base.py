"""The registry of hidden-state operators.

An operator is a pure function on (..., hidden) tensors, registered by name with what it
needs, e.g. `@register("slerp", sources="one")`:

    sources="one":   fn(h_base, h_ft, beta)                 exactly one fine-tuned model
    sources="many":  fn(h_base, h_fts, beta, weights)       at least one fine-tuned model
    sources="none":  fn(h_base, delta, alpha)               no fine-tuned model: a (hidden,) delta

Operators with sources "one" / "many" are mixing ratios `beta` in [0, 1] (0 = base); "none"
operators take a strength `alpha`. At the identity point (beta = 0, alpha = 0) every operator
returns `h_base` itself, bit for bit. `OPERATORS` and every "which operator" check derive from
this registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from lsmerge.errors import LsMergeError

Sources = Literal["one", "many", "none"]
TokenMode = Literal["last", "all", "generated"]
TOKEN_MODES: tuple[str, ...] = get_args(TokenMode)

NEED = {"one": "exactly one", "many": "at least one", "none": "no"}


@dataclass(frozen=True)
class Operator:
    """A registered operator: its pure function and what it needs (see module doc)."""

    name: str
    fn: Callable[..., torch.Tensor]
    sources: Sources

    @property
    def strength(self) -> str:
        """The parameter this operator reads: "alpha" (no sources) or "beta"."""
        return "alpha" if self.sources == "none" else "beta"

    def accepts(self, n_sources: int) -> bool:
        return {"one": n_sources == 1, "many": n_sources >= 1, "none": n_sources == 0}[self.sources]

    def apply(
        self,
        h_base: torch.Tensor,
        sources: Sequence[torch.Tensor],
        *,
        beta: float,
        alpha: float,
        weights: Sequence[float] | None = None,
        delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Call `fn` with the arguments its `sources` kind takes (see module doc)."""
        if self.sources == "one":
            return self.fn(h_base, sources[0], beta)
        if self.sources == "many":
            return self.fn(h_base, sources, beta, weights)
        if delta is None:
            raise LsMergeError(f"operator {self.name!r} needs a steering delta; compute one with `lsmerge steer`")
        return self.fn(h_base, delta, alpha)


OPERATORS: dict[str, Operator] = {}


def register(name: str, *, sources: Sources) -> Callable[[Callable], Callable]:
    """Function decorator: make `fn` available as operator `name` (returns `fn` unchanged)."""
    if sources not in NEED:
        raise ValueError(f"sources={sources!r}: choose one of {', '.join(NEED)}")

    def decorate(fn: Callable) -> Callable:
        if name in OPERATORS:
            raise ValueError(f"hidden-state operator {name!r} registered twice")
        OPERATORS[name] = Operator(name, fn, sources)
        return fn

    return decorate


def get_operator(name: str) -> Operator:
    try:
        return OPERATORS[name]
    except KeyError:
        raise LsMergeError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}") from None


def operator_names(*sources: Sources) -> tuple[str, ...]:
    """Registered names in registration order, only those whose `sources` is given (all if none)."""
    return tuple(n for n, op in OPERATORS.items() if not sources or op.sources in sources)


def check_beta(beta: float) -> None:
    if not (0.0 <= float(beta) <= 1.0) or math.isnan(float(beta)):
        raise LsMergeError(f"beta={beta} is out of range: a mixing ratio must lie in [0, 1] (0 = base, 1 = fine-tuned)")
