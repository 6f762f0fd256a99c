"""LS-Merge operators: pure functions on `TensorLatent`s (no I/O, no codec state).

Every operator combines the codes ``z`` (n_tokens, latent_dim) and, with the same
coefficients, the normalisation statistics ``norm`` (k,), so the decoder de-normalises the
merged code with merged statistics. Operators on tensors (`*_tensors`) are the same
formulas on plain tensors; the merge command also uses them in weight space for tensors the
codec does not cover.

Notation: ``z_i`` the experts' codes, ``z_b`` the base's, ``tau_i = z_i - z_b`` latent task
vectors.

- lerp:             z = (1 - lam) z_1 + lam z_2                    (lam in [0, 1], per layer by schedule)
- soup/barycenter:  z = sum_i w_i z_i                              (w_i >= 0, sum w_i = 1)
- task arithmetic:  z = z_b + sum_i lam_i (z_i - z_b)          (the command uses lam_i = lam * w_i)
- TIES:             trim each tau_i to its top-`density` magnitudes, elect the sign of
                    sum_i lam_i tau_i per entry, disjoint weighted mean of the entries that
                    agree with it; z = z_b + lam * merged
- DARE:             keep each entry of tau_i with probability `density`, rescale by
                    1 / density; then linear (sum_i lam_i tau_i) or TIES sign election;
                    z = z_b + lam * merged
- self-merge:       K posterior samples z_k = mu + T sigma eps_k, merged by barycenter;
                    posterior/prior mix z = (1 - lam) z_post + lam z_prior
- delta coding:     latents of W_i - W_b (or of W_i, decoded as W_b + D(z) - D(z_b)); see
                    `delta_decode` / `residual_decode`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

import lsmerge.merge.weight as wm
from lsmerge.codecs.base import Codec, TensorLatent, posterior_samples  # noqa: F401
from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.dare import dare as dare_merge

WEIGHT_SUM_TOL = 1e-6


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


# -- plain tensor formulas (the weight-space baselines' pure functions) ----------------------
def _same_shapes(tensors: Sequence[torch.Tensor], what: str = "latent codes") -> None:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise LsMergeError(f"{what} differ in shape {sorted(shapes)}; a homogeneous merge needs equal shapes "
                           "(use method: hetero for different architectures).")


def linear_tensors(tensors: Sequence[torch.Tensor], coeffs: Sequence[float]) -> torch.Tensor:
    """sum_i c_i t_i in float32 (float64 stays); a coefficient pattern (0, .., 1, .., 0) copies exactly."""
    _same_shapes(tensors)
    return wm.linear_merge(tensors, [float(c) for c in coeffs], normalize=False)


def task_arithmetic_tensors(base: torch.Tensor, tensors: Sequence[torch.Tensor], lambdas: Sequence[float]) -> torch.Tensor:
    """base + sum_i lam_i (t_i - base)."""
    _same_shapes([base, *tensors])
    return wm.task_arithmetic_merge(base, tensors, [float(x) for x in lambdas], 1.0, normalize=False)


def ties_tensors(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                 density: float, lam: float = 1.0) -> torch.Tensor:
    """base + lam * disjoint_mean(elect(trim(t_i - base, density)), weights) (TIES)."""
    _same_shapes([base, *tensors])
    return wm.ties_merge(base, tensors, weights, [density] * len(tensors), lam, normalize=True)


def dare_tensors(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], density: float,
                 lam: float = 1.0, sign_election: bool = False, seed: int = 0, name: str = "") -> torch.Tensor:
    """base + lam * merge(drop(t_i - base, density) / density); merge = sum_i w_i tau_i, or the
    TIES disjoint mean when `sign_election`. Masks seeded from (seed, name, model index)."""
    _same_shapes([base, *tensors])
    seeds = [wm.tensor_seed(seed, name, i) for i in range(len(tensors))]
    return dare_merge(base, tensors, weights, [density] * len(tensors), seeds, lam,
                      normalize=sign_election, consensus=sign_election)


# -- operators on TensorLatents ------------------------------------------------------------
def _check_latents(latents: Sequence[TensorLatent]) -> None:
    if not latents:
        raise LsMergeError("no latent codes to merge.")
    _same_shapes([lt.z for lt in latents])
    _same_shapes([lt.norm for lt in latents], "normalisation statistics")


def combine(latents: Sequence[TensorLatent], coeffs: Sequence[float]) -> TensorLatent:
    """z = sum_i c_i z_i, norm = sum_i c_i norm_i (shape and extras of the first)."""
    _check_latents(latents)
    if len(coeffs) != len(latents):
        raise LsMergeError(f"{len(coeffs)} coefficients for {len(latents)} latent codes.")
    z = linear_tensors([lt.z for lt in latents], coeffs)
    norm = linear_tensors([lt.norm for lt in latents], coeffs)
    return latents[0].with_z(z, norm)


def lerp(a: TensorLatent, b: TensorLatent, lam: float) -> TensorLatent:
    """z = (1 - lam) z_a + lam z_b; lam = 0 gives `a`'s code exactly, lam = 1 `b`'s."""
    return combine([a, b], [1.0 - lam, lam])


def barycenter(latents: Sequence[TensorLatent], weights: Sequence[float]) -> TensorLatent:
    """Convex soup z = sum_i w_i z_i with w_i >= 0 and sum w_i = 1 (checked)."""
    return combine(latents, check_convex_weights(weights, len(latents)))


def task_arithmetic(base: TensorLatent, latents: Sequence[TensorLatent], lambdas: Sequence[float]) -> TensorLatent:
    """z = z_b + sum_i lam_i (z_i - z_b) (norm alike)."""
    _check_latents([base, *latents])
    z = task_arithmetic_tensors(base.z, [lt.z for lt in latents], lambdas)
    norm = task_arithmetic_tensors(base.norm, [lt.norm for lt in latents], lambdas)
    return base.with_z(z, norm)


def _norm_task_mean(base: TensorLatent, latents: Sequence[TensorLatent], weights: Sequence[float], lam: float) -> torch.Tensor:
    """norm_b + lam * sum_i w_i (norm_i - norm_b) / sum_i w_i (statistics are not trimmed)."""
    total = sum(weights) or 1.0
    return task_arithmetic_tensors(base.norm, [lt.norm for lt in latents], [lam * w / total for w in weights])


def ties(base: TensorLatent, latents: Sequence[TensorLatent], weights: Sequence[float], density: float,
         lam: float = 1.0) -> TensorLatent:
    """TIES on latent task vectors: z = z_b + lam * elect(trim(z_i - z_b)); norm by weighted mean delta."""
    _check_latents([base, *latents])
    z = ties_tensors(base.z, [lt.z for lt in latents], weights, check_density(density), lam)
    return base.with_z(z, _norm_task_mean(base, latents, weights, lam))


def dare(base: TensorLatent, latents: Sequence[TensorLatent], weights: Sequence[float], density: float,
         lam: float = 1.0, sign_election: bool = False, seed: int = 0, name: str = "") -> TensorLatent:
    """DARE on latent task vectors (drop and rescale, then linear or TIES merge); norm as in TIES."""
    _check_latents([base, *latents])
    z = dare_tensors(base.z, [lt.z for lt in latents], weights, check_density(density), lam, sign_election, seed, name)
    return base.with_z(z, _norm_task_mean(base, latents, weights, lam))


# -- self-merge ----------------------------------------------------------------------------
def posterior_prior_mix(posterior: TensorLatent, prior_z: torch.Tensor, lam: float) -> TensorLatent:
    """z = (1 - lam) z_post + lam z_prior (statistics from the posterior)."""
    _same_shapes([posterior.z, prior_z])
    return posterior.with_z((1 - lam) * posterior.z + lam * prior_z.to(posterior.z.dtype))


def self_merge(samples: Sequence[TensorLatent], weights: Sequence[float] | None = None) -> TensorLatent:
    """Merge K samples of one model's posterior: the barycenter (uniform unless `weights`)."""
    k = len(samples)
    return barycenter(samples, weights if weights is not None else [1.0 / k] * k)


# -- delta coding --------------------------------------------------------------------------
def zero_latent(like: TensorLatent) -> TensorLatent:
    """The origin of delta space: z = 0, norm = 0 (the base of task operators on delta codes)."""
    return like.with_z(torch.zeros_like(like.z), torch.zeros_like(like.norm))


def delta_encode(codec: Codec, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> list[TensorLatent]:
    """Codes of the experts' differences to the base: E(W_i - W_b)."""
    b = base.float()
    return [codec.encode(name, w.float() - b) for w in experts]


def delta_decode(codec: Codec, name: str, base: torch.Tensor, merged_delta: TensorLatent) -> torch.Tensor:
    """W_b + D(merged delta code): reconstruction error touches only the change."""
    return base.float() + codec.decode(name, merged_delta)


def residual_decode(codec: Codec, name: str, base: torch.Tensor, base_latent: TensorLatent,
                    merged: TensorLatent) -> torch.Tensor:
    """W_b + D(z_merged) - D(z_b): codes of full weights, the codec's error on the base cancels."""
    return base.float() + codec.decode(name, merged) - codec.decode(name, base_latent)


# -- registry used by the merge command ----------------------------------------------------
#: method -> (needs a base model, number of models: "2", "1" or "N")
METHODS: dict[str, tuple[bool, str]] = {
    "lerp": (False, "2"),
    "soup": (False, "N"),
    "task_arithmetic": (True, "N"),
    "ties": (True, "N"),
    "dare": (True, "N"),
    "self": (False, "1"),
    "hetero": (False, "2"),
}


def homogeneous_operator(method: str, *, lam: float, weights: Sequence[float], density: float = 1.0,
                         sign_election: bool = False, seed: int = 0) -> Callable[..., object]:
    """The method as ``op(items, base, name="") -> merged`` for lerp / soup / task arithmetic / TIES / DARE.

    Works on `TensorLatent`s and, for the weight-space fallback, on plain tensors (then it is
    exactly the weight-space baseline of the same name). `name` seeds DARE's masks.
    """

    def op(items, base, name: str = ""):
        latent = isinstance(items[0], TensorLatent)
        if method == "lerp":
            return lerp(items[0], items[1], lam) if latent else linear_tensors(items, [1 - lam, lam])
        if method == "soup":
            return barycenter(items, weights) if latent else linear_tensors(items, weights)
        if method == "task_arithmetic":
            return (task_arithmetic if latent else task_arithmetic_tensors)(base, items, [lam * w for w in weights])
        if method == "ties":
            return (ties if latent else ties_tensors)(base, items, weights, density, lam)
        if method == "dare":
            return (dare if latent else dare_tensors)(base, items, weights, density, lam, sign_election, seed, name)
        raise LsMergeError(f"unknown homogeneous method {method!r}; use one of lerp, soup, task_arithmetic, ties, dare.")

    return op
