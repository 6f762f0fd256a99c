"""Spherical linear interpolation (SLERP) of two models."""

from __future__ import annotations

import math

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, compute_dtype, in_unit_interval, register

DOT_THRESHOLD = 0.9995  # |cos(angle)| above this (angle < ~1.8 deg, or antipodal) -> linear
NORM_EPS = 1e-8  # a tensor whose norm is at or below this has no direction -> linear


ROW = 1 << 12  # float32 partial sums run over rows of this many elements


def dot_and_norms(x: torch.Tensor, y: torch.Tensor, row: int = ROW) -> tuple[float, float, float]:
    """<x, y>, |x|, |y| of the flattened tensors, without copies.

    The flat vectors are viewed as rows of `row` elements; each row's products are summed in
    the tensors' dtype (`torch.linalg.vecdot`, a short pairwise sum: relative error ~1e-7 of
    that row only) and the row sums are accumulated in float64, so the total is as accurate
    as a float64 dot (~1e-10 relative on SmolLM2's embedding) at float32 cost. The tail
    (< `row` elements) is summed in float64. Three whole-tensor calls, not a loop over
    blocks: each call is one parallel region, and on a loaded machine every parallel region
    can wait a scheduler slice for a descheduled thread (a block loop took 15 s of a SmolLM2
    merge at load 3; memory traffic is ~25 ms per pass on the embedding).
    """
    xf, yf = x.reshape(-1), y.reshape(-1)
    whole = xf.numel() // row * row
    dot = nx2 = ny2 = 0.0
    if whole:
        xr, yr = xf[:whole].view(-1, row), yf[:whole].view(-1, row)
        dot = float(torch.linalg.vecdot(xr, yr).sum(dtype=torch.float64))
        nx2 = float(torch.linalg.vecdot(xr, xr).sum(dtype=torch.float64))
        ny2 = float(torch.linalg.vecdot(yr, yr).sum(dtype=torch.float64))
    if whole < xf.numel():
        a, b = xf[whole:].double(), yf[whole:].double()
        dot, nx2, ny2 = dot + float(a @ b), nx2 + float(a @ a), ny2 + float(b @ b)
    return dot, math.sqrt(nx2), math.sqrt(ny2)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = DOT_THRESHOLD, eps: float = NORM_EPS) -> torch.Tensor:
    """SLERP between two same-shape tensors, each taken as one flat vector.

        cos(theta) = <a/|a|, b/|b|>   (dot product: float32 rows, float64 total)
        merged     = sin((1-t) theta)/sin(theta) * a + sin(t theta)/sin(theta) * b

    Always computed in float32 whatever the storage dtype (float64 inputs stay float64): the
    seed project's bf16 SLERP loses the small angle between fine-tunes. Fallback to linear
    interpolation `(1-t) a + t b` when |cos(theta)| > `dot_threshold` (0.9995: nearly colinear
    or antipodal, where sin(theta) -> 0 makes the ratios ill-conditioned) or when either
    norm is <= `eps` (no direction). Same threshold as mergekit.

    Args:
        a: tensor at t = 0. b: tensor at t = 1 (same shape). t: position in [0, 1].
    Returns: float32 (or float64) tensor of the inputs' shape.
    """
    dtype = compute_dtype(a)
    x = a.to(dtype)
    y = b.to(dtype)
    dot, na, nb = dot_and_norms(x, y)
    if na <= eps or nb <= eps:
        return torch.lerp(x, y, float(t)) if x.numel() else x.clone()
    dot = dot / (na * nb)
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > dot_threshold:
        s0, s1 = 1.0 - t, float(t)
    else:
        theta = math.acos(dot)
        sin_theta = math.sin(theta)
        s0 = math.sin((1.0 - t) * theta) / sin_theta
        s1 = math.sin(t * theta) / sin_theta
    # s0 * x + s1 * y with one output buffer; reuse x when it is already a private copy
    out = x.mul_(s0) if x is not a else torch.mul(x, s0)
    return out.add_(y, alpha=s1)


@register
class Slerp(MergeMethod):
    name = "slerp"
    min_models = 2
    max_models = 2
    mergekit_defaults = {"t": None}
    mergekit_inputs = "base_first"
    params = (Param("t", 0.5, check=in_unit_interval, doc="0 gives the first model, 1 the second; a list is a schedule over depth"),)
    label_param = "t"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return slerp(tensors[0], tensors[1], float(params["t"]))
