"""The interface of a latent-space (LS-Merge) method, its registry, and the checks its values get.

A method is one pure function on same-shape tensors, ``formula(tensors, base, p) -> tensor``,
registered with what the command needs to know about it (`register`). `apply` runs it on
`TensorLatent`s (the codes ``z`` and, by the method's `norm` rule, the normalisation statistics
``norm``, so the decoder de-normalises the merged code with merged statistics) or on plain
weight tensors (the weight-space fallback for tensors a codec does not cover: then it is the
weight-space baseline of the same name).

Notation: ``z_i`` the experts' codes, ``z_b`` the base's, ``tau_i = z_i - z_b`` latent task
vectors; ``p`` a `MergeParams` resolved for one tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence, Union

import numpy as np
import torch

import lsmerge.merge.weight as wm
from lsmerge.codecs.base import Codec, TensorLatent
from lsmerge.errors import LsMergeError

WEIGHT_SUM_TOL = 1e-6


@dataclass(frozen=True)
class MergeParams:
    """The values a method reads, resolved for one tensor.

    Attributes:
        lam: interpolation position or task-vector scale (per layer when scheduled).
        weights: one weight per model (soup: convex; task vectors: scales), or None.
        density: TIES: fraction kept; DARE: keep probability.
        sign_election: DARE: TIES sign election after the drop.
        seed, name: seed of random masks and draws, and the tensor's name (mixed into it).
        samples, temperature: self-merge: posterior samples K and their temperature.
        ot, shrinkage: hetero: Gaussian OT on/off and its covariance shrinkage.
    """

    lam: float = 1.0
    weights: tuple[float, ...] | None = None
    density: float = 1.0
    sign_election: bool = False
    seed: int = 0
    name: str = ""
    samples: int = 1
    temperature: float = 1.0
    ot: bool = True
    shrinkage: str | float = "auto"


Formula = Callable[[Sequence[torch.Tensor], Union[torch.Tensor, None], MergeParams], torch.Tensor]
Draw = Callable[[Codec, str, torch.Tensor, MergeParams], list]


@dataclass(frozen=True)
class LatentMethod:
    """A registered method (see `register` for the meaning of each field)."""

    name: str
    formula: Formula
    models: Literal["1", "2", "N"]
    needs_base: bool = False
    default_lam: float = 1.0
    lam_in_unit: bool = False
    weights: Literal["convex", "scales", "non_negative"] | None = None
    density: bool = False
    norm: Literal["same", "task_mean"] = "same"
    fallback: Literal["same", "copy"] = "same"
    draw: Draw | None = None
    implied_weights: Callable[[MergeParams, int], list[float]] | None = None
    label: Callable[[MergeParams], str] | None = None
    architectures: Literal["one", "two"] = "one"
    linear: Callable[[MergeParams, int], list[float]] | None = None

    def model_count_problem(self, n: int) -> str | None:
        """Why `n` input models do not fit this method, or None."""
        ok = {"1": n == 1, "2": n == 2, "N": n >= 1}[self.models]
        return None if ok else {"1": "exactly one model", "2": "exactly two models", "N": "at least one model"}[self.models]

    def coefficients(self, p: MergeParams, n: int) -> list[float]:
        """One weight per model for a weight-space fallback method (weights, or what lam implies)."""
        if p.weights:
            return list(p.weights)
        if self.implied_weights is not None:
            return self.implied_weights(p, n)
        return [1.0 / n] * n

    def linear_coefficients(self, p: MergeParams, n: int) -> list[float] | None:
        """The coefficients c of a merge LINEAR in its inputs, z = sum_i c_i z_i over the `n` input
        models, then the base when the method takes one (`needs_base`): n or n + 1 numbers. None for
        a method that is not linear (TIES, DARE, OT): what the side channel's corrections need
        (`lsmerge.codecs.side_channel.merge_side_channels`)."""
        return None if self.linear is None else [float(c) for c in self.linear(p, n)]

    def output_label(self, p: MergeParams) -> str:
        """The part of an auto-named output folder that shows the parameters."""
        return self.label(p) if self.label is not None else f"{p.lam:.2f}"


METHODS: dict[str, LatentMethod] = {}


def register(name: str, *, models: Literal["1", "2", "N"], **traits) -> Callable[[Formula], Formula]:
    """Decorator: register ``formula(tensors, base, p) -> tensor`` as latent method `name`.

    Args:
        name: the method's name in configs (`method: NAME`).
        models: input models: exactly "1", exactly "2", or "N" (at least one).
        traits: the other `LatentMethod` fields:
            needs_base: task vectors against `base` (it is required and may not be an input);
            default_lam: lam when not given; lam_in_unit: lam and lam_schedule lie in [0, 1];
            weights: how `weights` is read ("convex" soup weights, default uniform; "scales"
            any finite, default 1; "non_negative", default 1; None: refused);
            density: reads `density`; norm: statistics merged by the same formula ("same") or
            by the weighted mean task vector ("task_mean", e.g. after TIES' trim);
            fallback: weight-space fallback for uncovered tensors is the same formula or a copy;
            draw: ``draw(codec, name, weight, p) -> [TensorLatent]`` makes the inputs from one
            model (self-merge's posterior samples); implied_weights: per-model weights a
            weight-space fallback method gets when none are given; label: auto-name label;
            architectures: "two" for merges across architectures (hetero);
            linear: ``linear(p, n) -> [c_1, .., c_n(, c_base)]`` when the formula is exactly
            z = sum_i c_i z_i (+ c_base z_b) (`LatentMethod.linear_coefficients`); None otherwise.
    """

    def add(formula: Formula) -> Formula:
        if name in METHODS:
            raise ValueError(f"latent method {name!r} registered twice")
        METHODS[name] = LatentMethod(name, formula, models, **traits)
        return formula

    return add


def get_method(name: str) -> LatentMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise LsMergeError(f"unknown method {name!r}; use one of {', '.join(METHODS)}.") from None


# -- checks (user-facing values) -----------------------------------------------------------
def check_lambda(lam: float, name: str = "lam", low: float = 0.0, high: float = 1.0) -> float:
    """Raise LsMergeError unless ``low <= lam <= high`` (finite)."""
    if not isinstance(lam, (int, float)) or not math.isfinite(lam) or not low <= lam <= high:
        raise LsMergeError(f"{name} must be in [{low}, {high}], got {lam!r}. Pass e.g. --{name} 0.5.")
    return float(lam)


def check_convex_weights(weights: Sequence[float], n: int) -> list[float]:
    """Raise LsMergeError unless there are `n` finite weights, all >= 0, summing to 1."""
    w = [float(x) for x in weights]
    if len(w) != n:
        raise LsMergeError(f"got {len(w)} weights for {n} models; give one weight per model.")
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise LsMergeError(f"weights must be non-negative, got {w}.")
    total = sum(w)
    if abs(total - 1.0) > WEIGHT_SUM_TOL:
        fixed = [round(x / total, 6) for x in w] if total > 0 else [round(1 / n, 6)] * n
        raise LsMergeError(f"weights must sum to 1 (a barycenter), got {w} (sum {total:.6g}). Use e.g. {fixed}.")
    return w


def check_density(density: float) -> float:
    if not isinstance(density, (int, float)) or not math.isfinite(density) or not 0 < density <= 1:
        raise LsMergeError(f"density must be in (0, 1], got {density!r}.")
    return float(density)


def layer_lambda(schedule: Sequence[float], layer: int | None, num_layers: int) -> float:
    """Per-layer lambda from a schedule (mergekit's gradient convention).

    The schedule's values are anchors spread evenly from the first to the last layer and
    linearly interpolated between: ``[0, 1]`` over 5 layers gives 0, .25, .5, .75, 1. A single
    value is constant. Tensors outside the decoder blocks (`layer` None) get the mean.
    """
    s = [float(x) for x in schedule]
    if not s:
        raise LsMergeError("lam_schedule is empty; give at least one value or leave it unset.")
    if layer is None:
        return float(np.mean(s))
    if len(s) == 1 or num_layers <= 1:
        return s[0]
    pos = layer / (num_layers - 1) * (len(s) - 1)
    return float(np.interp(pos, np.arange(len(s)), s))


# -- shared tensor formulas ------------------------------------------------------------------
def same_shapes(tensors: Sequence[torch.Tensor], what: str = "latent codes") -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise LsMergeError(f"{what} differ in shape {sorted(shapes)}; a homogeneous merge needs equal shapes "
                           "(use method: hetero for different architectures).")


def linear_tensors(tensors: Sequence[torch.Tensor], coeffs: Sequence[float]) -> torch.Tensor:
    """sum_i c_i t_i in float32 (float64 stays); a coefficient pattern (0, .., 1, .., 0) copies exactly."""
    same_shapes(tensors)
    return wm.linear_merge(tensors, [float(c) for c in coeffs], normalize=False)


def task_arithmetic_tensors(base: torch.Tensor, tensors: Sequence[torch.Tensor], lambdas: Sequence[float]) -> torch.Tensor:
    """base + sum_i lam_i (t_i - base)."""
    same_shapes([base, *tensors])
    return wm.task_arithmetic_merge(base, tensors, [float(x) for x in lambdas], 1.0, normalize=False)


def scales(p: MergeParams, n: int) -> list[float]:
    """Per-model weights of a task-vector method (1 each unless given)."""
    return list(p.weights) if p.weights is not None else [1.0] * n


def _task_mean_norm(base: torch.Tensor, norms: Sequence[torch.Tensor], p: MergeParams) -> torch.Tensor:
    """norm_b + lam * sum_i w_i (norm_i - norm_b) / sum_i w_i (statistics are not trimmed)."""
    w = scales(p, len(norms))
    total = sum(w) or 1.0
    return task_arithmetic_tensors(base, norms, [p.lam * x / total for x in w])


# -- running a method --------------------------------------------------------------------------
Items = Union[Sequence[TensorLatent], Sequence[torch.Tensor]]


def apply(method: str | LatentMethod, items: Items, base: TensorLatent | torch.Tensor | None = None,
          p: MergeParams | None = None, **params) -> TensorLatent | torch.Tensor:
    """The method's merge of `items` (TensorLatents or plain tensors) against `base`.

    On TensorLatents: z = formula(z_i, z_b), norm by the method's rule; the result carries the
    shape of `base` for task-vector methods, of the first item otherwise. `params` build a
    `MergeParams` (or override fields of `p`).
    """
    m = get_method(method) if isinstance(method, str) else method
    p = MergeParams(**params) if p is None else replace(p, **params)
    if not items:
        raise LsMergeError("no latent codes to merge.")
    if not isinstance(items[0], TensorLatent):
        return m.formula(items, base, p)
    carrier = base if m.needs_base else items[0]
    checked = ([base] if m.needs_base else []) + list(items)
    same_shapes([lt.z for lt in checked])
    same_shapes([lt.norm for lt in checked], "normalisation statistics")
    z = m.formula([lt.z for lt in items], base.z if base is not None else None, p)
    norms = [lt.norm for lt in items]
    b_norm = base.norm if base is not None else None
    norm = _task_mean_norm(b_norm, norms, p) if m.norm == "task_mean" else m.formula(norms, b_norm, p)
    return carrier.with_z(z, norm)
