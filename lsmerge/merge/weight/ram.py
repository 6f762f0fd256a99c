"""RAM, Reinforced Agent Merging (arXiv:2601.13572): entries that only one task vector changes are
kept whole, entries several change are averaged over those that change them; RAM+ (tensor-local)
also scales each model's unique entries up by how much of it is shared.

mergekit 0.1.5's `ram` and `ramplus_tl` are reproduced in float32 (the same operations).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, non_negative, register, release_inputs
from lsmerge.merge.weight.task_arithmetic import task_vectors


def ram(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    epsilon: float = 1e-5,
    r: float | None = None,
    alpha: float = 0.2,
) -> torch.Tensor:
    """RAM (r=None) or RAM+ tensor-local (r given).

        z_ij     = [|delta_ij| > epsilon]            (model i changes entry j)
        c_j      = sum_i z_ij                        (how many models change it)
        RAM:     merged_j = base_j + sum_i z_ij delta_ij / max(c_j, 1)
        RAM+:    rho_i    = #{j: z_ij, c_j > 1} / max(#{j: z_ij, c_j = 1}, epsilon)
                 lambda_i = 1 + r * clip(rho_i, 0, alpha)
                 merged_j = base_j + sum_i z_ij delta_ij * (lambda_i if c_j = 1 else 1 / c_j)

    Args: base (S); tensors N x (S); epsilon >= 0; r, alpha >= 0. Returns (S), float32.
    (The division by c_j = 1 is exact, so unique entries keep their value bit for bit, as in mergekit.)
    """
    deltas = task_vectors(base, tensors)
    release_inputs(tensors)
    if not bool(deltas.any()):  # no model changes this tensor (a frozen embedding): the base
        return base.to(deltas.dtype).clone()
    flat = deltas.view(len(deltas), -1)
    changed = flat.abs() > epsilon
    counts = changed.sum(dim=0, keepdim=True)
    flat.mul_(changed)
    divisor = counts.clamp(min=1).to(flat.dtype)  # small integers, exact: the same quotients as by int64
    if r is None:
        del changed
        merged = flat.div_(divisor).sum(dim=0)
    else:
        unique = counts == 1
        shared_counts = (changed & (counts > 1)).sum(dim=1)
        unique_counts = (changed & unique).sum(dim=1)
        del changed
        rho = shared_counts / unique_counts.clamp(min=epsilon)
        lam = 1 + r * rho.clamp(min=0, max=alpha)
        scaled = flat * lam.unsqueeze(-1)
        merged = torch.where(unique, scaled, flat.div_(divisor)).sum(dim=0)
    del deltas, flat
    return base.to(merged.dtype) + merged.view_as(base)


EPSILON = Param("epsilon", 1e-5, check=non_negative, doc="|delta| above which a model counts as changing an entry")


@register
class Ram(MergeMethod):
    name = "ram"
    base = "required"
    params = (EPSILON,)
    mergekit_defaults = {"epsilon": 1e-5}

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return ram(base, tensors, params["epsilon"])


@register
class RamPlusTL(MergeMethod):
    name = "ramplus_tl"
    base = "required"
    params = (
        Param("r", 0.1, check=non_negative, doc="how strongly a model's unique entries are scaled up"),
        Param("alpha", 0.2, check=non_negative, doc="cap on the shared / unique ratio rho"),
        EPSILON,
    )
    label_param = "r"
    mergekit_defaults = {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return ram(base, tensors, params["epsilon"], params["r"], params["alpha"])
