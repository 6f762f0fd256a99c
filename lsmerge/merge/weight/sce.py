"""SCE (Wan et al. 2024, FuseChat, arXiv:2408.07990): Select the entries where the task vectors
vary most, Calculate per-model weights from their energy, Erase minority signs.

mergekit 0.1.5's `sce` is reproduced in float32 (the same operations in the same order).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, in_unit_interval, register, release_inputs
from lsmerge.merge.weight.task_arithmetic import task_vectors
from lsmerge.merge.weight.ties import agreement_mask, elect_sign, kth_largest


CHUNK = 1 << 20  # entries per step of `population_variance` (bounds its float64 temporaries)


def population_variance(deltas: torch.Tensor) -> torch.Tensor:
    """var_j = (1/N) sum_i (delta_ij - mean_i delta_ij)^2 over the models, (N, *S) -> (*S).

    The value of `torch.var(deltas, dim=0, unbiased=False)` (which mergekit calls: on the CPU a
    scalar Welford loop accumulating in float64, ~10x slower) by two vectorized float64 passes per
    chunk of `CHUNK` entries, rounded once to deltas' dtype.
    """
    n = deltas.shape[0]
    flat = deltas.reshape(n, -1)
    out = torch.empty(flat.shape[1], dtype=deltas.dtype, device=deltas.device)
    for start in range(0, flat.shape[1], CHUNK):
        x = flat[:, start : start + CHUNK].double()
        out[start : start + CHUNK] = x.sub_(x.mean(dim=0)).square_().mean(dim=0)
    return out.view(deltas.shape[1:])


def variance_mask(deltas: torch.Tensor, select_topk: float) -> torch.Tensor:
    """Select: 1 at the k entries of largest variance across the models, 0 elsewhere.

        var_j = (1/N) sum_i (delta_ij - mean_i delta_ij)^2          (population variance)
        k     = floor(count(var != 0) * select_topk)                  (mergekit's count)

    Args: deltas (N, *S). Returns (*S) in deltas' dtype. The k-th largest variance is found without
    a sort; only when entries tie at that cut does mergekit's `torch.topk` pick among them.
    """
    var = population_variance(deltas)
    if select_topk <= 0:
        return torch.zeros_like(var)
    if select_topk >= 1:
        return torch.ones_like(var)
    k = int(torch.count_nonzero(var) * select_topk)
    if k == 0:
        return torch.zeros_like(var)
    spread = var.abs().view(-1)
    v = kth_largest(spread, k)
    chosen = spread >= v
    if int(chosen.sum()) != k:  # ties at the cut: mergekit's choice
        chosen = torch.zeros_like(chosen)
        chosen[torch.topk(spread, k=k, largest=True).indices] = True
    return chosen.view_as(var).to(deltas.dtype)


def sce_weights(deltas: torch.Tensor) -> torch.Tensor:
    """Calculate: w_i = mean_j delta_ij^2 / sum_l mean_j delta_lj^2   (1/N each when the sum < 1e-6).

    Args: deltas (N, *S). Returns (N,).
    """
    energy = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)  # mergekit's reduction: the same bits
    total = torch.sum(energy).item()
    if abs(total) < 1e-6:
        return torch.ones_like(energy) / energy.shape[0]
    return energy / total


def sce(base: torch.Tensor, tensors: Sequence[torch.Tensor], select_topk: float = 1.0) -> torch.Tensor:
    """SCE merge.

        delta_i  = (x_i - base) * variance_mask(deltas, select_topk)          (select)
        w_i      = sce_weights(delta)                                          (calculate)
        m_i      = [sign(delta_i) == sign(sum_l delta_l)]   (+1 where the sum is 0)  (erase)
        merged   = base + sum_i m_i w_i delta_i / max(sum_i m_i w_i, 1e-6)

    Args: base (S); tensors N x (S). Returns (S), float32.
    """
    deltas = task_vectors(base, tensors)
    release_inputs(tensors)
    if not bool(deltas.any()):  # nothing changed (a frozen tensor): every sign is erased, the base
        return base.to(deltas.dtype).clone()
    if select_topk < 1:
        deltas.mul_(variance_mask(deltas, select_topk))
    weights = sce_weights(deltas).reshape(-1, *([1] * (deltas.dim() - 1)))
    erased = agreement_mask(deltas, elect_sign(deltas)).mul_(weights)
    merged = deltas.mul_(erased).sum(dim=0)
    del deltas
    divisor = erased.sum(dim=0).clamp_(min=1e-6)
    del erased
    return base.to(merged.dtype) + merged.div_(divisor)


@register
class Sce(MergeMethod):
    name = "sce"
    base = "required"
    params = (
        Param("select_topk", 1.0, check=in_unit_interval,
              doc="fraction of the entries (those of largest variance across the models) kept; 1 keeps all"),
    )
    label_param = "select_topk"
    mergekit_defaults = {"select_topk": 1.0}

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return sce(base, tensors, params["select_topk"])
