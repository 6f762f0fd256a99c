"""Pure, invertible maps between a weight tensor and normalised chunk tokens.

A weight tensor `w` of any shape goes through three steps, each with an exact inverse:

1. **normalise** per tensor (stats `norm = (mean, std)`, float64 in the math):
   - `zscore`: ``x = (w - mean) / std``;
   - `slog` (heavy-tail aware signed-log companding after z-scoring, scale ``kappa``):
     ``u = (w - mean) / std``, ``x = kappa * sign(u) * log1p(|u| / kappa)``; the slope at 0 is 1,
     so the bulk of the distribution is unchanged while an outlier at ``u = 30`` (kurtosis-25
     tensors have them) maps to ``x ~ 5.5`` for ``kappa = 2``. Inverse
     ``u = kappa * sign(x) * expm1(|x| / kappa)``.
2. **chunk** into tokens of `chunk_size` values, in one of two layouts:
   - `flat`: ``w.flatten()`` zero-padded to a multiple of `chunk_size` and cut into
     ``n = ceil(numel / chunk_size)`` chunks (the LS-Merge paper's sequential chunking);
   - `rows`: the tensor viewed as ``(rows, cols) = (shape[0], numel / shape[0])`` (1-d tensors are
     one row); each row is zero-padded to a multiple of `chunk_size` and cut, so a chunk never
     spans two rows (SANE-style); ``n = rows * ceil(cols / chunk_size)``, row-major order.
   In both layouts the valid values of a chunk are a prefix of it, so a chunk's padding is
   described by one integer, its valid length (`chunk_lengths`).
3. **window**: a sample is `tokens_per_sample` consecutive chunks of ONE tensor (fixed,
   non-overlapping windows; the last one of a tensor may be shorter and is padded with
   masked tokens).

Shapes: chunks ``(n_chunks, chunk_size)``, lengths ``(n_chunks,)``, value mask
``(n_chunks, chunk_size)`` bool.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence, get_args

import torch

from lsmerge.errors import LsMergeError

Layout = Literal["flat", "rows"]
Normalization = Literal["zscore", "slog"]
LAYOUTS = get_args(Layout)
NORMALIZATIONS = get_args(Normalization)
_MIN_STD = 1e-12


def check_positive(**values: int) -> None:
    """Raise LsMergeError unless every given integer is a positive int (e.g. chunk_size, latent_dim)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LsMergeError(f"{name} must be a positive integer, got {v!r}. Set it to 1 or more in the config.")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise LsMergeError(f"unknown chunk layout {layout!r}; use one of {LAYOUTS}.")


def check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise LsMergeError(f"unknown normalization {normalization!r}; use one of {NORMALIZATIONS}.")


# -- normalisation ---------------------------------------------------------------------------
def tensor_stats(w: torch.Tensor) -> torch.Tensor:
    """(2,) float64 `(mean, std)` of all values of `w` (population std, floored at 1e-12)."""
    x = w.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        raise LsMergeError("cannot normalise an empty tensor; leave it out of the selection.")
    if not torch.isfinite(x).all():
        raise LsMergeError("tensor holds NaN or Inf values; fix or drop the checkpoint before fitting/encoding.")
    mean = x.mean()
    std = x.std(correction=0).clamp_min(_MIN_STD)
    return torch.stack([mean, std])


def normalize(w: torch.Tensor, norm: torch.Tensor, normalization: str = "zscore", kappa: float = 2.0) -> torch.Tensor:
    """w (any shape) -> x float32 of the same shape; `norm` = (mean, std) (see module doc)."""
    check_normalization(normalization)
    mean, std = norm.to(torch.float64)[..., 0], norm.to(torch.float64)[..., 1]
    u = (w.to(torch.float64) - mean) / std
    if normalization == "slog":
        u = kappa * torch.sign(u) * torch.log1p(u.abs() / kappa)
    return u.to(torch.float32)


def denormalize(x: torch.Tensor, norm: torch.Tensor, normalization: str = "zscore", kappa: float = 2.0) -> torch.Tensor:
    """Inverse of `normalize`. `norm` is (2,) or broadcastable as (..., 2) against x's leading dims
    when given per sample: pass ``norm[:, None, None, :]`` style views yourself; float32 out."""
    check_normalization(normalization)
    x = x.to(torch.float64)
    if normalization == "slog":
        x = kappa * torch.sign(x) * torch.expm1(x.abs() / kappa)
    norm = norm.to(torch.float64)
    return (x * norm[..., 1] + norm[..., 0]).to(torch.float32)


# -- chunking --------------------------------------------------------------------------------
def _rows_cols(shape: Sequence[int]) -> tuple[int, int]:
    numel = math.prod(shape)
    if len(shape) <= 1:
        return 1, numel
    return shape[0], numel // shape[0] if shape[0] else 0


def num_chunks(shape: Sequence[int], chunk_size: int, layout: str = "flat") -> int:
    """Number of chunk tokens of a tensor of `shape`."""
    check_positive(chunk_size=chunk_size)
    check_layout(layout)
    if layout == "flat":
        return math.ceil(math.prod(shape) / chunk_size)
    rows, cols = _rows_cols(shape)
    return rows * math.ceil(cols / chunk_size)


def chunk_lengths(shape: Sequence[int], chunk_size: int, layout: str = "flat") -> torch.Tensor:
    """(n_chunks,) int64: how many leading values of each chunk are real (the rest is padding)."""
    n = num_chunks(shape, chunk_size, layout)
    lengths = torch.full((n,), chunk_size, dtype=torch.int64)
    if layout == "flat":
        rem = math.prod(shape) - (n - 1) * chunk_size if n else 0
        if n:
            lengths[-1] = rem
        return lengths
    rows, cols = _rows_cols(shape)
    per_row = math.ceil(cols / chunk_size)
    if per_row:
        lengths.view(rows, per_row)[:, -1] = cols - (per_row - 1) * chunk_size
    return lengths


def value_mask(lengths: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """lengths (...,) -> bool mask (..., chunk_size): True where the value is real."""
    return torch.arange(chunk_size, device=lengths.device) < lengths.unsqueeze(-1)


def chunk(w: torch.Tensor, chunk_size: int, layout: str = "flat") -> torch.Tensor:
    """w (any shape) -> chunks (n_chunks, chunk_size), zero padded, same dtype as w."""
    n = num_chunks(tuple(w.shape), chunk_size, layout)
    if layout == "flat":
        flat = w.reshape(-1)
        pad = n * chunk_size - flat.numel()
        return torch.nn.functional.pad(flat, (0, pad)).view(n, chunk_size)
    rows, cols = _rows_cols(tuple(w.shape))
    per_row = math.ceil(cols / chunk_size)
    m = w.reshape(rows, cols)
    m = torch.nn.functional.pad(m, (0, per_row * chunk_size - cols))
    return m.reshape(rows * per_row, chunk_size)


def unchunk(chunks: torch.Tensor, shape: Sequence[int], layout: str = "flat") -> torch.Tensor:
    """Inverse of `chunk`: chunks (n_chunks, chunk_size) -> tensor of `shape` (padding dropped)."""
    shape = tuple(shape)
    chunk_size = chunks.shape[-1]
    n = num_chunks(shape, chunk_size, layout)
    if chunks.shape[0] != n:
        raise LsMergeError(f"{chunks.shape[0]} chunks cannot rebuild a tensor of shape {shape} ({n} chunks expected).")
    if layout == "flat":
        return chunks.reshape(-1)[: math.prod(shape)].reshape(shape)
    rows, cols = _rows_cols(shape)
    per_row = math.ceil(cols / chunk_size)
    return chunks.reshape(rows, per_row * chunk_size)[:, :cols].reshape(shape)


# -- windows ---------------------------------------------------------------------------------
def window_starts(n_chunks: int, tokens_per_sample: int) -> list[int]:
    """Start chunk of each fixed, non-overlapping window: 0, T, 2T, ... (< n_chunks)."""
    check_positive(tokens_per_sample=tokens_per_sample)
    return list(range(0, n_chunks, tokens_per_sample))


def to_windows(chunks: torch.Tensor, tokens_per_sample: int) -> tuple[torch.Tensor, torch.Tensor]:
    """chunks (n, c) -> (windows (n_win, T, c) zero padded, token_mask (n_win, T) bool)."""
    n, c = chunks.shape
    n_win = math.ceil(n / tokens_per_sample)
    pad = n_win * tokens_per_sample - n
    windows = torch.nn.functional.pad(chunks, (0, 0, 0, pad)).view(n_win, tokens_per_sample, c)
    token_mask = torch.arange(n_win * tokens_per_sample) < n
    return windows, token_mask.view(n_win, tokens_per_sample)


def from_windows(windows: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Inverse of `to_windows`: (n_win, T, c) -> (n_chunks, c)."""
    return windows.reshape(-1, windows.shape[-1])[:n_chunks]


def tensor_to_tokens(
    w: torch.Tensor, chunk_size: int, layout: str = "flat", normalization: str = "zscore", kappa: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w -> (chunks (n, c) float32 normalised, lengths (n,), norm (2,) float64)."""
    norm = tensor_stats(w)
    x = normalize(w, norm, normalization, kappa)
    return chunk(x, chunk_size, layout), chunk_lengths(tuple(w.shape), chunk_size, layout), norm


def tokens_to_tensor(
    chunks: torch.Tensor,
    shape: Sequence[int],
    norm: torch.Tensor,
    layout: str = "flat",
    normalization: str = "zscore",
    kappa: float = 2.0,
) -> torch.Tensor:
    """Inverse of `tensor_to_tokens`: float32 tensor of `shape`."""
    return denormalize(unchunk(chunks, shape, layout), norm, normalization, kappa)
