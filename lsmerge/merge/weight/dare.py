"""DARE (Yu et al. 2024): drop task-vector entries at random and rescale; linear and TIES variants."""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import (
    MergeMethod,
    Param,
    TensorContext,
    boolean,
    density_range,
    finite,
    register,
    tensor_seed,
)
from lsmerge.merge.weight.task_arithmetic import combine_deltas, task_vectors, weight_column
from lsmerge.merge.weight.ties import ties_of_task_vectors

RESCALES = ("inverse_density", "l1", "none")


def dare_drop(delta: torch.Tensor, density: float, seed: int, rescale: str = "inverse_density") -> torch.Tensor:
    """Keep each entry with probability `density` (= 1 - p), drop the rest, rescale.

        keep_j ~ Bernoulli(density)     (uniforms drawn on the CPU from a generator seeded
                                         with `seed`, so every device gives the same mask)
        inverse_density: out = keep * delta / density    (the paper's 1/(1-p); E[out] = delta)
        l1:              out = keep * delta * |delta|_1 / |keep * delta|_1   (mergekit's rescale)
        none:            out = keep * delta

    density >= 1 returns `delta` unchanged.
    """
    if density >= 1:
        return delta
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    keep = (torch.rand(delta.shape, generator=g, dtype=torch.float32) < density).to(delta.device, delta.dtype)
    out = delta * keep
    if rescale == "inverse_density":
        return out / density
    if rescale == "l1":
        return l1_rescale_(out, delta.abs().sum())
    return out


def l1_rescale_(masked: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """mergekit's L1 rescale of a pruned task vector, in place on `masked` (a private buffer):

        masked * (|delta|_1 / |masked|_1),   unchanged when either norm is below 1e-7

    `before` = |delta|_1 of the unpruned delta (a 0-dim tensor), the same float32 operations as
    mergekit's `rescaled_masked_tensor` so the bits agree.
    """
    after = masked.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return masked
    return masked.mul_(before / after)


def combine_sparse(base: torch.Tensor, deltas: torch.Tensor, weights: Sequence[float], lam: float, normalize: bool, consensus: bool) -> torch.Tensor:
    """The last step of mergekit's sparsified task arithmetic (DARE, breadcrumbs, DELLA), on the
    already pruned stacked deltas (N, *S), a private buffer weighted in place:

        consensus (TIES sign election by mass, disjoint mean):
            base + lam * sum_i m_i w_i delta_i [/ sum_i m_i w_i]        (`ties_of_task_vectors`)
        linear:
            base + lam * sum_i w_i delta_i [/ sum_i w_i]   (a |sum| below 1e-8 counts as 1)
    """
    if consensus:
        return ties_of_task_vectors(base, deltas, weights, [1.0] * len(deltas), lam, normalize)
    w = weight_column(weights, deltas)
    divisor = w.sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1
    return combine_deltas(base, deltas.mul_(w), divisor, lam, normalize)


def dare(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    seeds: Sequence[int],
    lam: float = 1.0,
    normalize: bool = False,
    consensus: bool = False,
    rescale: str = "inverse_density",
) -> torch.Tensor:
    """DARE-linear (consensus=False) or DARE-TIES (consensus=True).

        delta_i = dare_drop(x_i - base, density_i, seed_i)
        linear:  merged = base + lam * sum_i w_i delta_i  [/ sum_i w_i]
        ties:    merged = base + lam * sum_i m_i w_i delta_i [/ sum_i m_i w_i]  with TIES sign election

    Args: base (S); tensors N x (S); weights, densities, seeds: N each. Returns (S).
    """
    deltas = task_vectors(base, tensors)
    for i, (d, s) in enumerate(zip(densities, seeds, strict=True)):
        deltas[i] = dare_drop(deltas[i], float(d), s, rescale)
    return combine_sparse(base, deltas, weights, lam, normalize, consensus)


def _rescale_check(v) -> str | None:
    return None if v in RESCALES else f"must be one of {RESCALES}"


class _Dare(MergeMethod):
    base = "required"
    consensus: bool = False
    label_param = "density"
    mergekit_defaults = {"weight": None, "density": 1.0, "normalize": False, "lambda": 1.0, "rescale": "l1"}

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        seeds = [tensor_seed(ctx.seed, ctx.name, i) for i in range(len(tensors))]
        return dare(base, tensors, params["weight"], params["density"], seeds, params["lambda"],
                    params["normalize"], self.consensus, params["rescale"])


def _params(normalize: bool) -> tuple[Param, ...]:
    return (
        Param("weight", 1.0, per_model=True, check=finite, doc="scale of each task vector"),
        Param("density", 0.5, per_model=True, check=density_range, doc="probability of keeping an entry (1 - p)"),
        Param("lambda", 1.0, check=finite, doc="scale of the merged task vector"),
        Param("normalize", normalize, check=boolean, doc="divide by the (agreeing) weights"),
        Param("rescale", "inverse_density", check=_rescale_check, doc="inverse_density (paper), l1 (mergekit) or none"),
    )


@register
class DareLinear(_Dare):
    name = "dare_linear"
    params = _params(False)


@register
class DareTies(_Dare):
    name = "dare_ties"
    consensus = True
    params = _params(False)

