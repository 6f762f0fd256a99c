"""LERP of residual streams: h = (1 - beta) * h_base + beta * h_ft."""

from __future__ import annotations

import torch

from lsmerge.merge.hidden.base import check_beta, register


@register("lerp", sources="one")
def lerp(h_base: torch.Tensor, h_ft: torch.Tensor, beta: float) -> torch.Tensor:
    """h = (1 - beta) * h_base + beta * h_ft, in float32.

    Args:
        h_base, h_ft: (..., hidden) states of one shape; any float dtype.
        beta: in [0, 1]; 0 returns h_base itself.

    Returns:
        (..., hidden) tensor in h_base's dtype.
    """
    check_beta(beta)
    if beta == 0.0:
        return h_base
    out = torch.lerp(h_base.float(), h_ft.float(), float(beta))
    return out.to(h_base.dtype)
