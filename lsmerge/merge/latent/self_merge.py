"""Self-merge: a barycenter of K posterior samples of one model's codes (LS-Merge's "self").

    z_k = mu + T sigma eps_k                      (K draws from the codec's posterior)
    z_k <- (1 - lam) z_k + lam z_prior,k          (lam > 0: posterior / prior mix, z_prior ~ N(0, diag(prior_std^2)))
    z   = (1 / K) sum_k z_k

Linear in the one model: its K posterior draws get (1 - lam) / K each, so its coefficient is
1 - lam (1 at the default lam = 0); the prior draws encode no weights.
"""

from __future__ import annotations

import torch

from lsmerge.codecs.base import SamplingCodec, TensorLatent
from lsmerge.merge.latent.base import MergeParams, check_convex_weights, linear_tensors, register, same_shapes
from lsmerge.merge.weight.base import derive_seed


def posterior_prior_mix(posterior: TensorLatent, prior_z: torch.Tensor, lam: float) -> TensorLatent:
    """z = (1 - lam) z_post + lam z_prior (statistics from the posterior)."""
    same_shapes([posterior.z, prior_z])
    return posterior.with_z((1 - lam) * posterior.z + lam * prior_z.to(posterior.z.dtype))


def draw_samples(codec: SamplingCodec, name: str, weight: torch.Tensor, p: MergeParams) -> list[TensorLatent]:
    """K posterior samples of `weight`'s code (seeded by tensor), mixed with prior draws when lam > 0."""
    torch.manual_seed(derive_seed(p.seed, name))  # the same draws on any machine
    draws: list[TensorLatent] = codec.sample(name, weight, p.samples, p.temperature)
    if p.lam > 0:
        std = codec.prior_std(name) if hasattr(codec, "prior_std") else torch.ones(draws[0].z.shape[1])
        draws = [posterior_prior_mix(d, torch.randn(d.z.shape) * std, p.lam) for d in draws]
    return draws


@register("self", models="1", default_lam=0.0, lam_in_unit=True, fallback="copy", draw=draw_samples,
          label=lambda p: f"k{p.samples}t{p.temperature:g}", linear=lambda p, n: [1.0 - p.lam])
def self_merge(tensors, base, p: MergeParams):
    """z = (1 / K) sum_k z_k over the K samples drawn by `draw_samples`."""
    k = len(tensors)
    return linear_tensors(tensors, check_convex_weights([1.0 / k] * k, k))
