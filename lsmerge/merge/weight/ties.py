"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, density_range, finite, register, release_inputs
from lsmerge.merge.weight.task_arithmetic import combine_deltas, task_vectors, weight_column


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, floor(density * numel)) entries of largest |delta|, zero the rest
    (a new tensor; density >= 1 returns `delta` itself). See `trim_to_density_`."""
    if density >= 1 or delta.numel() == 0:
        return delta
    return trim_to_density_(delta.clone(memory_format=torch.contiguous_format), density)


def trim_to_density_(delta: torch.Tensor, density: float) -> torch.Tensor:
    """In-place `trim_to_density` of a private contiguous buffer (e.g. a row of `task_vectors`).

    The kept entries are the first k of a descending sort of float32 |delta|: the same sort
    kernel, on the same values, as mergekit's `torch.argsort(|delta|, descending=True)[:k]`,
    so when several entries share the magnitude at the cut, the same ones are kept (the
    sort is not stable; its order among equal values is the kernel's, not the index order).
    Dropped entries become delta * 0, as mergekit's `delta * mask` makes them.

    Memory: a float32 buffer is sorted in place (`out=` aliasing its input skips argsort's
    copy of the values), and it is the buffer itself, its signs kept aside (1 byte per
    entry): temporaries are the int64 order plus the int64 range that `sort` fills it from,
    about 17 bytes per entry instead of argsort's 20 on top of a magnitude copy.
    """
    n = delta.numel()
    k = max(1, int(density * n))
    if density >= 1 or k >= n:
        return delta
    flat = delta.view(-1)
    order = torch.empty(n, dtype=torch.long, device=flat.device)
    if flat.dtype == torch.float32:
        negative = torch.signbit(flat)
        magnitude = flat.abs_()
    else:  # mergekit ranks float32 magnitudes whatever the dtype
        negative, magnitude = None, flat.abs().float()
    torch.sort(magnitude, descending=True, out=(magnitude, order))
    if negative is None:
        del magnitude
        flat.mul_(torch.ones_like(flat).index_fill_(0, order[k:], 0))
        return delta
    kept = magnitude[:k].clone()  # the k largest |delta|, in sorted order
    flat.zero_().index_copy_(0, order[:k], kept)
    del kept, order
    return delta.mul_(negative.to(flat.dtype).mul_(-2).add_(1).view_as(delta))  # signs back; dropped: +-0


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """Elected sign per parameter by total mass: sign(sum_i w_i delta_i), +1 where the sum is 0.

    Args: weighted (N, *S). Returns (*S) of +1 / -1 in weighted's dtype.
    """
    return (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1


def agreement_mask(weighted: torch.Tensor, elected: torch.Tensor) -> torch.Tensor:
    """(N, *S) mask: 1 where a model's weighted delta is nonzero and has the elected sign
    (a trimmed zero agrees with no sign)."""
    return (weighted.sign() == elected).to(weighted.dtype)


def disjoint_mean(weighted: torch.Tensor, weights: torch.Tensor, elected: torch.Tensor, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and divisor of the disjoint mean over agreeing models.

        num = sum_i m_i * w_i delta_i,   div = sum_i m_i * w_i  (0 -> 1)

    Args: weighted (N, *S); weights (N, 1, .., 1); elected (*S); inplace: mask `weighted`
    itself (a private buffer) instead of a copy. Returns (masked (N, *S), div (*S)).
    """
    mask = agreement_mask(weighted, elected)
    divisor = (weights * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return (weighted.mul_(mask) if inplace else weighted * mask), divisor


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
    return ties_of_task_vectors(base, task_vectors(base, tensors), weights, densities, lam, normalize)


def ties_of_task_vectors(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float = 1.0,
    normalize: bool = True,
) -> torch.Tensor:
    """`ties` from the stacked task vectors `deltas` (N, *S) of `task_vectors`, a private
    buffer that is trimmed and weighted in place (so the inputs can be freed before the sort)."""
    for i, d in enumerate(densities):
        trim_to_density_(deltas[i], float(d))
    # The steps of elect_sign / disjoint_mean / combine_deltas with the same float operations
    # in the same order, but on reused buffers: peak ~ 2 (N, *S) + 1 (*S) float tensors.
    w = weight_column(weights, deltas)
    weighted = deltas.mul_(w)
    elected = weighted.sum(dim=0).ge_(0).mul_(2).sub_(1)  # (sum >= 0) * 2 - 1
    mask = weighted.sign()
    agree = torch.eq(mask, elected)
    del elected
    mask.copy_(agree)
    del agree
    masked = weighted.mul_(mask)
    divisor = mask.mul_(w).sum(dim=0)
    del mask
    divisor[divisor == 0] = 1
    mixed = masked.sum(dim=0)
    del masked, deltas, weighted
    if normalize:
        mixed.div_(divisor)
    if lam != 1:
        mixed.mul_(lam)
    return mixed.add_(base.to(mixed.dtype))


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
        deltas = task_vectors(base, tensors)
        release_inputs(tensors)  # the trim's sort needs 12 bytes per entry: free the inputs first
        return ties_of_task_vectors(base, deltas, params["weight"], params["density"], params["lambda"], params["normalize"])
