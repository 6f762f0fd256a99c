"""Isotropic merging (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model Merging
with Common and Task-Specific Subspaces"): Iso-C and Iso-CTS.

For one 2-D weight with task matrices dW_i = W_i - W_base (m, n), i = 1..N, k = min(m, n):

Iso-C (isotropic merging in the common subspace):

    M = sum_i dW_i = U diag(s) V^T
    merged = W_base + alpha * mean(s) U V^T          (the spectrum flattened to its mean)

Iso-CTS (common and task-specific subspaces):

    c = floor(k * common_fraction);  t = N * round((k - c) / N) (at most N floor(k / N));
    c = k - t;  r = t / N                             (the task blocks divide evenly)
    U_c diag(s_c) V_c^T = top-c SVD of M              (common subspace)
    R_i = dW_i - U_c U_c^T dW_i = U_i diag(s_i) V_i^T (each task outside the common subspace)
    U = [U_1[:, :r] ... U_N[:, :r]  U_c]   (m, k),    V likewise (n, k),
    s = [s_1[:r] ... s_N[:r]  s_c]         (k)
    U_perp = polar(U), V_perp = polar(V)              (orthogonalised, `spectral.polar_factor`)
    merged = W_base + alpha * mean(s) U_perp V_perp^T

Other tensors (1-D, and the embedding / lm_head tables): W_base + alpha * mean_i dW_i, the
reference code's fallback.

Reference implementation: github.com/danielm1405/iso-merging, `src/utils/iso.py` (`iso_c`,
`iso_cts`; common_space_fraction 0.8). alpha: the reference picks it per experiment on
validation data from linspace(0, 3, 31)[1:], so the paper has no single value; the default
here is 1.0 (set it in the recipe). Differences: t is capped at N floor(k / N) (the reference's
rounding can exceed k for tiny matrices); the polar factor leaves out numerically-zero
components (identical tasks give a well-defined result); every SVD keeps only its
numerically-nonzero components (`spectral.truncated_svd`; a residual R_i counts as zero at the
size of dW_i, so the rounding residue of a task inside the common subspace adds nothing), and
mean(s) still averages over all k (c or N r + c) slots, the left-out ones as 0. So a task
matrix of rank below k (a LoRA's) gives a flat spectrum on its numerical range instead of the
reference's U V^T over the whole k, whose null-space part is LAPACK's arbitrary choice of
singular vectors (see `spectral`). Computed in float64 through Gram eigendecompositions
(`spectral`), returned in the deltas' dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, density_range, finite, register, release_inputs
from lsmerge.merge.weight.spectral import all_zero, is_task_matrix, polar_factor, truncated_svd
from lsmerge.merge.weight.task_arithmetic import task_vectors
from lsmerge.merge.weight.tsv import mean_task_vector


def iso_c_delta(deltas: torch.Tensor) -> torch.Tensor:
    """mean(s) U V^T of M = sum_i deltas_i (N, m, n), over M's numerically-nonzero components
    (mean(s) over all min(m, n), the others 0). Returns (m, n) in deltas' dtype."""
    k = min(deltas.shape[1:])
    u, s, vh = truncated_svd(deltas.sum(dim=0), k)
    return ((u * (s.sum() / k)) @ vh).to(deltas.dtype)


def subspace_sizes(k: int, n_tasks: int, common_fraction: float) -> tuple[int, int]:
    """(c, r): common components and components per task, c + N r = k (module docstring)."""
    c = int(k * common_fraction)
    t = min(round((k - c) / n_tasks) * n_tasks, (k // n_tasks) * n_tasks)
    return k - t, t // n_tasks


def iso_cts_delta(deltas: torch.Tensor, common_fraction: float = 0.8) -> torch.Tensor:
    """mean(s) U_perp V_perp^T of Iso-CTS (module docstring) from deltas (N, m, n). Returns (m, n)."""
    n_tasks, m, n = deltas.shape
    k = min(m, n)
    c, r = subspace_sizes(k, n_tasks, common_fraction)
    u_c, s_c, vh_c = truncated_svd(deltas.sum(dim=0), c)
    us, ss, vhs = [], [], []
    if r > 0:
        for d in deltas:
            d = d.to(torch.float64)
            residual = d - u_c @ (u_c.T @ d)
            u_i, s_i, vh_i = truncated_svd(residual, r, scale=float(torch.linalg.vector_norm(d)))
            us.append(u_i)
            ss.append(s_i)
            vhs.append(vh_i)
    u_all = torch.cat([*us, u_c], dim=1)
    vh_all = torch.cat([*vhs, vh_c], dim=0)
    level = torch.cat([*ss, s_c]).sum() / k  # the mean over the k slots, left-out components 0
    del us, vhs, ss
    return ((polar_factor(u_all) * level) @ polar_factor(vh_all)).to(deltas.dtype)


def iso_c(base: torch.Tensor, tensors: Sequence[torch.Tensor], alpha: float = 1.0, matrix: bool | None = None) -> torch.Tensor:
    """Iso-C. base (S); tensors N x (S); matrix: take the SVD path (default: S is 2-D). Returns (S)."""
    return iso_of_task_vectors(base, task_vectors(base, tensors), iso_c_delta, alpha, matrix)


def iso_cts(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    alpha: float = 1.0,
    common_fraction: float = 0.8,
    matrix: bool | None = None,
) -> torch.Tensor:
    """Iso-CTS. base (S); tensors N x (S); matrix: take the SVD path (default: S is 2-D). Returns (S)."""
    return iso_of_task_vectors(base, task_vectors(base, tensors), lambda d: iso_cts_delta(d, common_fraction), alpha, matrix)


def iso_of_task_vectors(base, deltas, delta_fn, alpha=1.0, matrix=None) -> torch.Tensor:
    """base + alpha * delta_fn(deltas) for a task matrix, base + alpha * mean_i deltas_i otherwise."""
    if not (base.dim() == 2 if matrix is None else matrix):
        return mean_task_vector(base, deltas, alpha)
    if all_zero(deltas):
        return base.to(deltas.dtype).clone()
    return delta_fn(deltas).mul_(alpha).add_(base.to(deltas.dtype))


class _Iso(MergeMethod):
    base = "required"
    min_models = 2
    label_param = "alpha"

    def delta(self, deltas: torch.Tensor, params: dict) -> torch.Tensor:
        raise NotImplementedError

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        deltas = task_vectors(base, tensors)
        release_inputs(tensors)
        return iso_of_task_vectors(base, deltas, lambda d: self.delta(d, params), float(params["alpha"]),
                                   is_task_matrix(base, ctx.kind))


ALPHA_DOC = "scale of the merged task matrix (the paper tunes it on validation data in (0, 3])"


@register
class IsoC(_Iso):
    name = "iso_c"
    params = (Param("alpha", 1.0, check=finite, doc=ALPHA_DOC),)

    def delta(self, deltas, params):
        return iso_c_delta(deltas)


@register
class IsoCTS(_Iso):
    name = "iso_cts"
    params = (
        Param("alpha", 1.0, check=finite, doc=ALPHA_DOC),
        Param("common_fraction", 0.8, check=density_range,
              doc="fraction of the singular components taken from the summed task matrix, in (0, 1] (the paper: 0.8)"),
    )

    def delta(self, deltas, params):
        return iso_cts_delta(deltas, float(params["common_fraction"]))
