"""TIES on latent task vectors (Yadav et al., 2023)."""

from __future__ import annotations

import lsmerge.merge.weight as wm
from lsmerge.merge.latent.base import MergeParams, check_density, register, same_shapes, scales


@register("ties", models="N", needs_base=True, weights="non_negative", density=True, norm="task_mean")
def ties(tensors, base, p: MergeParams):
    """z = z_b + lam * disjoint_mean(elect(trim(z_i - z_b, density)), w): trim each task vector
    to its top-`density` magnitudes, elect the sign of sum_i w_i tau_i per entry, average the
    entries that agree with it; statistics by the weighted mean task vector."""
    same_shapes([base, *tensors])
    n = len(tensors)
    return wm.ties_merge(base, tensors, scales(p, n), [check_density(p.density)] * n, p.lam, normalize=True)
