"""KnOTS (Stoica et al., ICLR 2025, "Model merging with SVD to tie the KnOTS"): align the task
matrices in one joint singular basis, then merge their coefficients there with TIES or DARE.

For one 2-D weight with task matrices dW_i = W_i - W_base (out, in), i = 1..N:

    [dW_1 ... dW_N] = U diag(s) [V_1^T ... V_N^T]      (thin SVD of the (out, N in)
                                                        concatenation, float64, through
                                                        the eigenvectors of its Gram matrix)
    keep the components with s > tol                   (numerically nonzero; r of them)
    C_i = diag(s) V_i^T                    (r, in)     (task i's coefficients: dW_i = U C_i)
    KnOTS-TIES: C = TIES(C_1..C_N; weights, densities, lambda)
                  = lambda * disjoint mean of the trimmed, sign-elected w_i C_i  (`ties`)
    KnOTS-DARE: C = lambda * disjoint mean of the sign-elected w_i DARE(C_i; density)
                  (DARE's drop and 1/density rescale, then TIES' election, no trim: the
                   reference's `dare: True` with topK 100)
    merged = W_base + U C

Other tensors (1-D, and the embedding / lm_head tables): the same TIES / DARE-TIES on the
plain task vectors (the reference's `merge_other_params`).

Reference implementation: github.com/gstoica27/KnOTS (`task_merger.SVDMerger`,
`masking_ops.ties_masking`). Defaults are its configs for LoRA experts of a language model
(Llama-3-8B, `configs/llama8B_r16_knots_*.py`): KnOTS-TIES topK 100 (density 1.0), scaling
0.5; KnOTS-DARE pruning 0.8 (density 0.2), scaling 0.4. (Its ViT-B/32 configs: TIES density
0.2, scaling 0.6; DARE density 0.9, scaling 0.7.) Differences: the reference trims to topK over
all layers of a task at once; streaming tensor by tensor trims each tensor to its density (as
`ties` does); it keeps s > 1e-5 (absolute), here s > s_max * max(out, N in) * eps(float32)
(relative, so the cut does not depend on the weights' scale); ties in the trim are broken by
index (`ties.trim_to_density_`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, density_range, finite, register, release_inputs, tensor_seed
from lsmerge.merge.weight.dare import RESCALES, dare_drop
from lsmerge.merge.weight.spectral import all_zero, is_task_matrix
from lsmerge.merge.weight.task_arithmetic import task_vectors
from lsmerge.merge.weight.ties import ties_of_task_vectors


def joint_basis(deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U (out, r) and the coefficients C (N, r, in) with deltas_i = U C_i (module docstring).

    X = [dW_1 ... dW_N] (out, N in). The left singular vectors come from the eigenvectors of
    the smaller Gram matrix, in float64 on deltas' device: X X^T = U diag(s^2) U^T when
    out <= N in, else X^T X = V diag(s^2) V^T and U = X V diag(1 / s); then C = U^T X (= diag(s)
    V^T, the reference's S V_i^T). The same U, s as an SVD (up to signs and rotations inside
    repeated singular values, which leave U C unchanged) at a fraction of its cost for the wide
    concatenation. U and C come back in deltas' dtype."""
    n_tasks, out_dim, in_dim = deltas.shape
    if all_zero(deltas):
        return deltas.new_zeros(out_dim, 0), deltas.new_zeros(n_tasks, 0, in_dim)
    joint = deltas.permute(1, 0, 2).reshape(out_dim, n_tasks * in_dim).to(torch.float64)  # [dW_1 ... dW_N]
    wide = out_dim <= n_tasks * in_dim
    lam, vecs = torch.linalg.eigh(joint @ joint.T if wide else joint.T @ joint)
    lam, vecs = lam.flip(0).clamp_min(0), vecs.flip(1)  # descending
    tol = float(lam[0]) * (max(out_dim, n_tasks * in_dim) * torch.finfo(torch.float32).eps) ** 2
    r = int((lam > tol).sum())
    u = vecs[:, :r] if wide else (joint @ vecs[:, :r]) / lam[:r].sqrt()
    coeffs = (u.T @ joint).reshape(r, n_tasks, in_dim).permute(1, 0, 2)
    return u.to(deltas.dtype), coeffs.to(deltas.dtype).contiguous()


def merge_in_basis(base: torch.Tensor, u: torch.Tensor, merged_coeffs: torch.Tensor) -> torch.Tensor:
    """W_base + U C."""
    return torch.addmm(base.to(u.dtype), u, merged_coeffs)


def knots_ties_delta(deltas: torch.Tensor, weights: Sequence[float], densities: Sequence[float], lam: float,
                     tie_break: str = "index") -> tuple[torch.Tensor, torch.Tensor]:
    """(U, C): C = TIES of the coefficients (a private buffer, trimmed in place)."""
    u, coeffs = joint_basis(deltas)
    zero = torch.zeros((), dtype=coeffs.dtype, device=coeffs.device)
    return u, ties_of_task_vectors(zero, coeffs, weights, densities, lam, True, tie_break)


def knots_dare_delta(deltas: torch.Tensor, weights: Sequence[float], densities: Sequence[float], seeds: Sequence[int],
                     lam: float, rescale: str = "inverse_density") -> tuple[torch.Tensor, torch.Tensor]:
    """(U, C): C = sign-elected disjoint mean of the DARE-dropped coefficients."""
    u, coeffs = joint_basis(deltas)
    for i, (d, seed) in enumerate(zip(densities, seeds, strict=True)):
        coeffs[i] = dare_drop(coeffs[i], float(d), seed, rescale)
    zero = torch.zeros((), dtype=coeffs.dtype, device=coeffs.device)
    return u, ties_of_task_vectors(zero, coeffs, weights, [1.0] * len(weights), lam, True)


def knots_ties(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], densities: Sequence[float],
               lam: float = 0.5, tie_break: str = "index", matrix: bool | None = None) -> torch.Tensor:
    """KnOTS-TIES. base (out, in) (other shapes: plain TIES); tensors N x base's shape;
    weights, densities: N each; matrix: take the joint-SVD path (default: base is 2-D)."""
    return knots_ties_of_task_vectors(base, task_vectors(base, tensors), weights, densities, lam, tie_break, matrix)


def knots_ties_of_task_vectors(base, deltas, weights, densities, lam=0.5, tie_break="index", matrix=None) -> torch.Tensor:
    """`knots_ties` from the stacked task vectors (N, *S) of `task_vectors` (a private buffer)."""
    if not (base.dim() == 2 if matrix is None else matrix):
        return ties_of_task_vectors(base, deltas, weights, densities, lam, True, tie_break)
    return merge_in_basis(base, *knots_ties_delta(deltas, weights, densities, lam, tie_break))


def knots_dare(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], densities: Sequence[float],
               seeds: Sequence[int], lam: float = 0.4, rescale: str = "inverse_density", matrix: bool | None = None) -> torch.Tensor:
    """KnOTS-DARE. As `knots_ties`; seeds: one per task (`base.tensor_seed`); other shapes:
    DARE-TIES with the disjoint mean on the plain task vectors."""
    return knots_dare_of_task_vectors(base, task_vectors(base, tensors), weights, densities, seeds, lam, rescale, matrix)


def knots_dare_of_task_vectors(base, deltas, weights, densities, seeds, lam=0.4, rescale="inverse_density", matrix=None) -> torch.Tensor:
    """`knots_dare` from the stacked task vectors (N, *S) of `task_vectors` (a private buffer)."""
    if not (base.dim() == 2 if matrix is None else matrix):
        for i, (d, seed) in enumerate(zip(densities, seeds, strict=True)):
            deltas[i] = dare_drop(deltas[i], float(d), seed, rescale)
        return ties_of_task_vectors(base, deltas, weights, [1.0] * len(weights), lam, True)
    return merge_in_basis(base, *knots_dare_delta(deltas, weights, densities, seeds, lam, rescale))


def _rescale_check(v) -> str | None:
    return None if v in RESCALES else f"must be one of {RESCALES}"


@register
class KnotsTies(MergeMethod):
    name = "knots_ties"
    base = "required"
    min_models = 2
    params = (
        Param("weight", 1.0, per_model=True, check=finite, doc="scale of each task's coefficients"),
        Param("density", 1.0, per_model=True, check=density_range,
              doc="fraction of each task's coefficients kept by the trim (the reference's LLM config: 1.0)"),
        Param("lambda", 0.5, check=finite, doc="scale of the merged coefficients (the reference's LLM config: 0.5)"),
    )
    label_param = "density"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        deltas = task_vectors(base, tensors)
        release_inputs(tensors)
        return knots_ties_of_task_vectors(base, deltas, params["weight"], params["density"], float(params["lambda"]),
                                          matrix=is_task_matrix(base, ctx.kind))


@register
class KnotsDare(MergeMethod):
    name = "knots_dare"
    base = "required"
    min_models = 2
    params = (
        Param("weight", 1.0, per_model=True, check=finite, doc="scale of each task's coefficients"),
        Param("density", 0.2, per_model=True, check=density_range,
              doc="probability of keeping a coefficient, 1 - p (the reference's LLM config: p = 0.8)"),
        Param("lambda", 0.4, check=finite, doc="scale of the merged coefficients (the reference's LLM config: 0.4)"),
        Param("rescale", "inverse_density", check=_rescale_check, doc="inverse_density (paper), l1 or none"),
    )
    label_param = "density"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        seeds = [tensor_seed(ctx.seed, ctx.name, i) for i in range(len(tensors))]
        deltas = task_vectors(base, tensors)
        release_inputs(tensors)
        return knots_dare_of_task_vectors(base, deltas, params["weight"], params["density"], seeds, float(params["lambda"]),
                                          params["rescale"], matrix=is_task_matrix(base, ctx.kind))
