"""Atomic file and folder writes: a reader sees the old content or the new, never a part.

Files are written beside their target under a temporary name and renamed with `os.replace`;
folders are built in a temporary folder beside the target and swapped in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` (parents created) through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def temp_dir_beside(out: Path) -> Path:
    """A fresh, empty temporary folder next to `out` (same filesystem, so the swap is a rename)."""
    tmp = out.parent / f".{out.name}.lsmerge-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the complete folder `tmp` to `out`, replacing what was there."""
    if out.exists():
        old = out.parent / f".{out.name}.lsmerge-old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
