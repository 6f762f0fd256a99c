"""DELLA (Deep, Bhardwaj & Ramesh 2024, arXiv:2406.11617): MagPrune, a random drop whose keep
probability grows with an entry's magnitude rank, then task arithmetic or TIES' sign election.

Random but reproducible: the uniforms come from a CPU generator seeded per tensor and input
(`tensor_seed`: the config seed, the tensor name, the input index), so a config gives the same
bytes on every run and device. mergekit 0.1.5's `della` / `della_linear` draw from torch's
unseeded global generator; they agree with these in distribution (kept fraction, its growth with
magnitude rank, the L1 rescale), not bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.base import (
    MergeMethod,
    Param,
    TensorContext,
    boolean,
    density_range,
    finite,
    non_negative,
    register,
    release_inputs,
    tensor_seed,
)
from lsmerge.merge.weight.dare import combine_sparse, l1_rescale_
from lsmerge.merge.weight.task_arithmetic import task_vectors

RESCALES = ("l1", "inverse_probability", "none")


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """The view whose dim 1 MagPrune ranks along: (1, n) for 0-d and 1-d tensors, else `t`."""
    return t.reshape(1, -1) if t.dim() < 2 else t


def keep_probabilities(magnitude: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """MagPrune's keep probability of each entry from its magnitude rank along dim 1.

        r_j = rank of |delta_j| in its row, 0 (smallest) .. n - 1 (largest)   (ties: flat index order)
        p_j = (density - epsilon) + 2 epsilon * r_j / (n - 1)                  (a 1-entry row: density)

    so p runs linearly from density - epsilon to density + epsilon and its row mean is density.
    Args: magnitude (R, n, ...) float. Returns float32 probabilities of the same shape.
    """
    n = magnitude.shape[1]
    if n == 1:
        return torch.full(magnitude.shape, float(density), dtype=torch.float32, device=magnitude.device)
    order = torch.argsort(magnitude, dim=1, stable=True)
    steps = torch.arange(n, dtype=torch.float32, device=magnitude.device).view(1, n, *([1] * (magnitude.dim() - 2)))
    ranks = torch.empty(magnitude.shape, dtype=torch.float32, device=magnitude.device)
    ranks.scatter_(1, order, steps.expand(magnitude.shape))
    del order
    return ranks.div_(n - 1).mul_(2 * epsilon).add_(density - epsilon)


def della_prune_(delta: torch.Tensor, density: float, epsilon: float, seed: int, rescale: str = "l1") -> torch.Tensor:
    """MagPrune in place on a private buffer `delta`:

        keep_j ~ Bernoulli(p_j),  p = keep_probabilities(|delta|, density, epsilon)
                 (uniforms u_j from a CPU generator seeded with `seed`; keep_j = [u_j < p_j])
        l1 (mergekit's rescale): out = keep * delta * |delta|_1 / |keep * delta|_1
        inverse_probability (the paper's): out = keep * delta / p
        none: out = keep * delta

    density >= 1 returns `delta` unchanged. Needs 0 < density - epsilon and density + epsilon < 1
    (checked by the method's parameters).
    """
    if density >= 1 or not bool(delta.any()):  # all zeros (a frozen tensor) stay zeros
        return delta
    rows = as_rows(delta)
    p = keep_probabilities(rows.abs().float(), density, epsilon)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    keep = torch.rand(rows.shape, generator=g, dtype=torch.float32).to(delta.device) < p
    before = delta.abs().sum() if rescale == "l1" else None
    if rescale == "inverse_probability":
        rows.div_(p.to(delta.dtype))
    del p
    rows.mul_(keep.to(delta.dtype))
    del keep
    return l1_rescale_(delta, before) if before is not None else delta


def della(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    epsilons: Sequence[float],
    seeds: Sequence[int],
    lam: float = 1.0,
    normalize: bool = True,
    consensus: bool = True,
    rescale: str = "l1",
) -> torch.Tensor:
    """DELLA (consensus=True) or DELLA-linear (consensus=False).

        delta_i = della_prune(x_i - base, density_i, epsilon_i, seed_i)     (MagPrune + rescale)
        ties:    merged = base + lam * sum_i m_i w_i delta_i [/ sum_i m_i w_i],
                 m_i = [sign(w_i delta_i) == sign(sum_j w_j delta_j)]       (elect, disjoint merge)
        linear:  merged = base + lam * sum_i w_i delta_i  [/ sum_i w_i]

    Args: base (S); tensors N x (S); weights, densities, epsilons, seeds: N each. Returns (S).
    """
    deltas = task_vectors(base, tensors)
    release_inputs(tensors)
    for i, (d, e, s) in enumerate(zip(densities, epsilons, seeds, strict=True)):
        della_prune_(deltas[i], float(d), float(e), s, rescale)
    return combine_sparse(base, deltas, weights, lam, normalize, consensus)


def _rescale_check(v) -> str | None:
    return None if v in RESCALES else f"must be one of {RESCALES}"


def _params(normalize: bool) -> tuple[Param, ...]:
    return (
        Param("weight", 1.0, per_model=True, check=finite, doc="scale of each task vector"),
        Param("density", 1.0, per_model=True, check=density_range, doc="mean probability of keeping an entry"),
        Param("epsilon", 0.15, per_model=True, check=non_negative,
              doc="keep probabilities run from density - epsilon (smallest) to density + epsilon (largest)"),
        Param("lambda", 1.0, check=finite, doc="scale of the merged task vector"),
        Param("normalize", normalize, check=boolean, doc="divide by the (agreeing) weights"),
        Param("rescale", "l1", check=_rescale_check, doc="l1 (mergekit), inverse_probability (the paper) or none"),
    )


class _Della(MergeMethod):
    base = "required"
    consensus: bool = True
    label_param = "density"

    def check_combination(self, values: dict, where: str) -> None:
        for d, e in zip(values["density"], values["epsilon"]):
            if d < 1 and not (d - e > 0 and d + e < 1):
                raise LsMergeError(
                    f"{self.name}: density {d} +- epsilon {e} leaves (0, 1) ({where}); keep probabilities run from "
                    f"density - epsilon to density + epsilon. Lower epsilon below {min(d, 1 - d):g} or move density."
                )

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        seeds = [tensor_seed(ctx.seed, ctx.name, i) for i in range(len(tensors))]
        return della(base, tensors, params["weight"], params["density"], params["epsilon"], seeds, params["lambda"],
                     params["normalize"], self.consensus, params["rescale"])


@register
class Della(_Della):
    name = "della"
    params = _params(True)
    mergekit_defaults = {"weight": None, "density": 1.0, "epsilon": 0.15, "normalize": True, "lambda": 1.0, "rescale": "l1"}


@register
class DellaLinear(_Della):
    name = "della_linear"
    consensus = False
    params = _params(False)
    mergekit_defaults = {"weight": None, "density": 1.0, "epsilon": 0.15, "normalize": False, "lambda": 1.0, "rescale": "l1"}
