"""LS-Merge in a codec's latent space: one file per method behind a registry, as `merge.weight`.

A method is a pure function on same-shape tensors registered with `@register` (`base.py`);
`apply` runs it on `TensorLatent`s or, for tensors a codec does not cover, on plain weights.
Methods: `lerp`, `soup`, `task_arithmetic`, `ties`, `dare`, `self` (posterior samples),
`hetero` (across architectures: `depth` map, Gaussian `ot`). Delta coding: `delta`. The jobs
that stream a merge: `homogeneous`, `hetero`; the command: `command.merge` (`lsmerge merge`).
"""

from lsmerge.codecs.base import posterior_samples
from lsmerge.merge.latent import lerp, soup, task_arithmetic, ties, dare, self_merge, hetero  # noqa: F401 - registers, in this order
from lsmerge.merge.latent.base import (
    METHODS,
    LatentMethod,
    MergeParams,
    apply,
    check_convex_weights,
    check_density,
    check_lambda,
    get_method,
    layer_lambda,
    linear_tensors,
    register,
    task_arithmetic_tensors,
)
from lsmerge.merge.latent.delta import delta_decode, delta_encode, residual_decode, zero_latent
from lsmerge.merge.latent.self_merge import posterior_prior_mix

__all__ = [
    "METHODS", "LatentMethod", "MergeParams", "apply", "check_convex_weights", "check_density", "check_lambda",
    "delta_decode", "delta_encode", "get_method", "layer_lambda", "linear_tensors", "posterior_prior_mix",
    "posterior_samples", "register", "residual_decode", "task_arithmetic_tensors", "zero_latent",
]  # fmt: skip
