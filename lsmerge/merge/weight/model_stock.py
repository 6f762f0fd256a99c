"""Model Stock (Jang, Yun, Han 2024, "Model Stock: All we need is just a few fine-tuned models",
arXiv:2403.19522): interpolate between the base and the average of N >= 2 fine-tunes by a ratio
read off the angle between their task vectors."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, boolean, compute_dtype, register, release_inputs
from lsmerge.merge.weight.geometry import combine, gram
from lsmerge.merge.weight.task_arithmetic import task_vectors

NORM_FLOOR = 1e-6  # |delta_i| |delta_j| below this is taken as this (mergekit's clamp)
SINGULAR = 1e-6  # |1 + (N - 1) cos| below this: no finite ratio, keep the base


def stock_ratio(cos: torch.Tensor, n: int) -> torch.Tensor:
    """t = N cos / (1 + (N - 1) cos), and t = 0 where |1 + (N - 1) cos| < 1e-6."""
    den = 1 + (n - 1) * cos
    singular = den.abs() < SINGULAR
    return torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(den), den))


def model_stock(base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    """Model Stock merge of N >= 2 fine-tunes of `base`.

        delta_i = x_i - base
        cos     = mean over pairs i < j of  <delta_i, delta_j> / max(|delta_i| |delta_j|, 1e-6),
                  each clamped to [-1, 1]
        t       = N cos / (1 + (N - 1) cos)      (0 where |1 + (N - 1) cos| < 1e-6)
        merged  = t * mean_i x_i + (1 - t) * base  =  base + t * mean_i delta_i

    filter_wise=False: one angle per tensor (the tensors flattened; dot products summed in
    float64, see `geometry.gram`). filter_wise=True: one angle per row along the last
    dimension (a 1-D tensor is one row), as mergekit's `filter_wise`.
    Float32 arithmetic (float64 stays float64); the same formula as mergekit 0.1.5's
    `model_stock`.

    Args: base (S); tensors N x (S), N >= 2. Returns (S).
    """
    if len(tensors) < 2:
        raise ValueError("model_stock needs at least 2 fine-tuned tensors")
    if filter_wise:
        return _filter_wise(base, task_vectors(base, tensors))
    n = len(tensors)
    g = gram(tensors, base)  # <delta_i, delta_j>, the task vectors one block at a time
    cos = [max(-1.0, min(1.0, float(g[i, j]) / max(math.sqrt(float(g[i, i]) * float(g[j, j])), NORM_FLOOR)))
           for i in range(n) for j in range(i + 1, n)]
    t = float(stock_ratio(torch.tensor(sum(cos) / len(cos), dtype=torch.float64), n))
    # t * mean_i x_i + (1 - t) * base, mergekit's form, in one buffer
    return combine([t / n] * n, tensors, compute_dtype(base), add_to=base, add_coef=1 - t)


def _filter_wise(base: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """`model_stock` with one angle per row, from the stacked task vectors (N, *S)."""
    n = deltas.shape[0]
    rows = deltas if base.dim() > 1 else deltas.unsqueeze(1)  # (N, ..., C): rows along the last dim
    norms = torch.linalg.vector_norm(rows, dim=-1)
    cos = [(torch.linalg.vecdot(rows[i], rows[j], dim=-1) / (norms[i] * norms[j]).clamp(min=NORM_FLOOR)).clamp(-1, 1)
           for i in range(n) for j in range(i + 1, n)]
    t = stock_ratio(torch.stack(cos).mean(dim=0), n).unsqueeze(-1)  # (..., 1)
    if base.dim() <= 1:
        t = t.reshape(-1)
    mixed = deltas.sum(dim=0).div_(n).mul_(t)
    return mixed.add_(base.to(mixed.dtype))


@register
class ModelStock(MergeMethod):
    name = "model_stock"
    base = "required"
    min_models = 2
    params = (
        Param("filter_wise", False, check=boolean, doc="one interpolation ratio per row (last dimension) instead of per tensor"),
    )
    mergekit_defaults = {"filter_wise": False}
    mergekit_inputs = "others"

    def keeps_equal_inputs(self, n_models, has_base, params) -> bool:
        # zero offsets: cos = 0 / clamp(0, 1e-6) = 0, so t = 0 and t * mean + (1 - t) * w_0 = w_0
        return True

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        if not params["filter_wise"]:
            return model_stock(base, tensors)
        deltas = task_vectors(base, tensors)
        release_inputs(tensors)
        return _filter_wise(base, deltas)

