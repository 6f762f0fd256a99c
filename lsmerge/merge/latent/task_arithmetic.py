"""Task arithmetic on latent task vectors: z = z_b + sum_i lam w_i (z_i - z_b)."""

from __future__ import annotations

from lsmerge.merge.latent.base import MergeParams, register, scales, task_arithmetic_tensors


@register("task_arithmetic", models="N", needs_base=True, weights="scales")
def task_arithmetic(tensors, base, p: MergeParams):
    """z = z_b + sum_i lam w_i (z_i - z_b) (w_i = 1 unless given; statistics alike)."""
    return task_arithmetic_tensors(base, tensors, [p.lam * w for w in scales(p, len(tensors))])
