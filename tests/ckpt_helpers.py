"""Bad `.ckpt` files for the checkpoint-loader tests: each kind a user can hand lsmerge, and a
malicious pickle that would create `sentinel` if it were ever unpickled."""

from __future__ import annotations

import os
from pathlib import Path

import torch


class _Evil:
    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


def bad_checkpoint(kind: str, tmp_path: Path, good: Path | None = None) -> str:
    """The path (or URL) of a bad checkpoint of `kind`: url, missing, folder, truncated, text,
    not_lightning, foreign (a Lightning checkpoint of another model), malicious; `good` is a real
    checkpoint to truncate (a small tensor file otherwise)."""
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    p = d / f"{kind}.ckpt"
    if kind == "url":
        return "https://example.com/vae/last.ckpt"
    if kind == "missing":
        return str(p)
    if kind == "folder":
        p.mkdir()
    elif kind == "truncated":
        if good is None:
            torch.save({"state_dict": {"w": torch.zeros(4096)}}, d / "whole.ckpt")
            good = d / "whole.ckpt"
        p.write_bytes(Path(good).read_bytes()[: Path(good).stat().st_size // 2])
    elif kind == "text":
        p.write_text("not a checkpoint\n")
    elif kind == "not_lightning":
        torch.save({"w": torch.zeros(3)}, p)
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}, "hyper_parameters": {"hidden": 3}}, p)
    elif kind == "malicious":
        torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _Evil(sentinel_path(tmp_path))}, p)
    else:
        raise ValueError(kind)
    return str(p)


def sentinel_path(tmp_path: Path) -> Path:
    return tmp_path / "SENTINEL"


EXPECTED = {
    "url": "Download it and pass the local file",
    "missing": "does not exist",
    "folder": "is not a file",
    "truncated": "truncated or corrupt",
    "text": "corrupt",
    "not_lightning": "is not a Lightning checkpoint",
    "foreign": "is not a Lightning checkpoint",
    "malicious": "never runs code",
}
