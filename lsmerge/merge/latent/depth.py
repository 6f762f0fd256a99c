"""Dimension matching for heterogeneous merges: which source layers feed a target layer, and how a
source layer's latent set is projected to the target's latent shape.

Depth map (relative depth, bin centres). Layer ``i`` of a model with ``N`` blocks sits at
relative depth ``(i + 0.5) / N``. Source layer ``s`` feeds the target layer whose bin holds
its centre, ``t = floor((s + 0.5) N_t / N_s)``; so a deeper source spreads evenly (30 -> 18
layers: 1 or 2 source layers per target layer; 4 -> 2: {0, 1} -> 0, {2, 3} -> 1). A target
layer left without a source (shallower source) takes the source layer at its own relative
depth, ``s = floor((t + 0.5) N_s / N_t)``.

Latent-set projection, for one target tensor with code (n_t, d_t) and the codes of the
same module in its source layers (n_1, d_s), (n_2, d_s), ...:

1. concatenate the source codes along tokens -> (n_s = sum n_i, d_s): the paper's capacity
   scaling ``r = n_t N / (n_s M)`` is then done by step 3;
2. latent_dim: ``"pca"`` (default) projects on the source set's top ``d_t`` principal axes
   (right singular vectors of the set, so it suits a VAE whose coordinates have no order),
   zero-padding if ``d_t`` exceeds the set's rank; ``"truncate"`` keeps the first ``d_t``
   coordinates or zero-pads (suits PCA codes, already ordered by variance);
3. token count: linear interpolation along the token axis (``align_corners``: first and
   last tokens kept, token ``i`` of the result sits at relative position ``i / (n_t - 1)``
   of the source set), which keeps the chunk order -- token i covers roughly the same
   relative stretch of the flattened tensor in both models.

Gaussian OT (lsmerge.merge.latent.ot) then aligns the projected set's mean and covariance with the
target's before interpolation.
"""

from __future__ import annotations

from typing import Literal, Sequence, get_args

import torch
import torch.nn.functional as F

from lsmerge.errors import LsMergeError

DimMatch = Literal["pca", "truncate"]
DIM_MATCH = get_args(DimMatch)


def depth_map(n_source: int, n_target: int) -> list[list[int]]:
    """For each target layer, the source layers that feed it (non-empty, ascending)."""
    if n_source < 1 or n_target < 1:
        raise LsMergeError(f"depth map needs at least one layer on each side, got {n_source} source and {n_target} target.")
    groups: list[list[int]] = [[] for _ in range(n_target)]
    for s in range(n_source):
        groups[min(n_target - 1, int((s + 0.5) * n_target / n_source))].append(s)
    for t, g in enumerate(groups):
        if not g:
            g.append(min(n_source - 1, int((t + 0.5) * n_source / n_target)))
    return groups


def resample_tokens(z: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """(n, d) -> (n_tokens, d) by linear interpolation along tokens (endpoints kept)."""
    if n_tokens < 1:
        raise LsMergeError(f"n_tokens must be >= 1, got {n_tokens}.")
    n = z.shape[0]
    if n == n_tokens:
        return z.clone()
    if n == 1:
        return z.expand(n_tokens, -1).clone()
    if n_tokens == 1:
        return z.mean(0, keepdim=True)
    out = F.interpolate(z.T.unsqueeze(0).double(), size=n_tokens, mode="linear", align_corners=True)
    return out[0].T.to(z.dtype).contiguous()


def match_latent_dim(z: torch.Tensor, latent_dim: int, method: str = "pca") -> torch.Tensor:
    """(n, d_s) -> (n, latent_dim) by principal-axis projection or truncation / zero padding."""
    if method not in DIM_MATCH:
        raise LsMergeError(f"dim_match must be one of {DIM_MATCH}, got {method!r}.")
    n, d = z.shape
    if method == "pca":
        zc = z.double() - z.double().mean(0)
        _, _, vh = torch.linalg.svd(zc, full_matrices=False)  # vh: (min(n, d), d)
        axes = vh[:latent_dim]
        # deterministic sign: largest-magnitude loading positive
        idx = axes.abs().argmax(1)
        signs = torch.sign(axes[torch.arange(axes.shape[0]), idx])
        axes = axes * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]
        out = (z.double() @ axes.T).to(z.dtype)
    else:
        out = z[:, :latent_dim]
    if out.shape[1] < latent_dim:
        out = torch.cat([out, out.new_zeros(n, latent_dim - out.shape[1])], dim=1)
    return out.contiguous()


def project_latent_set(codes: Sequence[torch.Tensor], n_tokens: int, latent_dim: int, dim_match: str = "pca") -> torch.Tensor:
    """Source codes [(n_i, d_s), ...] -> (n_tokens, latent_dim) (concatenate, match dim, resample)."""
    if not codes:
        raise LsMergeError("no source latent codes to project.")
    z = torch.cat([c.reshape(-1, c.shape[-1]) for c in codes], dim=0)
    return resample_tokens(match_latent_dim(z, latent_dim, dim_match), n_tokens)
