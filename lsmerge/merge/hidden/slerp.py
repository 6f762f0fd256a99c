"""SLERP of residual streams: spherical interpolation of directions, linear interpolation of norms."""

from __future__ import annotations

import torch

from lsmerge.merge.hidden.base import check_beta, register


@register("slerp", sources="one")
def slerp(
    h_base: torch.Tensor, h_ft: torch.Tensor, beta: float, *, eps: float = 1e-12, small_angle: float = 1e-4
) -> torch.Tensor:
    """Spherical interpolation of directions with linearly interpolated norms:

        u = h_base / |h_base|, v = h_ft / |h_ft|, theta = arccos(<u, v>)
        d = sin((1 - beta) theta) / sin(theta) * u + sin(beta theta) / sin(theta) * v
        h = ((1 - beta) |h_base| + beta |h_ft|) * d / |d|

    Near-parallel or antipodal u, v, where sin(theta) < `small_angle`, use the normalised lerp
    direction d = (1 - beta) u + beta v instead; antipodal u, v at beta = 0.5 (no direction
    left) keep the nearer endpoint's direction.

    Args:
        h_base, h_ft: (..., hidden) states; any float dtype, computed in float32.
        beta: 0 returns h_base exactly, 1 gives h_ft up to rounding.
        eps: floor on norms (a zero vector keeps a zero norm and an arbitrary direction).
        small_angle: where sin(theta) is below it the normalised lerp direction is used.

    Returns:
        (..., hidden) tensor in h_base's dtype.
    """
    check_beta(beta)
    if beta == 0.0:
        return h_base
    b, f = h_base.float(), h_ft.float()
    nb = b.norm(dim=-1, keepdim=True)
    nf = f.norm(dim=-1, keepdim=True)
    u = b / nb.clamp_min(eps)
    v = f / nf.clamp_min(eps)
    cos = (u * v).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.acos(cos)
    sin_theta = torch.sin(theta)
    degenerate = sin_theta < small_angle
    safe_sin = torch.where(degenerate, torch.ones_like(sin_theta), sin_theta)
    w_base = torch.sin((1.0 - beta) * theta) / safe_sin
    w_ft = torch.sin(beta * theta) / safe_sin
    direction = torch.where(degenerate, (1.0 - beta) * u + beta * v, w_base * u + w_ft * v)
    dnorm = direction.norm(dim=-1, keepdim=True)
    # Antipodal u, v with beta = 0.5 leave no direction: keep the nearer endpoint's.
    fallback = u if beta < 0.5 else v
    direction = torch.where(dnorm < small_angle, fallback, direction / dnorm.clamp_min(eps))
    norm = (1.0 - beta) * nb + beta * nf
    return (norm * direction).to(h_base.dtype)
