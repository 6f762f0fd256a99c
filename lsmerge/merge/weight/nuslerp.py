"""NuSLERP: SLERP of two models by weights, whole-tensor or per row, optionally of task vectors
(mergekit's `nuslerp`; SLERP after Shoemake 1985, "Animating rotation with quaternion curves")."""

from __future__ import annotations

import math

import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, compute_dtype, finite, register
from lsmerge.merge.weight.geometry import combine, combine_deltas, gram

NORM_FLOOR = 1e-7  # a norm below this is taken as this when normalizing (mergekit's clamp)
EPS = 1e-8  # colinear when 1 - cos^2 <= EPS^2


def interpolation_t(weights) -> float:
    """t = w_1 / (w_0 + w_1), 0.5 when |w_0 + w_1| < 1e-6 (mergekit's rule)."""
    total = float(weights[0]) + float(weights[1])
    return 0.5 if abs(total) < 1e-6 else float(weights[1]) / total


def _coefficients(cos: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s0, s1) with s0 v0 + s1 v1 the SLERP at t; (1 - t, t) where colinear."""
    colinear = (1 - cos.square()) <= EPS**2
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin_theta = torch.sin(theta)
    s0 = torch.where(colinear, torch.full_like(cos, 1 - t), torch.sin((1 - t) * theta) / sin_theta)
    s1 = torch.where(colinear, torch.full_like(cos, t), torch.sin(t * theta) / sin_theta)
    return s0, s1


def nuslerp(v0: torch.Tensor, v1: torch.Tensor, t: float, flatten: bool = True, row_wise: bool = False,
            base: torch.Tensor | None = None) -> torch.Tensor:
    """Spherical interpolation at t between v0 and v1 (of their task vectors when `base` is given).

        (with base)  v_k <- v_k - base,  merged = base + slerp(...)
        cos    = <v0, v1> / (max(|v0|, 1e-7) max(|v1|, 1e-7)), clamped to [-1, 1]
        theta  = arccos(cos)
        slerp  = (sin((1 - t) theta) v0 + sin(t theta) v1) / sin(theta)
                 ((1 - t) v0 + t v1 where 1 - cos^2 <= 1e-16: colinear)

    flatten=True: one angle for the whole tensor (`geometry.gram`, float64), then one pass.
    flatten=False: one angle per vector along the last dimension, or along dimension 0 when
    row_wise=True (mergekit's `nuslerp_row_wise`). Unlike `slerp`, there is no 0.9995
    threshold and a zero vector has cos = 0 (theta = 90 deg): mergekit 0.1.5's `nuslerp`.
    Float32 arithmetic (float64 stays float64).

    Args: v0, v1 (S); t in practice [0, 1] (other values extrapolate); base (S) or None.
    Returns (S).
    """
    dtype = compute_dtype(v0)
    if flatten or v0.dim() == 0:
        g = gram([v0, v1], base)  # float64 inner products of the (task) vectors, one block at a time
        n0, n1 = math.sqrt(float(g[0, 0])), math.sqrt(float(g[1, 1]))
        cos = max(-1.0, min(1.0, float(g[0, 1]) / (max(n0, NORM_FLOOR) * max(n1, NORM_FLOOR))))
        s0, s1 = (float(s) for s in _coefficients(torch.tensor(cos, dtype=torch.float64), t))
        return combine([s0, s1], [v0, v1], dtype) if base is None else combine_deltas([s0, s1], [v0, v1], base)
    x, y = v0.to(dtype), v1.to(dtype)
    if base is not None:
        b = base.to(dtype)
        x, y = x - b, y - b
    dim = 0 if row_wise else -1
    n0 = torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_(min=NORM_FLOOR)
    n1 = torch.linalg.vector_norm(y, dim=dim, keepdim=True).clamp_(min=NORM_FLOOR)
    cos = (torch.linalg.vecdot(x, y, dim=dim).unsqueeze(dim) / (n0 * n1)).clamp_(-1, 1)
    s0, s1 = _coefficients(cos, t)
    out = x * s0
    out.addcmul_(y, s1)
    return out if base is None else out.add_(base.to(dtype))


@register
class NuSlerp(MergeMethod):
    name = "nuslerp"
    base = "optional"
    min_models = 2
    max_models = 2
    params = (
        Param("weight", 1.0, per_model=True, check=finite, doc="t = w_2 / (w_1 + w_2) (0.5 when the sum is ~0)"),
        Param("nuslerp_flatten", True, check=boolean, doc="one angle for the whole tensor (false: one per vector)"),
        Param("nuslerp_row_wise", False, check=boolean, doc="with nuslerp_flatten false: vectors along dimension 0, not the last"),
    )
    label_param = "weight"
    mergekit_defaults = {"weight": None, "nuslerp_flatten": True, "nuslerp_row_wise": False}
    mergekit_inputs = "non_base"

    def check_combination(self, values: dict, where: str) -> None:
        if len(values["weight"]) != 2:
            raise LsMergeError(f"nuslerp: give 2 weights, one per model ({where}).")

    def keeps_equal_inputs(self, n_models, has_base, params) -> bool:
        # with a base both task vectors are +0: the spherical branch gives sin(.) * 0 / 1 = 0 and
        # base + 0 = base; without one, (1 - t) v + t v rounds
        return has_base

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        t = interpolation_t(params["weight"])
        return nuslerp(tensors[0], tensors[1], t, bool(params["nuslerp_flatten"]), bool(params["nuslerp_row_wise"]), base)

