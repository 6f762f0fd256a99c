"""Soup (barycenter) of N codes: z = sum_i w_i z_i with w_i >= 0, sum_i w_i = 1 (linear coefficients w_i)."""

from __future__ import annotations

from lsmerge.merge.latent.base import MergeParams, check_convex_weights, linear_tensors, register


def _weights(p: MergeParams, n: int) -> list[float]:
    """The soup's convex weights (uniform unless given): its linear coefficients."""
    return check_convex_weights(p.weights if p.weights is not None else [1.0 / n] * n, n)


@register("soup", models="N", weights="convex", label=lambda p: "", linear=_weights)
def soup(tensors, base, p: MergeParams):
    """z = sum_i w_i z_i, convex weights (checked; uniform unless given)."""
    return linear_tensors(tensors, _weights(p, len(tensors)))
