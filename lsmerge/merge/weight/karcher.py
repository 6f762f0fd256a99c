"""Karcher mean (Riemannian centre of mass) of N models on the unit hypersphere, scaled by their
mean norm (mergekit's `karcher`; Karcher 1977, "Riemannian center of mass and mollifier
smoothing"; for model merging arXiv:2603.04972)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, compute_dtype, register
from lsmerge.merge.weight.geometry import combine, gram


def _int_at_least_1(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v == int(v) and v >= 1
    return None if ok else "must be a whole number >= 1"


def _positive(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "must be a finite number > 0"


def _acos_ratio(dot: float, dtype: torch.dtype) -> tuple[float, float]:
    """(theta, theta / sin(theta)) of a clamped cosine in `dtype`, as mergekit evaluates them
    (float32 for float32 models): its skip test `theta < tol` sees float32's rounding of the
    cosine (theta is 0 or >= 3.4e-4 there)."""
    d = torch.tensor(dot, dtype=dtype).clamp(-1.0, 1.0)
    theta = torch.arccos(d)
    return float(theta), float(theta / torch.sin(theta))


def karcher_coefficients(g: torch.Tensor, alphas: Sequence[float], max_iter: int = 10, tol: float = 1e-5,
                         dtype: torch.dtype = torch.float32, norms: Sequence[float] | None = None) -> tuple[list[float], list[float] | None]:
    """The weights c_i of the merged tensor sum_i c_i x_i, from the Gram matrix g = <x_i, x_j>;
    and, when no step was taken from the normalised start, the start's weights a_i / norms_i
    (its direction before normalising: see `karcher`), else None.

    Every iterate of the Karcher mean lies in the span of the inputs, so the iteration runs on
    coefficient vectors over the units u_i = x_i / norms_i (inner products through g) instead of
    on the tensors. `norms` default to the exact sqrt(g_ii). See `karcher` for the steps.
    """
    n = len(alphas)
    norms = [math.sqrt(max(float(g[i, i]), 0.0)) for i in range(n)] if norms is None else [float(v) for v in norms]
    valid = [i for i in range(n) if norms[i] > tol]
    if not valid:
        return [0.0] * n, None
    gu = torch.zeros((n, n), dtype=torch.float64)
    for i in valid:
        for j in valid:
            gu[i, j] = float(g[i, j]) / (norms[i] * norms[j])
    total = sum(alphas[i] for i in valid)
    a = torch.zeros(n, dtype=torch.float64)
    for i in valid:
        a[i] = alphas[i] / total

    def norm(c: torch.Tensor) -> float:
        return math.sqrt(max(float(c @ gu @ c), 0.0))

    mean_norm = norm(a)
    start = [float(a[i]) / norms[i] if i in valid else 0.0 for i in range(n)] if mean_norm >= tol else None
    if mean_norm < tol:
        mean = torch.zeros(n, dtype=torch.float64)
        mean[valid[0]] = 1.0
    else:
        mean = a / mean_norm
    for _ in range(max_iter):
        dots = gu @ mean  # <mean, u_i>
        tangent = torch.zeros(n, dtype=torch.float64)
        for i in valid:
            theta, ratio = _acos_ratio(float(dots[i]), dtype)
            if theta < tol:
                continue
            d = max(-1.0, min(1.0, float(dots[i])))
            tangent[i] += float(a[i]) * ratio
            tangent -= float(a[i]) * ratio * d * mean
        tangent_norm = norm(tangent)
        if tangent_norm < tol:
            break
        start = None
        mean = math.cos(tangent_norm) * mean + math.sin(tangent_norm) / tangent_norm * tangent
        unit_norm = norm(mean)
        if unit_norm > tol:
            mean = mean / unit_norm
    scale = sum(alpha * nrm for alpha, nrm in zip(alphas, norms))
    return [scale * float(mean[i]) / norms[i] if i in valid else 0.0 for i in range(n)], start


ITERATES = ("exact", "mergekit")


def _iterate_choice(v) -> str | None:
    return None if v in ITERATES else f"must be one of {list(ITERATES)}"


def karcher(tensors: Sequence[torch.Tensor], alphas: Sequence[float] | None = None, max_iter: int = 10, tol: float = 1e-5,
            iterate: str = "exact") -> torch.Tensor:
    """Weighted Karcher mean on the unit hypersphere, scaled by the weighted mean norm.

        u_i    = x_i / |x_i|   (inputs with |x_i| <= tol take no part in the direction)
        a_i    = alpha_i / sum_valid alpha_j
        m      = normalize(sum_i a_i u_i)       (u_first if that sum's norm < tol)
        repeat max_iter times:                  (Riemannian gradient step, unit step size)
            theta_i = arccos(clamp(<m, u_i>, -1, 1))                 (skip inputs with theta_i < tol)
            v       = sum_i a_i theta_i / sin(theta_i) (u_i - <m, u_i> m)   (log map, averaged)
            stop if |v| < tol
            m       = normalize(cos|v| m + sin|v| v / |v|)          (exponential map)
        merged = (sum_i alpha_i |x_i|) m

    alphas default to 1/N (mergekit's `karcher` uses 1/N). One input is returned as is; all
    inputs of norm <= tol give zeros. The iteration runs on N x N inner products (float64, see
    `karcher_coefficients`), then one pass forms sum_i c_i x_i; when it takes no step (fine-tunes
    of one base) that pass is mergekit's own float32 normalisation of the start.

    iterate "mergekit" instead takes the steps on the float32 tensors as mergekit 0.1.5's
    `karcher_merge_tensors` does (mergekit recipes use it). Its float32 reductions (torch.dot over
    ~1e6 entries) err by ~1e-5, as large as tol: on the SmolLM2 experts' LoRA-touched matrices it
    takes 10 steps driven by that rounding where the exact tangent is 1e-15, moving the result by
    ~1e-6. "exact" stays at the exact iterate; "mergekit" reproduces mergekit's.

    Args: tensors: N tensors of one shape. Returns float32 (float64 stays float64) of that shape.
    """
    dtype = compute_dtype(tensors[0])
    if len(tensors) == 1:
        return tensors[0].to(dtype)
    alphas = [1.0 / len(tensors)] * len(tensors) if alphas is None else [float(a) for a in alphas]
    # mergekit's norms are torch.linalg.vector_norm in the compute dtype, whose float32 sum runs
    # low on large tensors (-8.5e-6 relative at 884,736 entries, -1.6e-3 at 28M here); its mean
    # is normalised by the same norm. Both are taken here too, so the scale matches theirs.
    norm_t = [torch.linalg.vector_norm(x.to(dtype)) for x in tensors]
    if iterate == "mergekit":
        return _karcher_on_tensors(tensors, alphas, max_iter, tol, dtype, norm_t)
    coefs, start = karcher_coefficients(gram(tensors), alphas, max_iter, tol, dtype, [float(v) for v in norm_t])
    if start is None:
        return combine(coefs, tensors, dtype)
    # no step from the start: mergekit's result is scale * s / |s| with s = sum_i alpha_i
    # (x_i / |x_i|), |.| as it computes it; the same float32 operations here
    valid = [i for i, c in enumerate(start) if c != 0.0]
    total = sum(alphas[i] for i in valid)
    out = None
    for i in valid:
        term = tensors[i].to(dtype).div(norm_t[i]).mul_(alphas[i] / total)
        out = term if out is None else out.add_(term)
    out.div_(torch.linalg.vector_norm(out))
    out.mul_(sum(alpha * nrm for alpha, nrm in zip(alphas, norm_t)))
    return out


def _karcher_on_tensors(tensors: Sequence[torch.Tensor], alphas: Sequence[float], max_iter: int, tol: float,
                        dtype: torch.dtype, norms: Sequence[torch.Tensor]) -> torch.Tensor:
    """The iteration of `karcher` on the tensors in `dtype`, step for step as mergekit 0.1.5's
    `karcher_merge_tensors` takes it: the same values from the same float operations (a - b
    is a + (-b) exactly, products commute), in place where mergekit allocates; the distinct units
    and three work tensors are held (equal inputs share one unit and one term's products)."""
    valid = [i for i, n in enumerate(norms) if float(n) > tol]
    if not valid:
        return torch.zeros(tensors[0].shape, dtype=dtype)
    total = sum(alphas[i] for i in valid)
    units: dict[int, torch.Tensor] = {}  # equal inputs share one unit: the same bits, half the work
    for i in valid:
        same = next((j for j in units if float(norms[j]) == float(norms[i]) and torch.equal(tensors[j], tensors[i])), None)
        units[i] = units[same] if same is not None else tensors[i].to(dtype).reshape(-1).div(norms[i])
    weights = [(alphas[i] / total, units[i]) for i in valid]
    mean = torch.zeros_like(weights[0][1])
    work = torch.empty_like(mean)
    held = None  # (unit, coefficient) whose product `work` holds: an equal term is added again, not recomputed
    for a, u in weights:
        if held != (id(u), a):
            torch.mul(u, a, out=work)
            held = (id(u), a)
        mean += work
    mean_norm = torch.linalg.vector_norm(mean)
    if float(mean_norm) < tol:
        mean = weights[0][1].clone()
    else:
        mean.div_(mean_norm)
    tangent = torch.empty_like(mean)
    for _ in range(max_iter):
        tangent.zero_()
        held = None
        for a, u in weights:
            if held is not None and held[0] == (id(u), a):
                if held[1]:
                    tangent += work
                continue
            dot = torch.clamp(torch.dot(mean, u), -1.0, 1.0)
            theta = torch.arccos(dot)
            held = ((id(u), a), float(theta) >= tol)
            if not held[1]:
                continue
            torch.mul(mean, -dot, out=work).add_(u)  # u - dot * mean: (-dot) * m rounds to -(dot * m)
            tangent += work.mul_(a * (theta / torch.sin(theta)))
        tangent_norm = torch.linalg.vector_norm(tangent)
        if float(tangent_norm) < tol:
            break
        mean.mul_(torch.cos(tangent_norm)).add_(tangent.div_(tangent_norm).mul_(torch.sin(tangent_norm)))
        unit_norm = torch.linalg.vector_norm(mean)
        if float(unit_norm) > tol:
            mean.div_(unit_norm)
    return mean.mul_(sum(alpha * n for alpha, n in zip(alphas, norms))).view(tensors[0].shape)


@register
class Karcher(MergeMethod):
    name = "karcher"
    min_models = 2
    params = (
        Param("max_iter", 10, check=_int_at_least_1, doc="most Riemannian gradient steps"),
        Param("tol", 1e-5, check=_positive, doc="stop when the tangent's norm is below this; inputs of norm <= tol are left out"),
        Param("iterate", "exact", check=_iterate_choice,
              doc="'exact': the iteration on float64 inner products (one pass over the tensors); 'mergekit': "
                  "float32 steps on the tensors as mergekit takes them, rounding included (mergekit recipes use it)"),
    )
    mergekit_defaults = {"max_iter": 10, "tol": 1e-5}
    mergekit_fixed = {"iterate": "mergekit"}
    mergekit_inputs = "all"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        return karcher(tensors, None, int(params["max_iter"]), float(params["tol"]), params["iterate"])
