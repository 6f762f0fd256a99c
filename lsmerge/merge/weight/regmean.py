"""RegMean (Jin et al. 2023, "Dataless knowledge fusion by merging weights of language models").

For a linear layer y = x W^T (W: (out, in)) fine-tuned into W_1..W_N, RegMean finds the W
whose outputs best match every model's outputs on that model's own inputs X_i:

    min_W sum_i || X_i W^T - X_i W_i^T ||^2   =>   W^T = (sum_i G_i)^-1 sum_i G_i W_i^T,
    G_i = X_i^T X_i   (the Gram matrix of the layer's inputs).

The Grams are collected by `gram.collect_grams` (forward hooks over calibration text; here
each G_i is the running average over tokens, X_i^T X_i / n_i, so every model counts equally).
Off-diagonals are scaled by alpha (the paper's regulariser pulling towards the plain mean):
G~_i = alpha G_i + (1 - alpha) diag(G_i). The solve runs in float64 with a small ridge
rho = ridge * mean(diag(sum_i G~_i)) added to the diagonal. Parameters with no Gram (norms,
embeddings, biases, tied heads) fall back to the plain average.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lsmerge.merge.weight.base import MergeMethod, Param, TensorContext, in_unit_interval, non_negative, register
from lsmerge.merge.weight.linear import linear


def scale_off_diagonal(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """G~ = alpha * G + (1 - alpha) * diag(G). gram: (in, in)."""
    if alpha == 1:
        return gram
    return alpha * gram + (1 - alpha) * torch.diag(torch.diagonal(gram))


def regmean_solve(weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float = 0.9, ridge: float = 1e-6) -> torch.Tensor:
    """RegMean closed form for one linear layer.

        W^T = (sum_i G~_i + rho I)^-1 sum_i G~_i W_i^T,  rho = ridge * mean(diag(sum_i G~_i))

    Args:
        weights: N tensors (out, in) (nn.Linear layout).
        grams: N tensors (in, in), averaged X_i^T X_i.
        alpha: off-diagonal scaling in [0, 1] (1 = exact least squares, 0 = diagonal only).
        ridge: relative ridge (0 disables it).
    Returns: float64 (out, in).
    """
    dev = weights[0].device
    g_sum = torch.zeros_like(grams[0], dtype=torch.float64, device=dev)
    rhs = torch.zeros((weights[0].shape[1], weights[0].shape[0]), dtype=torch.float64, device=dev)
    for w, g in zip(weights, grams, strict=True):
        g = scale_off_diagonal(g.to(dev, torch.float64), alpha)
        g_sum += g
        rhs += g @ w.to(torch.float64).T
    if ridge:
        rho = ridge * float(torch.diagonal(g_sum).mean())
        g_sum += rho * torch.eye(g_sum.shape[0], dtype=torch.float64, device=dev)
    return torch.linalg.solve(g_sum, rhs).T


@register
class RegMean(MergeMethod):
    name = "regmean"
    min_models = 2
    needs_calibration = True
    params = (
        Param("alpha", 0.9, check=in_unit_interval, doc="off-diagonal scaling of the Gram matrices"),
        Param("ridge", 1e-6, check=non_negative, doc="relative ridge added to the summed Gram's diagonal"),
    )
    label_param = "alpha"

    def merge(self, tensors, base, params, ctx: TensorContext) -> torch.Tensor:
        if ctx.grams is None or tensors[0].dim() != 2:
            return linear(tensors, [1.0] * len(tensors), normalize=True)
        out = regmean_solve(tensors, ctx.grams, float(params["alpha"]), float(params["ridge"]))
        return out.to(torch.float32 if tensors[0].dtype != torch.float64 else torch.float64)
