"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, density_range, finite, register
from lsmerge.merge.weight.task_arithmetic import combine_deltas, task_vectors, weight_column


CHUNK = 1 << 20  # elements per step of the chunked selection passes (a few MiB of temporaries)


def _abs_bits(chunk: torch.Tensor) -> torch.Tensor:
    """float32(|x|) as int32 bit patterns: for non-negative finite floats the integer order is
    the float order, so the k-th largest magnitude can be found by counting bit prefixes."""
    return chunk.abs().float().view(torch.int32)


def kth_largest_abs(flat: torch.Tensor, k: int, chunk: int = CHUNK) -> tuple[float, int, int]:
    """Radix selection of v = the k-th largest float32(|flat|), 1 <= k <= numel, in two
    chunked passes that build histograms of the high and then the low 16 bits of v's bit
    pattern (no sort, no index tensor: temporaries are O(chunk)).

    Returns (v, n_greater, n_equal): v, the number of entries with magnitude > v and the
    number equal to v (so n_greater < k <= n_greater + n_equal).
    """
    n = flat.numel()
    high = torch.zeros(1 << 16, dtype=torch.int64)
    for s in range(0, n, chunk):
        high += torch.bincount(_abs_bits(flat[s : s + chunk]) >> 16, minlength=1 << 16)
    from_top = high.flip(0).cumsum(0)
    pos = int(torch.searchsorted(from_top, k))
    hb = (1 << 16) - 1 - pos
    above = int(from_top[pos - 1]) if pos else 0
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for s in range(0, n, chunk):
        bits = _abs_bits(flat[s : s + chunk])
        low += torch.bincount(bits[(bits >> 16) == hb] & 0xFFFF, minlength=1 << 16)
    from_top = low.flip(0).cumsum(0)
    pos = int(torch.searchsorted(from_top, k - above))
    lb = (1 << 16) - 1 - pos
    greater = above + (int(from_top[pos - 1]) if pos else 0)
    v = float(torch.tensor([(hb << 16) | lb], dtype=torch.int32).view(torch.float32))
    return v, greater, int(low[lb])


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, floor(density * numel)) entries of largest |delta|, zero the rest
    (a new tensor; density >= 1 returns `delta` itself). See `trim_to_density_`."""
    if density >= 1 or delta.numel() == 0:
        return delta
    return trim_to_density_(delta.clone(memory_format=torch.contiguous_format), density)


def trim_to_density_(delta: torch.Tensor, density: float) -> torch.Tensor:
    """In-place `trim_to_density` of a private contiguous buffer (e.g. a row of `task_vectors`).

    The cut v = k-th largest
    float32 |delta| comes from `kth_largest_abs` (radix selection, O(chunk) memory: no
    argsort over the 28M-entry embedding); entries with |delta| < v are zeroed. That keeps
    exactly k entries unless several share the magnitude v and only some of them fit; the
    choice among those is what mergekit's `torch.argsort(|delta|, descending=True)[:k]`
    makes (an unstable sort), so only in that case, and only when v > 0 (kept zeros change
    nothing), the same argsort call is made so both keep the same entries.
    """
    if density >= 1 or delta.numel() == 0:
        return delta
    flat = delta.view(-1)
    k = max(1, int(density * flat.numel()))
    v, greater, equal = kth_largest_abs(flat, k)
    if v > 0 and greater + equal > k:  # ambiguous tie at a nonzero cut: mergekit's order
        order = torch.argsort(flat.abs().float(), descending=True)
        flat.index_fill_(0, order[k:], 0)
        return delta
    if v > 0:
        for s in range(0, flat.numel(), CHUNK):
            c = flat[s : s + CHUNK]
            c.masked_fill_(c.abs().float() < v, 0)
    return delta


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
    deltas = task_vectors(base, tensors)  # private (N, *S) buffer, trimmed and weighted in place
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
        return ties(base, tensors, params["weight"], params["density"], params["lambda"], params["normalize"])
