"""Linear interpolation of two codes: z = (1 - lam) z_1 + lam z_2 (linear coefficients 1 - lam, lam)."""

from __future__ import annotations

from lsmerge.merge.latent.base import MergeParams, linear_tensors, register


@register("lerp", models="2", default_lam=0.5, lam_in_unit=True,
          implied_weights=lambda p, n: [1 - p.lam, p.lam] if n == 2 else [1.0 / n] * n,
          linear=lambda p, n: [1.0 - p.lam, p.lam])
def lerp(tensors, base, p: MergeParams):
    """z = (1 - lam) z_1 + lam z_2; lam = 0 gives the first code exactly, lam = 1 the second
    (per layer when `lam_schedule` is set)."""
    return linear_tensors(tensors, [1.0 - p.lam, p.lam])
