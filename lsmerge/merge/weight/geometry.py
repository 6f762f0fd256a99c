"""Inner products of whole tensors, for the methods that live on a hypersphere (Karcher mean,
Multi-SLERP, Model Stock): their iterations run on an N x N Gram matrix instead of on the
tensors, so each merged tensor costs one pass to build the Gram matrix and one to combine.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import compute_dtype

CHUNK = 1 << 22  # entries per block: N x 32 MiB of float64 temporaries; fewer, larger ops (each op is a
# parallel region, and on a loaded machine each can wait a scheduler slice: 64Ki blocks took 10x the CPU)


def gram(xs: Sequence[torch.Tensor], base: torch.Tensor | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """G[i, j] = <x_i, x_j> of the flattened tensors (of x_i - base when `base` is given), in float64.

    Blocks of `chunk` entries are copied into one float64 buffer, where the product of two
    float32 values is exact, and summed by a float64 matrix product: relative error ~1e-15, so a
    quadratic form c^T G c that cancels to ~1e-5 of |c|^2 |G| (a Karcher tangent near
    convergence) is still accurate to ~1e-10. With `base`, each block's x_i - base is taken in
    the inputs' compute dtype first (float32: the task vectors mergekit forms), never a whole
    task vector at once.

    Args: xs: N tensors of one shape (any float dtype, any device); base: None or that shape.
    Returns (N, N) float64 on the tensors' device.
    """
    flats = [x.reshape(-1) for x in xs]
    flat_base = base.reshape(-1) if base is not None else None
    n, device = flats[0].numel(), flats[0].device
    g = torch.zeros((len(flats), len(flats)), dtype=torch.float64, device=device)
    size = min(chunk, n)
    block = torch.empty((len(flats), size), dtype=torch.float64, device=device)
    diff = torch.empty(size, dtype=compute_dtype(flats[0]), device=device) if base is not None else None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        rows = block if e - s == size else block[:, : e - s]
        for i, f in enumerate(flats):
            if flat_base is None:
                rows[i].copy_(f[s:e])
            else:
                d = diff[: e - s]
                torch.sub(f[s:e].to(d.dtype), flat_base[s:e].to(d.dtype), out=d)
                rows[i].copy_(d)
        g.addmm_(rows, rows.T)
    return g


def combine(coefs: Sequence[float], xs: Sequence[torch.Tensor], dtype: torch.dtype, add_to: torch.Tensor | None = None,
            add_coef: float = 1.0) -> torch.Tensor:
    """add_coef * add_to + sum_i coefs_i x_i (add_to None: only the sum) in `dtype`, one output
    buffer, accumulated in input order."""
    if add_to is None:
        out = torch.mul(xs[0].to(dtype), float(coefs[0]))
    else:
        out = torch.mul(add_to.to(dtype), float(add_coef)) if add_coef != 1 else add_to.to(dtype, copy=True)
        out.add_(xs[0].to(dtype), alpha=float(coefs[0]))
    for c, x in zip(coefs[1:], xs[1:]):
        out.add_(x.to(dtype), alpha=float(c))
    return out


def combine_deltas(coefs: Sequence[float], xs: Sequence[torch.Tensor], base: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """base + sum_i coefs_i (x_i - base) in base's compute dtype, block by block: the task
    vectors exist one block at a time (no whole-tensor temporaries), and a zero task vector
    leaves the base's value exactly."""
    dtype = compute_dtype(base)
    out = base.to(dtype=dtype, copy=True, memory_format=torch.contiguous_format)
    flat_out = out.view(-1)
    flats, flat_base = [x.reshape(-1) for x in xs], base.reshape(-1)
    n = flat_out.numel()
    diff = torch.empty(min(chunk, n), dtype=dtype, device=out.device)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        o, d, b = flat_out[s:e], diff[: e - s], flat_base[s:e].to(dtype)
        for c, f in zip(coefs, flats):
            o.add_(torch.sub(f[s:e].to(dtype), b, out=d), alpha=float(c))
    return out
