"""Steering: add a task vector in representation space, h = h_base + alpha * delta."""

from __future__ import annotations

import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.hidden.base import register


@register("steer", sources="none")
def steer(h: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
    """h + alpha * delta, in float32.

    Args:
        h: (..., hidden) states.
        delta: (hidden,) task vector, broadcast over positions (see `steering.compute_deltas`).
        alpha: strength; 0 returns h itself.

    Returns:
        (..., hidden) tensor in h's dtype.
    """
    if alpha == 0.0:
        return h
    if delta.shape[-1] != h.shape[-1]:
        raise LsMergeError(
            f"steering delta has size {delta.shape[-1]} but the hidden states have size {h.shape[-1]}; "
            "compute the deltas with `lsmerge steer` for this base model"
        )
    return (h.float() + float(alpha) * delta.to(device=h.device, dtype=torch.float32)).to(h.dtype)
