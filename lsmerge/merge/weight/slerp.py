"""Spherical linear interpolation (SLERP) of two models."""

from __future__ import annotations

import math

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, compute_dtype, in_unit_interval, register

DOT_THRESHOLD = 0.9995  # |cos(angle)| above this (angle < ~1.8 deg, or antipodal) -> linear
NORM_EPS = 1e-8  # a tensor whose norm is at or below this has no direction -> linear


def dot_and_norms(x: torch.Tensor, y: torch.Tensor, chunk: int = 1 << 20) -> tuple[float, float, float]:
    """<x, y>, |x|, |y| of the flattened tensors, accumulated in float64 over chunks of
    `chunk` elements (so no full float64 copy is held)."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    dot = nx2 = ny2 = 0.0
    for s in range(0, xf.numel(), chunk):
        a = xf[s : s + chunk].double()
        b = yf[s : s + chunk].double()
        dot += float(a @ b)
        nx2 += float(a @ a)
        ny2 += float(b @ b)
    return dot, math.sqrt(nx2), math.sqrt(ny2)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = DOT_THRESHOLD, eps: float = NORM_EPS) -> torch.Tensor:
    """SLERP between two same-shape tensors, each taken as one flat vector.

        cos(theta) = <a/|a|, b/|b|>   (dot product accumulated in float64)
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
        return (1.0 - t) * x + t * y
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    s0 = math.sin((1.0 - t) * theta) / sin_theta
    s1 = math.sin(t * theta) / sin_theta
    return s0 * x + s1 * y


@register
class Slerp(MergeMethod):
    name = "slerp"
    min_models = 2
    max_models = 2
    params = (Param("t", 0.5, check=in_unit_interval, doc="0 gives the first model, 1 the second; a list is a schedule over depth"),)
    label_param = "t"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return slerp(tensors[0], tensors[1], float(params["t"]))
