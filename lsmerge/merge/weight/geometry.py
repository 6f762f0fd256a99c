"""Inner products of whole tensors, for the methods that live on a hypersphere (Karcher mean,
Multi-SLERP, Model Stock): their iterations run on an N x N Gram matrix instead of on the
tensors, so each merged tensor costs one pass to build the Gram matrix and one to combine.
"""

from __future__ import annotations

from typing import Sequence

import torch

CHUNK = 1 << 20  # entries per block of the float64 Gram accumulation (N x 8 MiB of temporaries)


def gram(xs: Sequence[torch.Tensor], chunk: int = CHUNK) -> torch.Tensor:
    """G[i, j] = <x_i, x_j> of the flattened tensors, in float64.

    Blocks of `chunk` entries are converted to float64, where the product of two float32
    values is exact, and summed by a float64 matrix product: relative error ~1e-15, so a
    quadratic form c^T G c that cancels to ~1e-5 of |c|^2 |G| (a Karcher tangent near
    convergence) is still accurate to ~1e-10.

    Args: xs: N tensors of one shape (any float dtype, any device). Returns (N, N) float64 on
    the tensors' device.
    """
    flats = [x.reshape(-1) for x in xs]
    n = flats[0].numel()
    g = torch.zeros((len(flats), len(flats)), dtype=torch.float64, device=flats[0].device)
    for s in range(0, n, chunk):
        block = torch.stack([f[s : s + chunk] for f in flats]).to(torch.float64)
        g += block @ block.T
    return g


def combine(coefs: Sequence[float], xs: Sequence[torch.Tensor], dtype: torch.dtype, add_to: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i coefs_i x_i (+ add_to) in `dtype`, one output buffer, accumulated in input order."""
    out = xs[0].to(dtype) * float(coefs[0]) if add_to is None else add_to.to(dtype, copy=True).add_(xs[0].to(dtype), alpha=float(coefs[0]))
    for c, x in zip(coefs[1:], xs[1:]):
        out.add_(x.to(dtype), alpha=float(c))
    return out
