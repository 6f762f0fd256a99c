"""The codec interface every latent-space merge operator works through.

A codec encodes one weight tensor into a `TensorLatent` and decodes it back. Merge
operators (lsmerge.merge.latent) only ever combine `TensorLatent`s linearly (or through
OT), so they run unchanged with the weight VAE or the PCA baseline.

`Codec` is what every codec has; `SamplingCodec` adds the posterior a self-merge draws from.
Optional attributes callers read when present: `prior_std(name)` ((latent_dim,) prior standard
deviation per axis; self-merge's prior mix uses 1 without it), `family` (model_type the codec was fitted
on), `kinds` (module kinds it covers), `describe()` (a JSON-able description for provenance;
`describe_codec` falls back to `repr`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch

from lsmerge.errors import LsMergeError


@dataclass
class TensorLatent:
    """Latent code of one weight tensor.

    Attributes:
        z: (n_tokens, latent_dim) latent codes (posterior means for the VAE).
        norm: (k,) the tensor's normalisation statistics (e.g. mean, std); operators combine
            them with the same weights as `z`, so a merge of normalised codes is de-normalised
            with the merged statistics.
        shape: the original tensor shape (what `decode` returns).
        logvar: (n_tokens, latent_dim) posterior log-variances, when the codec has them.
        side: exact side channel (`lsmerge.codecs.side_channel`): (indices (k,) int64 into the
            flattened tensor, values (k,) float32) written over the decoded tensor; None without one.
    """

    z: torch.Tensor
    norm: torch.Tensor
    shape: tuple[int, ...]
    logvar: torch.Tensor | None = None
    side: tuple[torch.Tensor, torch.Tensor] | None = None

    def with_z(self, z: torch.Tensor, norm: torch.Tensor | None = None) -> "TensorLatent":
        """A copy with new codes (and statistics); the posterior variance and the side channel (exact
        values of the encoded tensor, not of a combination) are dropped."""
        return replace(self, z=z, norm=self.norm if norm is None else norm, logvar=None, side=None)


@runtime_checkable
class Codec(Protocol):
    """Encode / decode weight tensors by name (the name selects per-tensor embeddings)."""

    def covers(self, name: str) -> bool:
        """Whether this codec was fitted on the tensor `name` (others are merged in weight space)."""
        ...

    def encode(self, name: str, weight: torch.Tensor) -> TensorLatent:
        """weight (any shape, any float dtype) -> latent (float32)."""
        ...

    def decode(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """latent -> float32 tensor of shape `latent.shape`."""
        ...


@runtime_checkable
class SamplingCodec(Codec, Protocol):
    """A codec with a posterior: what self-merge needs."""

    def sample(self, name: str, weight: torch.Tensor, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> list[TensorLatent]:
        """`n` draws from the posterior of `weight`'s code (see `posterior_samples`)."""
        ...


def describe_codec(codec: Codec):
    """`codec.describe()` when the codec has it, else its repr (for provenance metadata)."""
    return codec.describe() if hasattr(codec, "describe") else repr(codec)


def posterior_samples(latent: TensorLatent, n: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None) -> list[TensorLatent]:
    """`n` draws z_k = z + temperature * exp(logvar / 2) * eps_k, eps_k ~ N(0, I).

    A latent without `logvar` (a deterministic code) gives `n` copies of `z`.
    """
    if n < 1:
        raise LsMergeError(f"the number of posterior samples must be >= 1, got {n}.")
    if temperature < 0 or not math.isfinite(temperature):
        raise LsMergeError(f"temperature must be >= 0, got {temperature}.")
    out = []
    for _ in range(n):
        if latent.logvar is None or temperature == 0:
            out.append(latent.with_z(latent.z.clone()))
            continue
        eps = torch.randn(latent.z.shape, generator=generator, dtype=latent.z.dtype)
        out.append(latent.with_z(latent.z + temperature * (0.5 * latent.logvar).exp() * eps))
    return out
