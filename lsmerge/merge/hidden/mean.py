"""Weighted mean of several fine-tuned residual streams, interpolated with the base's."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.hidden.base import check_beta, register


@register("mean", sources="many")
def mean(
    h_base: torch.Tensor, h_fts: Sequence[torch.Tensor], beta: float, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """h = (1 - beta) * h_base + beta * sum_i w_i h_fts[i] / sum_i w_i, in float32.

    Equal weights unless given; with one fine-tuned model this is lerp. It is a plain weighted
    mean -- the research code's "RegMean" is this with beta = 1 / (1 + lambda).

    Args:
        h_base: (..., hidden).
        h_fts: N >= 1 tensors of h_base's shape.
        beta: weight of the fine-tuned mean against the base; 0 returns h_base itself.
        weights: N non-negative weights with a positive sum; None = equal weights.

    Returns:
        (..., hidden) tensor in h_base's dtype.
    """
    check_beta(beta)
    if not h_fts:
        raise LsMergeError("the mean operator needs at least one fine-tuned model's hidden states")
    if weights is None:
        weights = [1.0] * len(h_fts)
    if len(weights) != len(h_fts):
        raise LsMergeError(f"mean: {len(weights)} weights for {len(h_fts)} fine-tuned models; give one weight per model")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise LsMergeError(f"mean: weights {list(weights)} must be non-negative with a positive sum")
    if beta == 0.0:
        return h_base
    total = float(sum(weights))
    m = sum((float(w) / total) * h.float() for w, h in zip(weights, h_fts))
    return torch.lerp(h_base.float(), m, float(beta)).to(h_base.dtype)
