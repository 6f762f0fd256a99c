"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, density_range, finite, register
from lsmerge.merge.weight.task_arithmetic import combine_deltas, task_vectors, weight_column


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, floor(density * numel)) entries of largest |delta|, zero the rest.

    density >= 1 returns `delta` unchanged. Equal magnitudes at the cut (common in float32
    over millions of entries) are broken as `torch.argsort(|delta|, descending=True)` orders
    them: the same call mergekit makes, so both keep the same entries.
    """
    if density >= 1 or delta.numel() == 0:
        return delta
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    keep = torch.argsort(flat.abs().float(), descending=True)[:k]
    mask = torch.zeros_like(flat)
    mask[keep] = 1
    return (flat * mask).reshape(delta.shape)


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """Elected sign per parameter by total mass: sign(sum_i w_i delta_i), +1 where the sum is 0.

    Args: weighted (N, *S). Returns (*S) of +1 / -1 in weighted's dtype.
    """
    return (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1


def agreement_mask(weighted: torch.Tensor, elected: torch.Tensor) -> torch.Tensor:
    """(N, *S) mask: 1 where a model's weighted delta is nonzero and has the elected sign
    (a trimmed zero agrees with no sign)."""
    return (weighted.sign() == elected).to(weighted.dtype)


def disjoint_mean(weighted: torch.Tensor, weights: torch.Tensor, elected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and divisor of the disjoint mean over agreeing models.

        num = sum_i m_i * w_i delta_i,   div = sum_i m_i * w_i  (0 -> 1)

    Args: weighted (N, *S); weights (N, 1, .., 1); elected (*S). Returns (masked (N, *S), div (*S)).
    """
    mask = agreement_mask(weighted, elected)
    divisor = (weights * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return weighted * mask, divisor


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES-merging.

        delta_i  = trim_to_density(x_i - base, density_i)              (trim)
        gamma    = sign(sum_i w_i delta_i)   (+1 on ties)                (elect, by mass)
        m_i      = [sign(w_i delta_i) == gamma]
        merged   = base + lam * sum_i m_i w_i delta_i / sum_i m_i w_i     (disjoint mean;
                   without normalize: base + lam * sum_i m_i w_i delta_i)

    Float32 arithmetic; the same steps and order as mergekit's `ties` so results agree.

    Args: base (S); tensors N x (S); weights N; densities N in (0, 1]. Returns (S).
    """
    deltas = task_vectors(base, tensors)
    for i, d in enumerate(densities):
        deltas[i] = trim_to_density(deltas[i], float(d))
    w = weight_column(weights, deltas)
    weighted = deltas * w
    elected = elect_sign(weighted)
    masked, divisor = disjoint_mean(weighted, w, elected)
    return combine_deltas(base, masked, divisor, lam, normalize)


@register
class Ties(MergeMethod):
    name = "ties"
    base = "required"
    params = (
        Param("weight", 1.0, per_model=True, check=finite, doc="scale of each task vector"),
        Param("density", 1.0, per_model=True, check=density_range, doc="fraction of each task vector kept"),
        Param("lambda", 1.0, check=finite, doc="scale of the merged task vector"),
        Param("normalize", True, check=boolean, doc="disjoint mean (divide by the agreeing weights)"),
    )
    label_param = "density"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return ties(base, tensors, params["weight"], params["density"], params["lambda"], params["normalize"])
