"""Task arithmetic: base + lambda * weighted sum of task vectors."""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, compute_dtype, finite, register


def task_vectors(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """delta_i = x_i - base, stacked: (N, *shape) in float32 (float64 stays float64)."""
    dtype = compute_dtype(base)
    b = base.to(dtype)
    out = torch.empty((len(tensors), *base.shape), dtype=dtype, device=base.device)
    for i, x in enumerate(tensors):
        torch.sub(x.to(dtype), b, out=out[i])
    return out


def weight_column(weights: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """Weights shaped (N, 1, ..., 1) to broadcast against stacked deltas `like` (N, *shape)."""
    w = torch.tensor([float(v) for v in weights], dtype=like.dtype, device=like.device)
    return w.reshape(-1, *([1] * (like.dim() - 1)))


def combine_deltas(base: torch.Tensor, weighted: torch.Tensor, divisor: torch.Tensor, lam: float, normalize: bool) -> torch.Tensor:
    """base + lam * (sum_i weighted_i) [/ divisor]; the shared last step of the task-vector family."""
    mixed = weighted.sum(dim=0)
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return base.to(mixed.dtype) + mixed


def task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], lam: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """Task arithmetic (Ilharco et al. 2023).

        merged = base + lam * sum_i w_i (x_i - base)               (normalize=False)
        merged = base + lam * sum_i w_i (x_i - base) / sum_i w_i   (normalize=True; a sum
                                                                    below 1e-8 counts as 1)

    Negative weights subtract a task (task negation). Float32 arithmetic.

    Args: base (shape S), tensors N x (shape S), weights N, lam scalar. Returns shape S.
    """
    deltas = task_vectors(base, tensors)
    w = weight_column(weights, deltas)
    divisor = w.sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1
    return combine_deltas(base, deltas * w, divisor, lam, normalize)


@register
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    base = "required"
    params = (
        Param("weight", 1.0, per_model=True, check=finite, doc="scale of each task vector (negative subtracts)"),
        Param("lambda", 1.0, check=finite, doc="scale of the summed task vectors"),
        Param("normalize", False, check=boolean, doc="divide by the sum of the weights"),
    )
    label_param = "lambda"
    mergekit_defaults = {"weight": None, "normalize": False, "lambda": 1.0}

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return task_arithmetic(base, tensors, params["weight"], params["lambda"], params["normalize"])
