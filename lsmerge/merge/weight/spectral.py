"""Singular-vector helpers shared by the task-matrix merges (`tsv`, `iso`, `knots`).

A *task matrix* is the task vector of one 2-D weight, dW_i = W_i - W_base, (out, in). The
SVD-based methods act on task matrices of linear maps only; every other tensor (1-D norms and
biases, and the embedding / lm_head tables, whose rows are per-token lookups rather than a
linear map's singular directions) takes the method's fallback (`is_task_matrix`).

The decompositions go through the eigendecomposition of the smaller Gram matrix in float64 on
the tensor's device (as `knots.joint_basis`): for x (m, n), m <= n,

    x x^T = U diag(s^2) U^T,   V^T = diag(1 / s) U^T x        (x^T x and U = x V diag(1 / s)
                                                               when m > n)

which gives the SVD's U, s, V (up to signs and rotations inside repeated singular values, which
leave every product used here unchanged) at about 40 % of the CPU time of a float32 LAPACK SVD
of a 576 x 1536 matrix (0.08 s against 0.21 s, one thread), and the polar factor of a
concatenation of singular vectors from its k x k Gram matrix. Squaring in float64 resolves
singular values down to ~1e-8 s_max, below the cut `null_tolerance` (>= s_max * eps(float32));
float32 checkpoints carry no more precision.

Numerically-zero singular components (s <= `null_tolerance`) are left out everywhere. Their
singular vectors are not a function of the matrix (any orthonormal basis of the null space is an
equally valid SVD, and LAPACK picks one from rounding noise), so keeping them, as the papers'
code does, makes the merge depend on that noise: on the 7 changed matrices of layer 20 of the
LoRA-trained SmolLM2 pair (rank-16 task matrices) a float32 and a float64 SVD of the same input
gave TSV-M / Iso-CTS / Iso-C merges 60-82 / 74-100 / 38-87 % apart (relative Frobenius norm), and
22-45 % of the TSV-M update lay outside the tasks' joint column span. Leaving them out is the papers' code
with those components replaced by zero columns (as its own zero padding does); on full-rank task
matrices nothing is left out and the result is the SVD route's within float tolerance
(tests/test_merge_weight_spectral.py).
"""

from __future__ import annotations

import torch

from lsmerge.merge.weight.selection import EMBED_KINDS

NULL_EPS = torch.finfo(torch.float32).eps  # the cut's precision: float32, whatever the dtype (as `knots`)


def is_task_matrix(t: torch.Tensor, kind: str = "") -> bool:
    """True for a 2-D weight of a linear map (not an embedding or lm_head table)."""
    return t.dim() == 2 and kind not in EMBED_KINDS


def all_zero(deltas: torch.Tensor) -> bool:
    """No task changed this tensor: every SVD-based merge of it is the base (skip the SVDs)."""
    return not bool(deltas.any())


def null_tolerance(scale: float, shape: tuple[int, ...]) -> float:
    """scale * max(m, n) * eps(float32): singular values at or below it count as zero (the cut of
    `torch.linalg.matrix_rank` with scale = s_max, in float32 precision)."""
    return float(scale) * max(shape) * NULL_EPS


def _gram_eigh(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(s descending, eigenvectors of the smaller Gram matrix (columns), wide = m <= n), float64."""
    wide = x.shape[0] <= x.shape[1]
    lam, vecs = torch.linalg.eigh(x @ x.T if wide else x.T @ x)
    return lam.flip(0).clamp_min(0).sqrt(), vecs.flip(1), wide


def truncated_svd(x: torch.Tensor, r: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top singular triplets of x (m, n) with s > null_tolerance(scale, x.shape), at most r.

    scale: the size that sets the cut (default s_max of x; a caller passes the task matrix's own
    size when x is what is left of it after a projection, so that rounding residue is zero).
    Returns U (m, q), s (q) descending, Vh (q, n), q <= min(r, m, n), in float64 (module
    docstring: through the smaller Gram matrix)."""
    x = x.to(torch.float64)
    m, n = x.shape
    empty = (x.new_zeros(m, 0), x.new_zeros(0), x.new_zeros(0, n))
    if r <= 0 or not bool(x.any()):
        return empty
    if scale is not None and float(torch.linalg.vector_norm(x)) <= null_tolerance(scale, (m, n)):
        return empty  # every singular value is <= the Frobenius norm: nothing above the cut, skip the work
    s, vecs, wide = _gram_eigh(x)
    tol = null_tolerance(float(s[0]) if scale is None else scale, (m, n))
    q = min(int((s > tol).sum()), r)
    s, vecs = s[:q], vecs[:, :q]
    if wide:
        return vecs, s, (vecs.T @ x) / s[:, None]
    return (x @ vecs) / s, s, vecs.T.contiguous()


def polar_factor(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal (polar) factor of a (m, k): the nearest matrix with orthonormal columns
    (rows when k > m) in Frobenius norm, the Procrustes solution.

        a = P diag(s) Q^T   =>   polar(a) = P Q^T = a Q diag(1 / s) Q^T   (= P diag(1 / s) P^T a)

    through the eigendecomposition of the smaller Gram matrix a^T a = Q diag(s^2) Q^T (a a^T when
    k > m) in float64. Components with s <= null_tolerance(s_max, a.shape) are left out, so a
    rank-deficient a (e.g. the same singular vector contributed twice by identical tasks) gets
    the well-defined partial isometry on its range instead of arbitrary completions of its null
    space; on a full-rank a this is exactly P Q^T. Returns a's shape, a's dtype.
    """
    x = a.to(torch.float64)
    m, k = x.shape
    if x.numel() == 0 or not bool(x.any()):
        return torch.zeros_like(a)
    lam, vecs = torch.linalg.eigh(x @ x.T if k > m else x.T @ x)
    s = lam.clamp_min(0).sqrt()
    keep = s > null_tolerance(float(s.max()), (m, k))
    s, vecs = s[keep], vecs[:, keep]
    out = vecs @ ((vecs.T @ x) / s[:, None]) if k > m else ((x @ vecs) / s) @ vecs.T
    return out.to(a.dtype)
