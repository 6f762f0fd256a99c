"""NearSwap: take the other model's value where it is near the base's, keep the base's where
they differ (mergekit's `nearswap`; alchemonaut, https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001)."""

from __future__ import annotations

import math

import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.base import REQUIRED, MergeMethod, Param, TensorContext, compute_dtype, register

ABS_FLOOR = 1e-6  # |base - x| below this is taken as this (mergekit's clamp)


def _positive(v) -> str | None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
    return None if ok else "must be a finite number > 0 (t <= 0 would return the base unchanged)"


def nearswap(base: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """Per entry, move from the base towards x by a weight that shrinks with their distance.

        w      = clamp(t / max(|base - x|, 1e-6), 0, 1)
        merged = w x + (1 - w) base

    Entries closer than t take x's value (w = 1); farther ones keep t / |base - x| of the way.
    The same operations as mergekit 0.1.5's `nearswap` (float32; float64 stays float64).

    Args: base, x (S); t > 0. Returns (S).
    """
    dtype = compute_dtype(base)
    a, b = base.to(dtype), x.to(dtype)
    w = torch.sub(a, b).abs_().clamp_(min=ABS_FLOOR)
    w = torch.reciprocal(w, out=w).mul_(float(t)).clamp_(0, 1)  # t / |a - b|, as torch computes a scalar / tensor
    out = torch.mul(w, b)
    return out.add_(w.neg_().add_(1).mul_(a))


@register
class NearSwap(MergeMethod):
    name = "nearswap"
    base = "required"
    min_models = 1
    max_models = 1
    params = (Param("t", REQUIRED, check=_positive, doc="distance below which the model's value replaces the base's"),)
    label_param = "t"
    mergekit_defaults = {"t": None}
    mergekit_inputs = "others"

    def keeps_equal_inputs(self, n_models, has_base, params) -> bool:
        # |a - b| = 0 is clamped to 1e-6, so the weight t / 1e-6 clamps to 1 once t >= 1e-6 (with
        # a float32 margin) and 1 * b + 0 * a = b; a smaller t mixes b and a with rounding
        return float(params["t"]) >= 2e-6

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        if len(tensors) != 1:
            raise LsMergeError(f"nearswap merges one model into the base; got {len(tensors)}.")
        return nearswap(base, tensors[0], float(params["t"]))
