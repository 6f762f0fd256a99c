"""Delta coding: only the change from the base passes through the codec.

- weight: codes of W_i - W_b; output W_b + D(merged delta code) (`delta_encode` / `delta_decode`);
- latent: codes of full weights; output W_b + D(z_merged) - D(z_b), so the codec's error on the
  base cancels (`residual_decode`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.codecs.base import Codec, TensorLatent


def zero_latent(like: TensorLatent) -> TensorLatent:
    """The origin of delta space: z = 0, norm = 0 (the base of task operators on delta codes)."""
    return like.with_z(torch.zeros_like(like.z), torch.zeros_like(like.norm))


def delta_encode(codec: Codec, name: str, base: torch.Tensor, experts: Sequence[torch.Tensor]) -> list[TensorLatent]:
    """Codes of the experts' differences to the base: E(W_i - W_b)."""
    b = base.float()
    return [codec.encode(name, w.float() - b) for w in experts]


def delta_decode(codec: Codec, name: str, base: torch.Tensor, merged_delta: TensorLatent) -> torch.Tensor:
    """W_b + D(merged delta code): reconstruction error touches only the change."""
    return base.float() + codec.decode(name, merged_delta)


def residual_decode(codec: Codec, name: str, base: torch.Tensor, base_latent: TensorLatent,
                    merged: TensorLatent) -> torch.Tensor:
    """W_b + D(z_merged) - D(z_b): codes of full weights, the codec's error on the base cancels."""
    return base.float() + codec.decode(name, merged) - codec.decode(name, base_latent)
