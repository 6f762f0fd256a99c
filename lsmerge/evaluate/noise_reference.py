"""Known perturbations of weight tensors: the noise-calibration reference for codecs (issue 13).

A codec's reconstruction error is only bad if it costs more than plain noise of the same size.
These perturbations give that reference curve (perplexity against relative error):

- `iid` e: W + E, E = e ||W||_F / ||N||_F * N with N ~ N(0, 1) iid, so ||E||_F / ||W||_F = e
  exactly per tensor; optionally the top `keep_top` fraction of |W| left unperturbed;
- `prop` e: W + c |W| * N, noise proportional to |w|, c chosen so the relative error is e;
- `int8`: symmetric round-to-nearest per row, scale max|W_i,:| / 127;
- `int4`: symmetric round-to-nearest per group of `group` consecutive values of a row,
  levels -7..7, scale max|group| / 7.

Pure functions on tensors; `lsmerge perturb` writes a perturbed checkpoint with them and
`scripts/bench_noise_calibration.py` scores them in memory.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from lsmerge.errors import LsMergeError

KINDS = ("iid", "prop", "int8", "int4")


def iid_noise(w: torch.Tensor, e: float, g: torch.Generator, keep_top: float = 0.0) -> torch.Tensor:
    """W + E, E iid Gaussian scaled so ||E||_F = e ||W||_F; the top `keep_top` of |W| untouched."""
    n = torch.randn(w.shape, generator=g, dtype=torch.float64)
    if keep_top > 0:
        k = max(1, math.ceil(keep_top * w.numel()))
        idx = w.abs().flatten().topk(k).indices
        n.view(-1)[idx] = 0
    w64 = w.double()
    return (w64 + e * w64.norm() / n.norm() * n).to(w.dtype)


def proportional_noise(w: torch.Tensor, e: float, g: torch.Generator) -> torch.Tensor:
    """W + c |W| N, c chosen so ||E||_F = e ||W||_F."""
    w64 = w.double()
    n = w64.abs() * torch.randn(w.shape, generator=g, dtype=torch.float64)
    return (w64 + e * w64.norm() / n.norm() * n).to(w.dtype)


def int8_rows(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-row round-to-nearest int8: scale max|row| / 127 (a 1-d tensor is one row)."""
    s = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127
    return (w / s).round().clamp(-127, 127) * s


def int4_groups(w: torch.Tensor, group: int = 64) -> torch.Tensor:
    """Symmetric round-to-nearest int4 per group of `group` values of a row (levels -7..7)."""
    shape = w.shape
    w2 = w.reshape(1, -1) if w.dim() == 1 else w.reshape(-1, shape[-1])
    rows, cols = w2.shape
    pad = -cols % group
    x = torch.nn.functional.pad(w2, (0, pad)).view(rows, -1, group)
    s = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 7
    q = (x / s).round().clamp(-7, 7) * s
    return q.view(rows, -1)[:, :cols].reshape(shape)


def perturbation(kind: str, level: float | None = None, *, seed: int = 0, group: int = 64,
                 keep_top: float = 0.0) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """fn(name, W) -> W' for one perturbation; noise is seeded per tensor name (derive_seed(seed, name)),
    so a tensor's noise does not depend on which other tensors are perturbed."""
    from lsmerge.merge.weight.base import derive_seed

    if kind not in KINDS:
        raise LsMergeError(f"unknown perturbation {kind!r}; choose one of {list(KINDS)}.")
    if kind in ("iid", "prop"):
        if level is None or not (0 < level < 10) or not math.isfinite(level):
            raise LsMergeError(f"perturbation {kind} needs a relative error level in (0, 10) (e.g. --level 0.024), got {level}.")
    elif level is not None:
        raise LsMergeError(f"perturbation {kind} is a rounding and takes no --level; drop it.")
    if not 0 <= keep_top < 1 or (keep_top and kind != "iid"):
        raise LsMergeError(f"keep_top must be in [0, 1) and is only for iid noise, got {keep_top} with {kind}.")
    if group < 1:
        raise LsMergeError(f"int4 group size must be at least 1, got {group}.")

    def gen(name: str) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(seed, name))

    if kind == "iid":
        return lambda name, w: iid_noise(w, level, gen(name), keep_top)
    if kind == "prop":
        return lambda name, w: proportional_noise(w, level, gen(name))
    if kind == "int8":
        return lambda name, w: int8_rows(w.float()).to(w.dtype)
    return lambda name, w: int4_groups(w.float(), group).to(w.dtype)


def relative_errors(pairs) -> dict[str, float | None]:
    """Global relative error sqrt(sum ||W' - W||^2 / sum ||W||^2) over (name, W, W', h) tuples, and the
    output-weighted one (columns weighted by their input second moment h_j; None where h is None for any)."""
    err2 = ref2 = werr2 = wref2 = 0.0
    weighted = True
    for _, w, new, h in pairs:
        d2 = (new.double() - w.double()).pow(2)
        err2, ref2 = err2 + float(d2.sum()), ref2 + float(w.double().pow(2).sum())
        if h is None or w.dim() != 2:
            weighted = False
            continue
        hh = h.double().reshape(1, -1)
        werr2, wref2 = werr2 + float((d2 * hh).sum()), wref2 + float((w.double().pow(2) * hh).sum())
    rel = math.sqrt(err2 / ref2) if ref2 > 0 else 0.0
    return {"relative_error": rel, "output_weighted_error": math.sqrt(werr2 / wref2) if weighted and wref2 > 0 else None}
