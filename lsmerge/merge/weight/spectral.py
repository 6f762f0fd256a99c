"""Singular-vector helpers shared by the task-matrix merges (`tsv`, `iso`, `knots`).

A *task matrix* is the task vector of one 2-D weight, dW_i = W_i - W_base, (out, in). The
SVD-based methods act on task matrices of linear maps only; every other tensor (1-D norms and
biases, and the embedding / lm_head tables, whose rows are per-token lookups rather than a
linear map's singular directions) takes the method's fallback (`is_task_matrix`).

All SVDs are thin (`full_matrices=False`), on the tensor's device, in float32 (float64 stays
float64, and a caller may ask for float64 where the reference code uses it).
"""

from __future__ import annotations

import torch

from lsmerge.merge.weight.selection import EMBED_KINDS


def is_task_matrix(t: torch.Tensor, kind: str = "") -> bool:
    """True for a 2-D weight of a linear map (not an embedding or lm_head table)."""
    return t.dim() == 2 and kind not in EMBED_KINDS


def all_zero(deltas: torch.Tensor) -> bool:
    """No task changed this tensor: every SVD-based merge of it is the base (skip the SVDs)."""
    return not bool(deltas.any())


def thin_svd(x: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (m, n) = U diag(s) Vh, U (m, k), s (k) descending, Vh (k, n), k = min(m, n).

    Computed in `dtype` (default: float64 for float64 input, else float32)."""
    if dtype is None:
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.linalg.svd(x.to(dtype), full_matrices=False)


def rank_tolerance(s: torch.Tensor, shape: tuple[int, ...]) -> float:
    """The numerical-rank cut of `torch.linalg.matrix_rank`: s_max * max(m, n) * eps(dtype)."""
    if s.numel() == 0:
        return 0.0
    return float(s.max()) * max(shape) * torch.finfo(s.dtype).eps


def polar_factor(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal (polar) factor of a (m, k): the nearest matrix with orthonormal columns
    (rows when k > m) in Frobenius norm, the Procrustes solution.

        a = P diag(s) Q^T   =>   polar(a) = P Q^T

    Components with s below the numerical-rank tolerance (`rank_tolerance`) are left out, so
    a rank-deficient a (e.g. the same singular vector contributed twice by identical tasks)
    gets the well-defined partial isometry on its range instead of arbitrary completions of
    its null space; on a full-rank a this is exactly P Q^T. Returns a's shape, a's dtype.
    """
    p, s, qh = torch.linalg.svd(a, full_matrices=False)
    keep = s > rank_tolerance(s, tuple(a.shape))
    if bool(keep.all()):
        return p @ qh
    return p[:, keep] @ qh[keep]
