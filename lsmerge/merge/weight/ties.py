"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, density_range, finite, register, release_inputs
from lsmerge.merge.weight.task_arithmetic import task_vectors, weight_column


TIE_BREAKS = ("index", "mergekit")


def tie_break_choice(v) -> str | None:
    return None if v in TIE_BREAKS else f"must be one of {list(TIE_BREAKS)}"


def trim_to_density(delta: torch.Tensor, density: float, tie_break: str = "index") -> torch.Tensor:
    """Keep the k = max(1, floor(density * numel)) entries of largest |delta|, zero the rest
    (a new tensor; density >= 1 returns `delta` itself). See `trim_to_density_`."""
    if density >= 1 or delta.numel() == 0:
        return delta
    return trim_to_density_(delta.clone(memory_format=torch.contiguous_format), density, tie_break)


SAMPLE = 1 << 16  # entries of the strided sample that brackets the k-th largest magnitude


def kth_largest(values: torch.Tensor, k: int) -> float:
    """The k-th largest entry of a flat float tensor (1 <= k <= numel), exactly, without a sort.

    A strided sample of `SAMPLE` entries gives a bracket [lo, hi] around the target (its
    sample rank +- 6 binomial standard deviations); counting the entries above `hi` and
    selecting only those inside the bracket makes the answer exact (a few elementwise passes
    instead of an O(n log n) sort). If the bracket misses, the whole tensor is selected.
    """
    n = values.numel()
    if n <= 4 * SAMPLE:
        return float(values.kthvalue(n - k + 1).values)
    sample = values[:: n // SAMPLE]
    m = sample.numel()
    rank, margin = k / n * m, 6 * math.sqrt(m * (k / n) * (1 - k / n)) + 8
    hi_rank, lo_rank = max(1, int(rank - margin)), min(m, int(rank + margin) + 1)  # ranks from the top
    ordered = sample.sort(descending=True).values
    hi, lo = ordered[hi_rank - 1], ordered[lo_rank - 1]
    above = int((values > hi).sum())
    if above < k and lo == hi:  # one value fills the bracket (ties, e.g. a task vector's zeros): no selection
        if above + int((values == hi).sum()) >= k:
            return float(hi)
    elif above < k:
        inside = values[(values >= lo) & (values <= hi)]
        if above + inside.numel() >= k:
            return float(inside.kthvalue(inside.numel() - (k - above) + 1).values)
    return float(values.kthvalue(n - k + 1).values)


def trim_to_density_(delta: torch.Tensor, density: float, tie_break: str = "index") -> torch.Tensor:
    """In-place `trim_to_density` of a private contiguous buffer (e.g. a row of `task_vectors`).

    v = the k-th largest |delta| (float32 magnitudes; `kth_largest`, no sort). All entries with
    |delta| > v are kept. When more entries equal v than fit (common in bf16 checkpoints, whose
    values repeat), `tie_break` picks which:
    - "index" (default): the tied entries of lowest flat index. A few elementwise passes; the
      same bytes on every device and torch version.
    - "mergekit": the ones mergekit 0.1.5 keeps, see below. Needs a full sort of the tensor
      (about 3x the time of "index" on SmolLM2's embedding) and depends on torch's CPU sort kernel.
    Without ties at the cut the two are identical. Dropped entries become delta * 0 (+-0).

    tie_break "mergekit" keeps what mergekit's `delta * mask` with mask = `torch.argsort(|delta|, descending=True)[:k]`
    keeps (float32 magnitudes), bit for bit, dropped entries becoming delta * 0:
    - v = the k-th largest |delta| (`kth_largest`, no sort). When exactly k entries reach v
      (or v = 0: kept and dropped zeros are the same zeros), the kept set is |delta| >= v.
    - Otherwise several entries tie at the cut and only some fit. The sort is not stable, so
      which ones mergekit keeps is the kernel's choice, not the index order: the same sort
      kernel runs on the same values, in place on the delta buffer itself (`out=` aliasing
      its input, signs kept aside), about 17 bytes per entry of temporaries.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {list(TIE_BREAKS)}, got {tie_break!r}")
    n = delta.numel()
    k = max(1, int(density * n))
    if density >= 1 or k >= n:
        return delta
    flat = delta.view(-1)
    magnitude = flat.abs().float()
    v = kth_largest(magnitude, k)
    at_least_v = magnitude >= v
    if v == 0 or int(at_least_v.sum()) == k:
        return delta.mul_(at_least_v.to(delta.dtype).view_as(delta))
    if tie_break == "index":
        tied = magnitude == v
        del magnitude
        need = k - (int(at_least_v.sum()) - int(tied.sum()))  # tied entries that fit, >= 1
        cut = int(tied.nonzero()[need - 1]) + 1  # keep ties before flat index `cut`
        at_least_v[cut:] &= ~tied[cut:]
        del tied
        return delta.mul_(at_least_v.to(delta.dtype).view_as(delta))
    del at_least_v
    order = torch.empty(n, dtype=torch.long, device=flat.device)
    if flat.dtype == torch.float32:
        del magnitude  # sort the delta buffer itself
        negative = torch.signbit(flat)
        magnitude = flat.abs_()
    else:
        negative = None
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
    tie_break: str = "index",
) -> torch.Tensor:
    """TIES-merging.

        delta_i  = trim_to_density(x_i - base, density_i)              (trim)
        gamma    = sign(sum_i w_i delta_i)   (+1 on ties)                (elect, by mass)
        m_i      = [sign(w_i delta_i) == gamma]
        merged   = base + lam * sum_i m_i w_i delta_i / sum_i m_i w_i     (disjoint mean;
                   without normalize: base + lam * sum_i m_i w_i delta_i)

    Float32 arithmetic; the same steps and order as mergekit's `ties` so results agree.

    Args: base (S); tensors N x (S); weights N; densities N in (0, 1]; tie_break: which of the
    entries tied at the trim's cut are kept (`trim_to_density_`). Returns (S).
    """
    return ties_of_task_vectors(base, task_vectors(base, tensors), weights, densities, lam, normalize, tie_break)


def ties_of_task_vectors(
    base: torch.Tensor,
    deltas: torch.Tensor,
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float = 1.0,
    normalize: bool = True,
    tie_break: str = "index",
) -> torch.Tensor:
    """`ties` from the stacked task vectors `deltas` (N, *S) of `task_vectors`, a private
    buffer that is trimmed and weighted in place (so the inputs can be freed before the sort)."""
    for i, d in enumerate(densities):
        trim_to_density_(deltas[i], float(d), tie_break)
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
        Param("tie_break", "index", check=tie_break_choice,
              doc="entries tied at the trim's cut: 'index' keeps the lowest flat indices (fast, "
                  "deterministic); 'mergekit' keeps mergekit's choice (a full sort; mergekit recipes use it)"),
    )
    label_param = "density"
    mergekit_defaults = {"weight": None, "density": 1.0, "normalize": True, "lambda": 1.0}
    mergekit_fixed = {"tie_break": "mergekit"}

    def check_mergekit_params(self, block: dict, where: str) -> str | None:
        if "rescale" in block:
            return f"{where}: 'rescale' with ties (L1-rescaled magnitude pruning) is not implemented."
        return None

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        deltas = task_vectors(base, tensors)
        release_inputs(tensors)  # the trim's sort needs 12 bytes per entry: free the inputs first
        return ties_of_task_vectors(base, deltas, params["weight"], params["density"], params["lambda"], params["normalize"], params["tie_break"])
