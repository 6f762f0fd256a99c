"""Task arithmetic on latent task vectors: z = z_b + sum_i lam w_i (z_i - z_b)
(linear: coefficients lam w_i on the experts, 1 - lam sum_i w_i on the base)."""

from __future__ import annotations

from lsmerge.merge.latent.base import MergeParams, register, scales, task_arithmetic_tensors


def _coefficients(p: MergeParams, n: int) -> list[float]:
    """z = sum_i lam w_i z_i + (1 - lam sum_i w_i) z_b: the experts' coefficients, then the base's."""
    c = [p.lam * w for w in scales(p, n)]
    return [*c, 1.0 - sum(c)]


@register("task_arithmetic", models="N", needs_base=True, weights="scales", linear=_coefficients)
def task_arithmetic(tensors, base, p: MergeParams):
    """z = z_b + sum_i lam w_i (z_i - z_b) (w_i = 1 unless given; statistics alike)."""
    return task_arithmetic_tensors(base, tensors, [p.lam * w for w in scales(p, len(tensors))])
