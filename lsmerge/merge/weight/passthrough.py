"""Passthrough: one model's tensor, unchanged or scaled (mergekit's `passthrough`).

Alone it copies a model; with a mergekit recipe's `slices` and `layer_range`s it stacks layers
taken from one or several models in order, which is how depth up-scaling (SOLAR, Kim et al.
2023, "SOLAR 10.7B: Scaling Large Language Models with Simple yet Effective Depth Up-Scaling")
and "frankenmerges" are built: the layout (which input layer feeds which output layer, the new
`num_hidden_layers`) is `mergekit_layout`'s job; this method only passes the tensor on.
"""

from __future__ import annotations

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, finite, register


def passthrough(tensor: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """out = x (scale None), or out = scale * x computed in x's dtype, as mergekit does.

    Args: tensor (S). Returns (S), the input itself when unscaled.
    """
    return tensor if scale is None else tensor * scale


def _scale_check(v) -> str | None:
    return None if v is None else finite(v)


@register
class Passthrough(MergeMethod):
    name = "passthrough"
    min_models = 1
    max_models = 1
    params = (Param("scale", None, per_model=True, check=_scale_check, doc="multiply the tensor by this (none: copy)"),)
    mergekit_defaults = {"scale": None}
    mergekit_inputs = "all"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return passthrough(tensors[0], params["scale"][0])
