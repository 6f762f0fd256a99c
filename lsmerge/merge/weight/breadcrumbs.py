"""Model Breadcrumbs (Davari & Belilovsky 2024, arXiv:2312.06795): drop both the smallest and the
largest (outlier) entries of each task vector, then task arithmetic, or TIES' sign election.

mergekit 0.1.5's `breadcrumbs` / `breadcrumbs_ties` (`sparsify.magnitude_outliers` inside its
generalized task arithmetic) are reproduced bit for bit in float32 (`tie_break: mergekit`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import (
    MergeMethod,
    Param,
    TensorContext,
    boolean,
    density_range,
    finite,
    in_unit_interval,
    register,
    release_inputs,
)
from lsmerge.merge.weight.dare import combine_sparse, l1_rescale_
from lsmerge.merge.weight.task_arithmetic import task_vectors
from lsmerge.merge.weight.ties import TIE_BREAKS, kth_largest, tie_break_choice

RESCALES = ("none", "l1")


def band_counts(numel: int, density: float, gamma: float) -> tuple[int, int]:
    """(keep, drop_bottom) of mergekit's `magnitude_outliers` for a tensor of `numel` entries:

        keep        = floor(density * numel)
        drop_top    = floor(gamma * numel)
        drop_bottom = max(0, numel - keep - drop_top)   (the outlier cut shrinks so that
                                                         `keep` entries always remain)
    """
    keep = int(density * numel)
    return keep, max(0, numel - keep - int(gamma * numel))


def outlier_band_mask(magnitude: torch.Tensor, keep: int, drop_bottom: int, tie_break: str = "index") -> torch.Tensor:
    """Bool mask of the entries at ascending magnitude ranks [drop_bottom, drop_bottom + keep).

    Args: magnitude: flat float tensor (n,); 1 <= keep, drop_bottom + keep <= n.

    v_lo / v_hi = the (drop_bottom + 1)-th / (drop_bottom + keep)-th smallest magnitude
    (`kth_largest`, no sort). Every entry strictly between them is kept. Entries tied with v_lo or
    v_hi that straddle a cut (common in bf16 checkpoints) are chosen by `tie_break`:
    - "index": the order of a stable ascending sort by (magnitude, flat index): at the lower cut
      the tied entries of highest index stay, at the upper cut those of lowest index.
    - "mergekit": mergekit's `torch.sort(magnitude).indices[drop_bottom : drop_bottom + keep]`
      (the same unstable CPU sort on the same values; a full sort, run only on such ties).
    Without ties at a cut (or ties among zeros only, which are zeros whether kept or not) both
    give `(magnitude >= v_lo) & (magnitude <= v_hi)`.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {list(TIE_BREAKS)}, got {tie_break!r}")
    n = magnitude.numel()
    v_lo = kth_largest(magnitude, n - drop_bottom)
    v_hi = kth_largest(magnitude, n - drop_bottom - keep + 1)
    below = int((magnitude < v_lo).sum())
    up_to_hi = int((magnitude <= v_hi).sum())
    if (below == drop_bottom or v_lo == 0) and (up_to_hi == drop_bottom + keep or v_hi == 0):
        return (magnitude >= v_lo) & (magnitude <= v_hi)
    if tie_break == "mergekit":
        mask = torch.zeros(n, dtype=torch.bool, device=magnitude.device)
        mask[torch.sort(magnitude, descending=False).indices[drop_bottom : drop_bottom + keep]] = True
        return mask
    mask = (magnitude > v_lo) & (magnitude < v_hi)
    for v in sorted({v_lo, v_hi}):
        tied = (magnitude == v).nonzero().squeeze(1)  # flat indices, ascending
        before = int((magnitude < v).sum())  # sorted position of the first tied entry
        mask[tied[max(0, drop_bottom - before) : max(0, drop_bottom + keep - before)]] = True
    return mask


def breadcrumbs_prune_(delta: torch.Tensor, density: float, gamma: float, rescale: str = "none", tie_break: str = "index") -> torch.Tensor:
    """mergekit's `magnitude_outliers`, in place on a private contiguous buffer `delta`:

        keep, drop_bottom = band_counts(numel, density, gamma)
        m_j   = 1 for the entries at ascending |delta| ranks [drop_bottom, drop_bottom + keep)
        out   = m * delta                                      (rescale "none", mergekit's default)
        out   = m * delta * |delta|_1 / |m * delta|_1          (rescale "l1", `l1_rescale_`)

    density >= 1 returns `delta` unchanged; keep = 0 zeroes it. Magnitudes compared in float32.
    """
    if density >= 1:
        return delta
    keep, drop_bottom = band_counts(delta.numel(), density, gamma)
    if keep == 0:
        return delta.mul_(0)
    if not bool(delta.any()):  # nothing changed (e.g. a frozen embedding): zeros either way
        return delta
    before = delta.abs().sum() if rescale == "l1" else None
    mask = outlier_band_mask(delta.reshape(-1).abs().float(), keep, drop_bottom, tie_break)
    delta.mul_(mask.view_as(delta).to(delta.dtype))
    del mask
    return l1_rescale_(delta, before) if before is not None else delta


def breadcrumbs(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    gammas: Sequence[float],
    lam: float = 1.0,
    normalize: bool = False,
    consensus: bool = False,
    rescale: str = "none",
    tie_break: str = "index",
) -> torch.Tensor:
    """Model Breadcrumbs: prune each task vector's tails, then merge.

        delta_i = breadcrumbs_prune(x_i - base, density_i, gamma_i)   (drop the gamma_i fraction
                  of largest |delta|, and the smallest so that density_i of the entries remain)
        linear (`breadcrumbs`):      merged = base + lam * sum_i w_i delta_i  [/ sum_i w_i]
        ties (`breadcrumbs_ties`):   merged = base + lam * sum_i m_i w_i delta_i [/ sum_i m_i w_i],
                                     m_i = [sign(w_i delta_i) == sign(sum_j w_j delta_j)]

    Args: base (S); tensors N x (S); weights, densities, gammas: N each. Returns (S), float32.
    """
    deltas = task_vectors(base, tensors)
    release_inputs(tensors)
    for i, (d, g) in enumerate(zip(densities, gammas, strict=True)):
        breadcrumbs_prune_(deltas[i], float(d), float(g), rescale, tie_break)
    return combine_sparse(base, deltas, weights, lam, normalize, consensus)


def _rescale_check(v) -> str | None:
    return None if v in RESCALES else f"must be one of {RESCALES}"


PARAMS = (
    Param("weight", 1.0, per_model=True, check=finite, doc="scale of each task vector"),
    Param("density", 1.0, per_model=True, check=density_range, doc="fraction of each task vector kept"),
    Param("gamma", 0.01, per_model=True, check=in_unit_interval,
          doc="fraction of largest-magnitude entries dropped (less when density + gamma > 1)"),
    Param("lambda", 1.0, check=finite, doc="scale of the merged task vector"),
    Param("normalize", False, check=boolean, doc="divide by the (agreeing) weights"),
    Param("rescale", "none", check=_rescale_check, doc="none, or l1: restore each pruned task vector's L1 norm"),
    Param("tie_break", "index", check=tie_break_choice,
          doc="entries tied at a cut: 'index' (stable order by flat index, fast) or 'mergekit' (mergekit's sort)"),
)


class _Breadcrumbs(MergeMethod):
    base = "required"
    consensus: bool = False
    params = PARAMS
    label_param = "density"
    mergekit_defaults = {"weight": None, "density": 1.0, "gamma": 0.01, "normalize": False, "lambda": 1.0, "rescale": "none"}
    mergekit_fixed = {"tie_break": "mergekit"}

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return breadcrumbs(base, tensors, params["weight"], params["density"], params["gamma"], params["lambda"],
                           params["normalize"], self.consensus, params["rescale"], params["tie_break"])


@register
class Breadcrumbs(_Breadcrumbs):
    name = "breadcrumbs"


@register
class BreadcrumbsTies(_Breadcrumbs):
    name = "breadcrumbs_ties"
    consensus = True
