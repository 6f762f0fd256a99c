"""TSV-Merge (Gargiulo et al., CVPR 2025, "Task Singular Vectors: Reducing Task Interference in
Model Merging"): low-rank task matrices, decorrelated by orthogonalising their singular vectors.

For one 2-D weight with task matrices dW_i = W_i - W_base (m, n), i = 1..N, k = min(m, n):

    dW_i = U_i diag(s_i) V_i^T                              (thin SVD, per task)
    r    = max(1, floor(k * rank_fraction))                  (rank_fraction default 1/N: the
                                                              N blocks fill k columns exactly)
    U    = [U_1[:, :r] ... U_N[:, :r]]      (m, N r)         (the task singular vectors)
    S    = diag(s_1[:r], ..., s_N[:r])      (N r, N r)
    V    = [V_1[:, :r] ... V_N[:, :r]]      (n, N r)
    U_perp = P_U Q_U^T  where U = P_U diag(.) Q_U^T          (polar factor: the orthonormal
    V_perp = P_V Q_V^T  where V = P_V diag(.) Q_V^T           matrix nearest to U, Procrustes)
    merged = W_base + alpha * U_perp S V_perp^T

Other tensors (1-D, and the embedding / lm_head tables): merged = W_base + alpha * mean_i dW_i,
the reference code's fallback for non-matrix parameters.

Reference implementation: github.com/AntoAndGar/task_singular_vectors,
`compute_and_sum_svd_mem_reduction` (sv_reduction = 1/N, alpha 1.0 for TSV-M). Differences:
the blocks are concatenated without zero padding (the padding only adds columns whose singular
value is zero); each task keeps only its numerically-nonzero components among its top r
(`spectral.truncated_svd`: a task matrix of rank 16, as a LoRA's, contributes 16, not r,
columns; the others' singular vectors are LAPACK's arbitrary choice, see `spectral`); the polar
factor leaves out numerically-zero components (`spectral.polar_factor`), which changes nothing
for distinct tasks and makes identical tasks well defined; r >= 1. Computed in float64 through
Gram eigendecompositions (`spectral`), returned in the deltas' dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, density_range, finite, register, release_inputs
from lsmerge.merge.weight.spectral import all_zero, is_task_matrix, polar_factor, truncated_svd
from lsmerge.merge.weight.task_arithmetic import task_vectors


def rank_fraction_check(v) -> str | None:
    if v is None:
        return None
    problem = density_range(v)
    return None if problem is None else "must be a number in (0, 1], or null for 1/N (the paper's choice)"


def kept_rank(k: int, fraction: float) -> int:
    """r = max(1, floor(k * fraction)): singular components kept per task."""
    return max(1, int(k * fraction))


def mean_task_vector(base: torch.Tensor, deltas: torch.Tensor, alpha: float) -> torch.Tensor:
    """base + alpha * mean_i delta_i (the fallback of the spectral merges for non-matrix tensors)."""
    return deltas.mean(dim=0).mul_(alpha).add_(base.to(deltas.dtype))


def tsv_delta(deltas: torch.Tensor, rank_fraction: float | None = None) -> torch.Tensor:
    """U_perp S V_perp^T of the module docstring, from stacked task matrices (N, m, n).

    Returns (m, n) in deltas' dtype (float32, or float64 for float64 input)."""
    n_tasks, m, n = deltas.shape
    fraction = 1.0 / n_tasks if rank_fraction is None else float(rank_fraction)
    r = min(kept_rank(min(m, n), fraction), min(m, n))
    us, ss, vhs = zip(*(truncated_svd(d, r) for d in deltas))
    u_cat, s_cat, vh_cat = torch.cat(us, dim=1), torch.cat(ss), torch.cat(vhs, dim=0)
    del us, ss, vhs
    return ((polar_factor(u_cat) * s_cat) @ polar_factor(vh_cat)).to(deltas.dtype)


def tsv(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    alpha: float = 1.0,
    rank_fraction: float | None = None,
    matrix: bool | None = None,
) -> torch.Tensor:
    """TSV-M (module docstring). base (S); tensors N x (S); matrix: take the SVD path (default:
    S is 2-D). Returns (S) in float32 (float64 for float64 input)."""
    return tsv_of_task_vectors(base, task_vectors(base, tensors), alpha, rank_fraction, matrix)


def tsv_of_task_vectors(base, deltas, alpha=1.0, rank_fraction=None, matrix=None) -> torch.Tensor:
    """`tsv` from the stacked task vectors (N, *S) of `task_vectors`."""
    if not (base.dim() == 2 if matrix is None else matrix):
        return mean_task_vector(base, deltas, alpha)
    if all_zero(deltas):
        return base.to(deltas.dtype).clone()
    return tsv_delta(deltas, rank_fraction).mul_(alpha).add_(base.to(deltas.dtype))


@register
class TaskSingularVectors(MergeMethod):
    name = "tsv"
    base = "required"
    min_models = 2
    params = (
        Param("alpha", 1.0, check=finite, doc="scale of the merged task matrix (the paper: 1.0)"),
        Param("rank_fraction", None, check=rank_fraction_check,
              doc="fraction of each task matrix's singular components kept, in (0, 1]; null: 1/N (the paper)"),
    )
    label_param = "alpha"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        deltas = task_vectors(base, tensors)
        release_inputs(tensors)
        return tsv_of_task_vectors(base, deltas, float(params["alpha"]), params["rank_fraction"], is_task_matrix(base, ctx.kind))
