"""What an output records about where it came from: input file digests, redacted URLs.

Provenance never holds the output path (the same inputs written to two places give the same
bytes) or a secret: URLs lose their user:password@ part and token-like query values.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from lsmerge.io.digest_cache import cached_file_sha256

# the files of a checkpoint folder whose bytes decide the merge: weights and config
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
_DIGESTED_NAMES = ("config.json", "pca_codec.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_SECRET_KEYS = re.compile(r"(key|token|secret|password|passwd|pwd|auth|signature|sig|credential)", re.IGNORECASE)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read through a 1 MiB buffer; remembered by the file's stat
    identity so an unchanged input is hashed once (`io.digest_cache`)."""
    return cached_file_sha256(path)


def checkpoint_files(path: Path) -> list[Path]:
    """The weight files and config of a checkpoint folder, sorted; a file input is itself."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _DIGESTED_NAMES))


def input_digests(inputs: Iterable[str | os.PathLike]) -> list[dict]:
    """[{"input": name, "files": [{"file": relative name, "sha256": hex}]}] for each input
    checkpoint folder (or file), in the order given, each distinct input once."""
    seen, out = set(), []
    for inp in inputs:
        path = Path(inp).expanduser().resolve()
        if path in seen:
            continue
        seen.add(path)
        files = [{"file": p.name, "sha256": file_sha256(p)} for p in checkpoint_files(path)]
        out.append({"input": path.name, "files": files})
    return out


def content_key(digest: dict) -> tuple:
    """What identifies one `input_digests` entry by content: its (file, sha256) pairs, not its folder name."""
    return tuple((f["file"], f["sha256"]) for f in digest["files"])


def redact_url(url: str | None) -> str | None:
    """`url` without credentials: user:password@ dropped, secret-looking query values replaced."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "REDACTED" if _SECRET_KEYS.search(k) else v) for k, v in pairs])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))
