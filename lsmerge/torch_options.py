"""Parsing of the `dtype` and `device` options every command shares."""

from __future__ import annotations

from typing import Literal

import torch

from lsmerge.errors import LsMergeError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float64": torch.float64,
}
#: the names DTYPES accepts, as a type: a command parameter annotated with it lists them in --help
DtypeName = Literal["float32", "fp32", "bfloat16", "bf16", "float16", "fp16", "float64"]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bfloat16' / 'bf16' / torch.bfloat16 -> torch.bfloat16; None stays None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise LsMergeError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.") from None


def resolve_device(device: str) -> torch.device:
    """'cpu' / 'cuda' / 'cuda:1' / 'auto' -> a device that exists here, or a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LsMergeError(f"unknown device {device!r}; use 'cpu', 'cuda' (or 'cuda:N') or 'auto'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LsMergeError(f"device {device!r} asked for but CUDA is not available here; use --device cpu.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise LsMergeError(f"device {device!r} asked for but MPS is not available here; use --device cpu.")
    return dev
