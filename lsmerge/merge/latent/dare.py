"""DARE on latent task vectors (Yu et al., 2024): drop and rescale, then linear or TIES."""

from __future__ import annotations

import lsmerge.merge.weight as wm
from lsmerge.merge.latent.base import MergeParams, check_density, register, same_shapes, scales
from lsmerge.merge.weight.dare import dare as dare_merge


@register("dare", models="N", needs_base=True, weights="non_negative", density=True, norm="task_mean")
def dare(tensors, base, p: MergeParams):
    """z = z_b + lam * merge(drop(z_i - z_b, density) / density): keep each entry with
    probability `density`, rescale by 1 / density; merge = sum_i w_i tau_i, or the TIES
    disjoint mean when `sign_election`. Masks seeded from (seed, tensor name, model index)."""
    same_shapes([base, *tensors])
    n = len(tensors)
    seeds = [wm.tensor_seed(p.seed, p.name, i) for i in range(n)]
    return dare_merge(base, tensors, scales(p, n), [check_density(p.density)] * n, seeds, p.lam,
                      normalize=p.sign_election, consensus=p.sign_election)
