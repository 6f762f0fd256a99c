"""The codec interface every latent-space merge operator works through.

A codec encodes one weight tensor into a `TensorLatent` and decodes it back. Merge
operators (lsmerge.merge.latent) only ever combine `TensorLatent`s linearly (or through
OT), so they run unchanged with the weight VAE or the PCA baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import torch


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
        extra: codec-specific, not combined by operators (e.g. padding length).
    """

    z: torch.Tensor
    norm: torch.Tensor
    shape: tuple[int, ...]
    logvar: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def with_z(self, z: torch.Tensor, norm: torch.Tensor | None = None) -> "TensorLatent":
        """A copy with new codes (and statistics); the posterior variance is dropped."""
        return replace(self, z=z, norm=self.norm if norm is None else norm, logvar=None)


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
