"""An exact sparse side channel around any codec (SpQR-style outliers kept as they are).

For each tensor W (numel N) the k = ceil(q N) entries of largest saliency are stored exactly
(their flat index and value) beside the latent and written over the decoded tensor:

    s_ij = w_ij^2 * h_j         with input second moments h (`lsmerge.data.importance`);
    s_ij = w_ij^2               without statistics, or for a tensor that is not 2-d;
    S    = top-k indices of s;  W^ = decode(z);  W^[S] = W[S]

q is the side-channel fraction, in (0, 0.5] (past one half a dense copy is cheaper). Only the
entries are exact: decode(encode(W)) differs from W only outside S. A merge of latents drops the
side channel (`TensorLatent.with_z`): the exact values belong to the encoded tensor, not to a
combination, so the channel serves reconstruction (`lsmerge export --side_channel q`).

Stated size (`compression`), per tensor, counting the side channel (an index is one stored number):

    stored values   L + 2k,     L = latent values (z plus the tensor's normalisation statistics)
    values ratio    N / (L + 2k)            (without the side channel: N / L)
    bytes / weight  ((L + k) * b_latent + k * b_index) / N

with b_latent the latent's dtype size (side values are kept in it: float32 holds bf16 and
float16 weights exactly) and b_index = 4 (int32 indices; tensors below 2^31 values).
"""

from __future__ import annotations

import math

import torch

from lsmerge.codecs.base import Codec, TensorLatent, describe_codec
from lsmerge.data.importance import ImportanceStats, saliency
from lsmerge.errors import LsMergeError

INDEX_BYTES = 4


def check_fraction(fraction: float) -> float:
    """The side-channel fraction as a float in (0, 0.5], or one LsMergeError naming the range."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction) \
            or not 0 < fraction <= 0.5:
        raise LsMergeError(f"the side-channel fraction must be in (0, 0.5] (e.g. 0.01 keeps 1 % of each tensor exact), "
                           f"got {fraction!r}.")
    return float(fraction)


def side_count(numel: int, fraction: float) -> int:
    """k = ceil(fraction * numel) entries kept exactly (at least 1)."""
    return max(1, math.ceil(fraction * numel))


def top_salient(weight: torch.Tensor, k: int, h: torch.Tensor | None = None) -> torch.Tensor:
    """(k,) int64 flat indices of the k most salient entries (w^2 h_j, or w^2 without h), sorted."""
    s = saliency(weight, h) if h is not None else weight.to(torch.float64).pow(2)
    return s.reshape(-1).topk(k).indices.sort().values


class SideChannelCodec:
    """`codec` with the top-`fraction` saliency entries of each tensor stored exactly.

    Args:
        codec: any `Codec` (PCA, VAE).
        fraction: side-channel fraction q in (0, 0.5].
        importance: input second moments for the saliency (None: w^2).
    """

    def __init__(self, codec: Codec, fraction: float, importance: ImportanceStats | None = None):
        self.codec = codec
        self.fraction = check_fraction(fraction)
        self.importance = importance

    def __getattr__(self, attr):  # family, kinds, names, prior_std, ... of the wrapped codec
        if attr in ("codec", "fraction", "importance"):
            raise AttributeError(attr)
        return getattr(self.codec, attr)

    def __repr__(self) -> str:
        return f"SideChannelCodec({self.codec!r}, fraction={self.fraction:g})"

    def describe(self) -> dict:
        out = {"side_channel": self.fraction, "codec": describe_codec(self.codec)}
        if self.importance is not None:
            out["importance"] = self.importance.describe()
        return out

    def covers(self, name: str) -> bool:
        return self.codec.covers(name)

    def _h(self, name: str, shape) -> torch.Tensor | None:
        if self.importance is None or len(shape) != 2:
            return None
        return self.importance.for_tensor(name, tuple(shape))

    def encode(self, name: str, weight: torch.Tensor) -> TensorLatent:
        """The wrapped codec's latent with `side` = (indices, exact values as float32)."""
        latent = self.codec.encode(name, weight)
        idx = top_salient(weight, side_count(weight.numel(), self.fraction), self._h(name, weight.shape))
        latent.side = (idx, weight.detach().reshape(-1)[idx].to(torch.float32).clone())
        return latent

    def decode(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """The wrapped codec's decoding with the side channel's entries written back exactly."""
        out = self.codec.decode(name, latent)
        if latent.side is not None:
            idx, values = latent.side
            out = out.clone()
            out.view(-1)[idx] = values.to(out.dtype)
        return out

    def sample(self, name: str, weight: torch.Tensor, n: int, temperature: float = 1.0, generator=None):
        """The wrapped codec's posterior samples (a combination of them has no exact side channel)."""
        return self.codec.sample(name, weight, n, temperature, generator=generator)

    def reconstruct(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """decode(encode(W)) in W's dtype."""
        return self.decode(name, self.encode(name, weight)).to(weight.dtype)

    def compression(self, latent: TensorLatent, latent_dtype: torch.dtype = torch.float32) -> dict:
        """Stated size of one encoded tensor, side channel counted (module doc)."""
        return compression(math.prod(latent.shape), latent.z.numel() + latent.norm.numel(),
                           0 if latent.side is None else latent.side[0].numel(), latent_dtype)


def compression(numel: int, latent_values: int, k: int, latent_dtype: torch.dtype = torch.float32) -> dict:
    """{values_ratio, values_ratio_without_side, bytes_per_weight, latent_values, side_entries} of a tensor of
    `numel` values coded as `latent_values` latent numbers plus `k` exact entries (index + value)."""
    b = torch.empty((), dtype=latent_dtype).element_size()
    return {
        "values_ratio": numel / (latent_values + 2 * k),
        "values_ratio_without_side": numel / latent_values,
        "bytes_per_weight": ((latent_values + k) * b + k * INDEX_BYTES) / numel,
        "latent_values": latent_values,
        "side_entries": k,
    }
