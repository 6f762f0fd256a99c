"""Multi-SLERP: barycentric interpolation of N models on a hypersphere, optionally of task
vectors (mergekit's `multislerp`; C. Goddard, "Multi-SLERP",
https://goddard.blog/posts/multislerp-wow-what-a-cool-idea; after Buss & Fillmore 2001,
"Spherical averages and applications to spherical splines and interpolation")."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, compute_dtype, finite, register
from lsmerge.merge.weight.geometry import combine, combine_deltas, gram


def _positive(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "must be a finite number > 0"


def multislerp_coefficients(g: torch.Tensor, weights: Sequence[float], normalize: bool = True, eps: float = 1e-8,
                            name: str = "") -> list[float]:
    """The weights c_i of the merged tensor sum_i c_i x_i, from the Gram matrix g = <x_i, x_j>."""
    n = len(weights)
    w = [float(v) for v in weights]
    if normalize:
        total = sum(w)
        w = [v / total for v in w]
    norms = [math.sqrt(max(float(g[i, i]), 0.0)) for i in range(n)]
    a = torch.tensor([w[i] / (norms[i] + eps) for i in range(n)], dtype=torch.float64)  # mean = sum_i a_i x_i
    mean_norm = math.sqrt(max(float(a @ g @ a), 0.0))
    if mean_norm < eps:
        if n == 2 or all(v == 0 for v in norms):
            return w  # mergekit's fallback for two inputs: the weighted sum
        raise LsMergeError(f"multislerp: the weighted sum of the unit tensors is zero{f' for {name}' if name else ''} "
                           "(antipodal inputs whose weights balance out). Change the weights.")
    scale = sum(wi * ni for wi, ni in zip(w, norms))
    return [scale * float(ai) / mean_norm for ai in a]


def multislerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor | None = None,
               normalize: bool = True, eps: float = 1e-8, name: str = "") -> torch.Tensor:
    """Weighted spherical mean of N tensors (of their task vectors when `base` is given).

        x_i    = tensors_i (- base)                 w = weights (/ sum(weights) when normalize)
        u_i    = x_i / (|x_i| + eps)
        m      = sum_i w_i u_i / |sum_i w_i u_i|    (the weighted mean projected to the sphere)
        merged = (sum_i w_i |x_i|) m  (+ base)

    mergekit 0.1.5 then maps the tangent-space average sum_i w_i (u_i - <u_i, m> m) back with the
    exponential map; that average is exactly zero (sum_i w_i <u_i, m> = |sum_i w_i u_i|), so the
    step is the identity up to rounding (~1e-7 relative) and is left out here. When the weighted
    mean of the units has norm < eps: two inputs (or all of norm 0) give sum_i w_i x_i (+ base),
    as mergekit; more inputs raise LsMergeError (mergekit raises too). One input is returned as is.
    Inner products in float64 (`geometry.gram`), then one pass sum_i c_i x_i (base + sum_i c_i
    (x_i - base)) in float32 (float64 stays float64); task vectors exist one block at a time.

    Args: tensors N x (S); weights N; base (S) or None. Returns (S).
    """
    dtype = compute_dtype(tensors[0])
    if len(tensors) == 1:
        return tensors[0].to(dtype)
    coefs = multislerp_coefficients(gram(tensors, base), weights, normalize, eps, name)
    return combine(coefs, tensors, dtype) if base is None else combine_deltas(coefs, tensors, base)


@register
class MultiSlerp(MergeMethod):
    name = "multislerp"
    base = "optional"
    min_models = 1
    params = (
        Param("weight", 1.0, per_model=True, check=finite, doc="weight of each model on the sphere"),
        Param("normalize_weights", True, check=boolean, doc="divide the weights by their sum"),
        Param("eps", 1e-8, check=_positive, doc="added to each norm before dividing by it"),
    )
    label_param = "weight"
    mergekit_defaults = {"weight": None, "normalize_weights": True, "eps": 1e-8}
    mergekit_inputs = "non_base"

    def check_combination(self, values: dict, where: str) -> None:
        if values["normalize_weights"] and abs(sum(values["weight"])) < 1e-12:
            raise LsMergeError(f"multislerp: the weights sum to 0 ({where}), so they cannot be normalized; "
                               "change them or set normalize_weights false.")

    def keeps_equal_inputs(self, n_models, has_base, params) -> bool:
        # one model is returned as is; two task vectors of 0 have a mean of norm 0 < eps, whose
        # branch gives w_1 * 0 + w_2 * 0 + base = base (three or more are an error there)
        return n_models == 1 or (has_base and n_models == 2)

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return multislerp(tensors, params["weight"], base, bool(params["normalize_weights"]), float(params["eps"]), ctx.name)
