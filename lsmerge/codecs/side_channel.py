"""An exact sparse side channel around any codec (SpQR-style outliers kept as they are).

For each tensor W (numel N) the k = ceil(q N) entries of largest score are stored exactly
(their flat index and value) beside the latent and written over the decoded tensor. Two
selections (`SELECTIONS`), with input second moments h (`lsmerge.data.importance`; h_j = 1
without statistics, or for a tensor that is not 2-d):

    saliency:  s_ij = w_ij^2 * h_j                 the most salient weights (SpQR / AWQ proxy)
    error:     s_ij = (w_ij - D(z)_ij)^2 * h_j     the largest output-weighted decoding errors (default)

    S = top-k indices of s;  W^ = D(z);  W^[S] = W[S]

`error` is the greedy optimum for the output-weighted error sum_ij h_j e_ij^2 (zeroing the k
largest terms removes the most of it); it costs one extra decoding per tensor at encode time.

q is the side-channel fraction, in (0, 0.5] (past one half a dense copy is cheaper). Only the
entries are exact: decode(encode(W)) differs from W only outside S. A merged latent carries no
side channel (`TensorLatent.with_z`: the exact values belong to an encoded tensor, not to a
combination); a merge that is linear in its inputs, z = sum_i c_i z_i (LERP, soup, self-merge,
task arithmetic with the base as one more input), carries each input's exact correction with
the method's own coefficients (`merge_side_channels`, `SideChannelCodec.decode_merged`;
`lsmerge merge --side_channel q`, decode route, no delta coding):

    W_merged = D(z_merged) + sum_i c_i R_i,     R_i = (W_i - D(z_i)) on S_i, 0 elsewhere

so a one-hot merge (LERP at lam = 0, a single-model self-merge) is that input's side-channel
reconstruction bit for bit. Reconstruction alone: `lsmerge export --side_channel q`.

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

from typing import Sequence

from lsmerge.codecs.base import Codec, TensorLatent, describe_codec
from lsmerge.data.importance import ImportanceStats, saliency
from lsmerge.errors import LsMergeError

INDEX_BYTES = 4
SELECTIONS = ("saliency", "error")


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


def check_selection(select: str) -> str:
    """`select` if it is one of SELECTIONS, else one LsMergeError listing them."""
    if select not in SELECTIONS:
        raise LsMergeError(f"unknown side-channel selection {select!r}; use one of {', '.join(SELECTIONS)} "
                           "(saliency: largest w^2 h_j; error: largest (w - decoded)^2 h_j).")
    return select


def top_salient(weight: torch.Tensor, k: int, h: torch.Tensor | None = None) -> torch.Tensor:
    """(k,) int64 flat indices of the k most salient entries (w^2 h_j, or w^2 without h), sorted."""
    s = saliency(weight, h) if h is not None else weight.to(torch.float64).pow(2)
    return s.reshape(-1).topk(k).indices.sort().values


def top_errors(weight: torch.Tensor, decoded: torch.Tensor, k: int, h: torch.Tensor | None = None) -> torch.Tensor:
    """(k,) int64 flat indices of the k largest output-weighted errors (w - decoded)^2 h_j (h = 1 without h), sorted."""
    e = weight.to(torch.float64) - decoded.to(torch.float64).reshape(weight.shape)
    return top_salient(e, k, h)


class SideChannelCodec:
    """`codec` with the top-`fraction` saliency entries of each tensor stored exactly.

    Args:
        codec: any `Codec` (PCA, VAE).
        fraction: side-channel fraction q in (0, 0.5].
        importance: input second moments h for the scores (None: h = 1).
        select: which entries are kept (`SELECTIONS`): the most salient weights, or the largest
            decoding errors.
    """

    def __init__(self, codec: Codec, fraction: float, importance: ImportanceStats | None = None, select: str = "error"):
        self.codec = codec
        self.fraction = check_fraction(fraction)
        self.importance = importance
        self.select = check_selection(select)

    def __getattr__(self, attr):  # family, kinds, names, prior_std, ... of the wrapped codec
        if attr in ("codec", "fraction", "importance", "select"):
            raise AttributeError(attr)
        return getattr(self.codec, attr)

    def __repr__(self) -> str:
        return f"SideChannelCodec({self.codec!r}, fraction={self.fraction:g}, select={self.select})"

    def describe(self) -> dict:
        out = {"side_channel": self.fraction, "select": self.select, "codec": describe_codec(self.codec)}
        if self.importance is not None:
            out["importance"] = self.importance.describe()
        return out

    def covers(self, name: str) -> bool:
        return self.codec.covers(name)

    def _h(self, name: str, shape) -> torch.Tensor | None:
        if self.importance is None or len(shape) != 2:
            return None
        return self.importance.for_tensor(name, tuple(shape))

    def _encode(self, name: str, weight: torch.Tensor) -> tuple[TensorLatent, torch.Tensor | None]:
        """(latent with its side channel, the plain decoding D(z) when the selection needed it, else None)."""
        latent = self.codec.encode(name, weight)
        k, h = side_count(weight.numel(), self.fraction), self._h(name, weight.shape)
        plain = self.codec.decode(name, latent) if self.select == "error" else None
        idx = top_errors(weight, plain, k, h) if plain is not None else top_salient(weight, k, h)
        latent.side = (idx, weight.detach().reshape(-1)[idx].to(torch.float32).clone())
        return latent, plain

    def encode(self, name: str, weight: torch.Tensor) -> TensorLatent:
        """The wrapped codec's latent with `side` = (indices, exact values as float32)."""
        return self._encode(name, weight)[0]

    def decode(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """The wrapped codec's decoding with the side channel's entries written back exactly."""
        return _write_side(self.codec.decode(name, latent), latent.side)

    def decode_merged(self, name: str, merged: TensorLatent, inputs: Sequence[TensorLatent],
                      coeffs: Sequence[float]) -> torch.Tensor:
        """D(z_merged) + sum_i c_i R_i (`merge_side_channels`) for a linear merge z_merged = sum_i c_i z_i of
        the encoded `inputs` (each with its side channel); inputs with c_i = 0 are not decoded."""
        if len(inputs) != len(coeffs):
            raise ValueError(f"{len(inputs)} inputs for {len(coeffs)} coefficients")
        used = [(lt, float(c)) for lt, c in zip(inputs, coeffs) if c != 0]
        if any(lt.side is None for lt, _ in used):
            raise ValueError(f"an input latent of {name} has no side channel (encode it with this codec)")
        return merge_side_channels(self.codec.decode(name, merged), [self.codec.decode(name, lt) for lt, _ in used],
                                   [lt.side for lt, _ in used], [c for _, c in used])

    def sample(self, name: str, weight: torch.Tensor, n: int, temperature: float = 1.0, generator=None):
        """The wrapped codec's posterior samples (a combination of them has no exact side channel)."""
        return self.codec.sample(name, weight, n, temperature, generator=generator)

    def reconstruct(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """decode(encode(W)) in W's dtype (one decoding: the error selection's is reused)."""
        latent, plain = self._encode(name, weight)
        out = _write_side(plain, latent.side) if plain is not None else self.decode(name, latent)
        return out.to(weight.dtype)

    def compression(self, latent: TensorLatent, latent_dtype: torch.dtype = torch.float32) -> dict:
        """Stated size of one encoded tensor, side channel counted (module doc)."""
        return compression(math.prod(latent.shape), latent.z.numel() + latent.norm.numel(),
                           0 if latent.side is None else latent.side[0].numel(), latent_dtype)


def _write_side(decoded: torch.Tensor, side: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """A copy of `decoded` with the side channel's exact values written at its indices (as is without one)."""
    if side is None:
        return decoded
    idx, values = side
    out = decoded.clone()
    out.view(-1)[idx] = values.to(out.dtype)
    return out


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


def merge_side_channels(merged: torch.Tensor, decoded: Sequence[torch.Tensor],
                        sides: Sequence[tuple[torch.Tensor, torch.Tensor]], coeffs: Sequence[float]) -> torch.Tensor:
    """The side channels of a linear latent merge z_merged = sum_i c_i z_i carried into the weights:

        W_merged = D(z_merged) + sum_i c_i R_i,     R_i = (W_i - D(z_i)) restricted to S_i (zero elsewhere)

    Args:
        merged: D(z_merged), the plain decoding of the merged code (any shape).
        decoded: D(z_i), the plain decoding of each input's code (merged's shape).
        sides: (S_i (k_i,) int64 flat indices, W_i[S_i] (k_i,) exact values) of each input.
        coeffs: the method's coefficient c_i of each input (`LatentMethod.linear_coefficients`).
    Returns: W_merged in merged's dtype. Summed in float64 as (D(z_merged) - sum_i c_i D(z_i)|S_i)
    + sum_i c_i W_i|S_i (the same sum, grouped so that a one-hot merge, D(z_merged) = D(z_j) and
    c = e_j, gives W_j exactly on S_j and D(z_j) elsewhere: input j's side-channel reconstruction).
    """
    if not len(decoded) == len(sides) == len(coeffs):
        raise ValueError(f"{len(decoded)} decodings, {len(sides)} side channels, {len(coeffs)} coefficients")
    flat = merged.detach().reshape(-1).to(torch.float64)
    decoded_part = torch.zeros_like(flat)
    exact_part = torch.zeros_like(flat)
    for d, (idx, values), c in zip(decoded, sides, coeffs):
        if d.shape != merged.shape:
            raise ValueError(f"decoded input of shape {tuple(d.shape)} for a merge of shape {tuple(merged.shape)}")
        decoded_part.index_add_(0, idx, float(c) * d.detach().reshape(-1)[idx].to(torch.float64))
        exact_part.index_add_(0, idx, float(c) * values.to(torch.float64))
    return ((flat - decoded_part) + exact_part).to(merged.dtype).reshape(merged.shape)
