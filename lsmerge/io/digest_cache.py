"""A file's sha256, remembered by its stat so unchanged inputs are not hashed again.

Every output records the sha256 of its inputs' files (`io.provenance`). Hashing is a full read
(a 135 M model pair: 1.08 GB; a 7 B pair: 28 GB), paid again by every merge of a sweep over the
same inputs. Like git's index, the digest is kept beside the file's identity and is used only
while that identity is unchanged:

    entry = {path, dev, ino, size, mtime_ns, ctime_ns, sha256}
    used  iff  the file's (dev, ino, size, mtime_ns, ctime_ns) equal the entry's

`ctime` changes on every write and cannot be set back by a user (`touch -d` sets mtime only), so
rewriting a file in place, replacing it, or restoring its mtime all miss the cache. A file whose
mtime is within `RACY_SECONDS` of the moment it was hashed is not remembered (git's "racily
clean" rule: a write in the same timestamp tick would leave the stat unchanged).

Entries are one small JSON file each, `<cache>/digests/<sha256 of the real path>.json`, written
atomically; `<cache>` is `$LSMERGE_CACHE_DIR`, else `$XDG_CACHE_HOME/lsmerge`, else
`~/.cache/lsmerge`. `LSMERGE_DIGEST_CACHE=0` turns the cache off. A cache that cannot be read
or written is ignored (the digest is computed), never an error.

`prefetch(paths)` starts that work early, in a daemon thread (the command line calls it before
importing torch, whose import leaves a core idle): a later `cached_file_sha256` of the same file
takes the prefetched digest only while the file's identity is the one it had when hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Iterable

#: a file modified this recently (seconds) when hashed is not remembered
RACY_SECONDS = 2.0
_BUFFER = 1 << 20


def cache_dir() -> Path:
    """Where lsmerge keeps small caches: $LSMERGE_CACHE_DIR, $XDG_CACHE_HOME/lsmerge, ~/.cache/lsmerge."""
    if os.environ.get("LSMERGE_CACHE_DIR"):
        return Path(os.environ["LSMERGE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lsmerge"


def hash_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read through one 1 MiB buffer."""
    h, buf = hashlib.sha256(), bytearray(_BUFFER)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _identity(st: os.stat_result) -> dict:
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _entry_path(real: str) -> Path:
    return cache_dir() / "digests" / f"{hashlib.sha256(real.encode()).hexdigest()}.json"


def _lookup(entry: Path, real: str, ident: dict) -> str | None:
    try:
        data = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("path") != real or any(data.get(k) != v for k, v in ident.items()):
        return None
    digest = data.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def _remember(entry: Path, real: str, ident: dict, digest: str) -> None:
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"path": real, **ident, "sha256": digest}))
        os.replace(tmp, entry)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _cache_on() -> bool:
    return os.environ.get("LSMERGE_DIGEST_CACHE", "1") != "0"


def _digest(real: str) -> tuple[dict | None, str]:
    """(identity, sha256) of a resolved path: from the cache or computed (and remembered unless
    the file was modified within RACY_SECONDS); identity None when the file changed while read."""
    before = os.stat(real)
    ident = _identity(before)
    entry = _entry_path(real) if _cache_on() else None
    if entry is not None and (digest := _lookup(entry, real, ident)) is not None:
        return ident, digest
    digest = hash_file(real)
    after = os.stat(real)
    if _identity(after) != ident:
        return None, digest  # changed while read: the digest belongs to no identity
    if entry is not None and time.time() - after.st_mtime_ns / 1e9 > RACY_SECONDS:
        _remember(entry, real, ident, digest)
    return ident, digest


_prefetched: dict[str, Future] = {}
_prefetch_lock = threading.Lock()


def prefetch(paths: Iterable[str | os.PathLike]) -> None:
    """Start hashing these files (each once per process) in one daemon thread; files that
    cannot be read are skipped here and fail, if at all, where their digest is asked for."""
    todo: list[tuple[str, Future]] = []
    with _prefetch_lock:
        for p in paths:
            real = os.path.realpath(p)
            if real not in _prefetched and os.path.isfile(real):
                _prefetched[real] = fut = Future()
                todo.append((real, fut))
    if not todo:
        return

    def work() -> None:
        for real, fut in todo:
            try:
                ident, digest = _digest(real)
                if ident is not None and time.time() - ident["mtime_ns"] / 1e9 <= RACY_SECONDS:
                    ident = None  # racily clean: a write in the same tick would not show; not reused
                fut.set_result((ident, digest))
            except BaseException as e:  # noqa: BLE001 - recomputed (and raised) by the caller
                fut.set_exception(e)

    threading.Thread(target=work, name="lsmerge-digest-prefetch", daemon=True).start()


def cached_file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file: prefetched or from the cache when the file's stat identity is
    unchanged since it was hashed, else computed (and remembered unless the file was modified
    within RACY_SECONDS)."""
    real = os.path.realpath(path)
    with _prefetch_lock:
        fut = _prefetched.get(real)
    if fut is not None:
        try:
            ident, digest = fut.result()
        except BaseException:  # noqa: BLE001 - computed again below, where its error is raised
            ident, digest = None, ""
        if ident is not None and _identity(os.stat(real)) == ident:
            return digest
    return _digest(real)[1]
