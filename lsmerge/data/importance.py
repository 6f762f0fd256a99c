"""Importance of weights from calibration data: input second moments and saliency (AWQ / SpQR).

For a linear layer y = W x with W (out, in), over calibration tokens x_t (t = 1..n):

    h_j   = (1/n) sum_t x_tj^2             the diagonal of X^T X / n (X: (n, in)), shape (in,)
    s_ij  = w_ij^2 * h_j                   saliency of weight (i, j) (SpQR's and AWQ's proxy)

With E = W - W_hat, the output error over the calibration tokens is ||E X^T||_F^2 / n =
tr(E G E^T), G = X^T X / n; keeping only the diagonal of G gives

    sum_ij h_j e_ij^2 = ||E diag(sqrt h)||_F^2,

the output-weighted reconstruction error a codec can minimise (`column_weights` normalises h
per tensor to mean 1, so a tensor's weighted error stays on the scale of its plain one).

`ImportanceStats` holds h per weight name with the digest of the calibration text it came
from; it is saved as safetensors (h as float32, the digest, token count and model in the
metadata) beside the codec that uses it (`IMPORTANCE_FILE`). The statistics are collected by
`lsmerge importance` (forward hooks of `lsmerge.merge.weight.gram`).

`chunk_column_weights` and `WeightedWindows` carry each value's column weight with its chunk
through the weight VAE's data pipeline (`lsmerge.data.chunking` layouts `flat` and `rows`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from lsmerge.data import chunking
from lsmerge.errors import LsMergeError

IMPORTANCE_FILE = "importance.safetensors"
MIN_WEIGHT = 1e-6  # floor on a normalised column weight (dead columns keep a little weight)
_FORMAT = "lsmerge-importance-v1"


def text_digest(documents: Sequence[str]) -> str:
    """sha256 (hex) of the calibration documents, joined by NUL."""
    return hashlib.sha256("\0".join(documents).encode("utf-8")).hexdigest()


def column_weights(h: torch.Tensor) -> torch.Tensor:
    """h (in,) -> h / mean(h), floored at MIN_WEIGHT (float64): mean 1 per tensor."""
    h = h.to(torch.float64)
    mean = h.mean()
    if not torch.isfinite(h).all() or mean <= 0:
        raise LsMergeError("input second moments must be finite and not all zero; recollect them with `lsmerge importance`.")
    return (h / mean).clamp_min(MIN_WEIGHT)


def saliency(w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """s_ij = w_ij^2 * h_j: w (out, in), h (in,) -> (out, in) float64."""
    if w.dim() != 2 or w.shape[1] != h.numel():
        raise LsMergeError(f"saliency needs a 2-d weight (out, in) and h of length in; got {tuple(w.shape)} and {h.numel()}.")
    return w.to(torch.float64).pow(2) * h.to(torch.float64)[None, :]


def weighted_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """||(W - W_hat) diag(sqrt h)||_F^2 / ||W diag(sqrt h)||_F^2: the relative output-weighted error."""
    e = (w.to(torch.float64) - w_hat.to(torch.float64)).pow(2) * h.to(torch.float64)[None, :]
    return float(e.sum() / (w.to(torch.float64).pow(2) * h.to(torch.float64)[None, :]).sum().clamp_min(1e-300))


@dataclass
class ImportanceStats:
    """Input second moments h (in,) per linear weight name, and where they came from.

    Attributes:
        h: weight name -> (in,) float64 mean of x_j^2 over the calibration tokens.
        digest: sha256 of the calibration text (`text_digest`).
        tokens: calibration tokens seen.
        model: the model folder they were collected on.
    """

    h: dict[str, torch.Tensor]
    digest: str
    tokens: int = 0
    model: str = ""

    def __post_init__(self):  # the file holds float32: in memory the same values, so a loaded copy codes alike
        self.h = {k: v.detach().to(torch.float32).to(torch.float64) for k, v in self.h.items()}

    def to_bytes(self) -> bytes:
        """The safetensors file's bytes (h as float32; digest, tokens and model in the metadata)."""
        from safetensors.torch import save

        meta = {"format": _FORMAT, "digest": self.digest, "tokens": str(self.tokens), "model": self.model}
        return save({k: v.to(torch.float32).contiguous() for k, v in self.h.items()}, metadata=meta)

    def save(self, path: str | Path) -> Path:
        from lsmerge.io.atomic import write_bytes_atomic

        return write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceStats":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise LsMergeError(f"importance statistics {path} do not exist; write them with `lsmerge importance`.")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                h = {k: f.get_tensor(k).to(torch.float64) for k in f.keys()}
        except Exception as e:  # a truncated or foreign file
            raise LsMergeError(f"{path} is not a readable safetensors file ({e}); rewrite it with `lsmerge importance`.") from None
        if meta.get("format") != _FORMAT:
            raise LsMergeError(f"{path} holds no importance statistics (format {meta.get('format')!r}); "
                               "write them with `lsmerge importance`.")
        return cls(h, meta["digest"], int(meta.get("tokens", 0)), meta.get("model", ""))

    def for_tensor(self, name: str, shape: Sequence[int]) -> torch.Tensor:
        """h (in,) of weight `name` of `shape` (out, in); LsMergeError when missing or of another width."""
        if name not in self.h:
            raise LsMergeError(f"the importance statistics have no entry for {name}; collect them with `lsmerge importance` "
                               "on the model and kinds the codec covers.")
        h = self.h[name]
        if len(shape) != 2 or shape[1] != h.numel():
            raise LsMergeError(f"importance statistics of {name} have {h.numel()} columns, the tensor has shape {list(shape)}.")
        return h

    def check_digest(self, expected: str, what: str) -> None:
        if self.digest != expected:
            raise LsMergeError(f"{what} was fitted with calibration statistics {expected[:12]}, these are {self.digest[:12]}; "
                               f"give the {IMPORTANCE_FILE} it was fitted with.")

    def describe(self) -> dict:
        return {"digest": self.digest, "tokens": self.tokens, "model": self.model, "tensors": len(self.h)}


def statistics_for(path: str | None, tensors: list[dict]) -> ImportanceStats | None:
    """The statistics at `path` (None without one), checked to cover every 2-d tensor of `tensors`
    ([{name, shape}], as `WeightChunkDataModule.tensors`) before anything is written."""
    if not path:
        return None
    stats = ImportanceStats.load(path)
    for t in tensors:
        if len(t["shape"]) == 2:
            stats.for_tensor(t["name"], t["shape"])
    return stats


def chunk_column_weights(weights: torch.Tensor, shape: Sequence[int], chunk_size: int, layout: str,
                         chunk_index: torch.Tensor) -> torch.Tensor:
    """Column weight of every value of the chunks `chunk_index` (T,) of a tensor of `shape` (out, in).

    `weights` (in,) are the normalised column weights; the result (T, chunk_size) float32 equals
    ``chunking.chunk(weights[None, :].expand(shape), chunk_size, layout)[chunk_index]`` (padding
    values and chunks past the tensor's end get 0), computed without building the full tensor.
    """
    rows, cols = shape[0], math.prod(shape[1:])
    c = chunk_size
    offs = torch.arange(c)
    if layout == "flat":
        pos = chunk_index[:, None] * c + offs[None, :]
        valid = pos < rows * cols
        col = pos % cols
    else:
        chunking.check_layout(layout)
        per_row = math.ceil(cols / c)
        col = (chunk_index[:, None] % per_row) * c + offs[None, :]
        valid = (col < cols) & (chunk_index[:, None] < rows * per_row)
    out = weights.to(torch.float32)[col.clamp_max(cols - 1)]
    return torch.where(valid, out, torch.zeros((), dtype=torch.float32))


class WeightedWindows(Dataset):
    """A `ChunkWindows` dataset whose samples also carry `col_weight` (T, chunk_size) float32: the
    normalised column weight h_j / mean(h) of each value (0 on padding; 1 for tensors that are not
    2-d linear weights)."""

    def __init__(self, windows, table: list[dict], stats: ImportanceStats, chunk_size: int, layout: str):
        self.windows = windows
        self.chunk_size, self.layout = chunk_size, layout
        self.shapes = [tuple(rec["shape"]) for rec in table]
        self.weights = [column_weights(stats.for_tensor(rec["name"], rec["shape"])) if len(rec["shape"]) == 2 else None
                        for rec in table]

    @classmethod
    def wrap(cls, stats: ImportanceStats | None, table: list[dict], chunk_size: int, layout: str, *datasets) -> tuple:
        """The datasets wrapped with their column weights (as they are when `stats` is None)."""
        return tuple(d if stats is None else cls(d, table, stats, chunk_size, layout) for d in datasets)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.windows[i]
        tid = int(item["tensor_id"])
        w = self.weights[tid]
        if w is None:
            cw = chunking.value_mask(item["lengths"], self.chunk_size).to(torch.float32)
        else:
            cw = chunk_column_weights(w, self.shapes[tid], self.chunk_size, self.layout, item["chunk_index"])
        item["col_weight"] = cw
        return item
