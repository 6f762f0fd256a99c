"""Arcee Fusion: keep the model's changes only where they matter most, by an importance score
(|change| times the KL divergence of the row's softmax) above a dynamic threshold
(mergekit's `arcee_fusion`; Arcee AI, https://arcee.ai, "Arcee Fusion" in MergeKit)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.base import MergeMethod, TensorContext, compute_dtype, register
from lsmerge.merge.weight.ties import kth_largest

KL_EPS = 1e-8  # added to both softmaxes before the KL divergence
QUANTILES = (0.25, 0.5, 0.75)
BLOCK = 1 << 20  # entries per block of rows of the importance computation (bounds its temporaries)


def importance(x: torch.Tensor, base: torch.Tensor, block: int = BLOCK) -> torch.Tensor:
    """|x - base| * KL(softmax(x) || softmax(base)) per row (softmax over the last dimension,
    KL broadcast over the row; a 1-D tensor is one row). Rows are done in blocks of about `block`
    entries with the operations of mergekit's `_compute_importance`, so each row's values are
    the same bytes. Args: x, base (S) of one float dtype. Returns (S)."""
    out = torch.empty_like(x)
    if x.dim() == 0 or x.numel() == 0:
        return out.zero_()
    rows_x, rows_b, rows_o = (t.reshape(-1, t.shape[-1]) for t in (x, base, out))
    step = max(1, block // max(1, x.shape[-1]))
    for s in range(0, rows_x.shape[0], step):
        px, pb = rows_x[s : s + step], rows_b[s : s + step]
        p = F.softmax(px, dim=-1) + KL_EPS
        q = F.softmax(pb, dim=-1) + KL_EPS
        kl = torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)
        del p, q
        torch.mul((px - pb).abs_(), kl, out=rows_o[s : s + step])
    return out


def quantile_index(q: float, n: int) -> int:
    """mergekit's index into the ascending order: floor(q * (n - 1)) with q * (n - 1) in float32."""
    return int((torch.tensor([q], dtype=torch.float32) * (n - 1)).long())


def fusion_threshold(scores: torch.Tensor) -> float:
    """median + 1.5 (q3 - q1) of the scores; quantile q is the entry at ascending index
    floor(q (n - 1)), found exactly (`ties.kth_largest`, no sort).

    mergekit 0.1.5 sorts the whole tensor up to 1,000,000 entries (the same values as here) and
    above that estimates the quantiles from 1,000,000 entries drawn at random, unseeded; lsmerge
    takes them from every entry, deterministic (outputs then differ in entries near the threshold).
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    lo, hi = torch.aminmax(flat)
    if bool(lo == hi):  # every score equal (an unchanged tensor: all 0): no selection to run
        return hi + 1.5 * (hi - lo)
    q1, med, q3 = (torch.tensor(kth_largest(flat, n - quantile_index(q, n)), dtype=scores.dtype) for q in QUANTILES)
    return med + 1.5 * (q3 - q1)


def arcee_fusion(base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Keep x's change from the base where its importance reaches the threshold.

        delta  = x - base
        s      = |delta| * sum_j p_j log(p_j / q_j),  p = softmax(x) + 1e-8, q = softmax(base) + 1e-8
                 (softmax over the last dimension, one KL value per row)
        tau    = median(s) + 1.5 (Q3(s) - Q1(s))      (`fusion_threshold`)
        merged = base + delta * [s >= tau]

    Float32 arithmetic (float64 stays float64), mergekit 0.1.5's operations; see
    `fusion_threshold` for tensors over 1,000,000 entries.

    Args: base, x (S). Returns (S).
    """
    dtype = compute_dtype(base)
    b, y = base.to(dtype), x.to(dtype)
    if b.numel() == 0:
        return b.clone()
    scores = importance(y, b)
    mask = scores >= fusion_threshold(scores).to(scores.device)
    del scores
    delta = torch.sub(y, b)
    return delta.mul_(mask.to(dtype)).add_(b)


@register
class ArceeFusion(MergeMethod):
    name = "arcee_fusion"
    base = "required"
    min_models = 1
    max_models = 1
    params = ()
    mergekit_defaults = {}
    mergekit_inputs = "others"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        if len(tensors) != 1:
            raise LsMergeError(f"arcee_fusion merges one model into the base; got {len(tensors)}.")
        return arcee_fusion(base, tensors[0])
