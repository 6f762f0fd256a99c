"""Linear (weighted average) merge of N models."""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, compute_dtype, non_negative, register


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True, inplace: bool = False) -> torch.Tensor:
    """Weighted sum of same-shape tensors.

        merged = sum_i w_i * x_i / sum_i w_i      (normalize=True)
        merged = sum_i w_i * x_i                  (normalize=False)

    Computed in float32 (float64 inputs stay float64), accumulating in input order.

    Args:
        tensors: N tensors of one shape.
        weights: N weights.
        normalize: divide by the sum of the weights.
        inplace: accumulate in `tensors[0]` when it already has the compute dtype (a private
            buffer of the caller's; the same values, one allocation and pass fewer).
    Returns: float32 (or float64) tensor of the inputs' shape.
    """
    dtype = compute_dtype(tensors[0])
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    first = tensors[0].to(dtype)
    acc = first.mul_(float(weights[0])) if inplace and first is tensors[0] else first * float(weights[0])
    for x, w in zip(tensors[1:], weights[1:]):
        acc.add_(x.to(dtype), alpha=float(w))
    if normalize:
        acc.div_(float(sum(weights)))
    return acc


@register
class Linear(MergeMethod):
    name = "linear"
    min_models = 1
    params = (
        Param("weight", 1.0, per_model=True, check=non_negative, doc="one weight per model"),
        Param("normalize", True, check=boolean, doc="divide by the sum of the weights"),
    )
    label_param = "weight"
    mergekit_defaults = {"weight": None, "normalize": True}
    mergekit_inputs = "all"

    def check_combination(self, values: dict, where: str) -> None:
        if values["normalize"] and sum(values["weight"]) <= 0:
            raise LsMergeError(f"linear: the weights sum to 0 ({where}); give at least one model a positive weight.")

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        # the executor's inputs are private buffers; the first may be written unless it is shared
        private = isinstance(tensors, list) and base is not tensors[0] and all(t is not tensors[0] for t in tensors[1:])
        return linear(tensors, params["weight"], params["normalize"], inplace=private)
