"""Atomic file and folder writes: a reader sees the old content or the new, never a part.

Files are written beside their target under a temporary name and renamed with `os.replace`;
folders are built in a temporary folder beside the target and swapped in.

A write that fails or is interrupted leaves nothing behind: its temporary file or folder is
removed, and so are the parent folders it created, if they are still empty (`make_dirs`
records them, `remove_empty_dirs` takes them back). Each abandoned target is noted
(`aborted_outputs`) so the command's last line can say what was not written.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_aborted: list[Path] = []


def make_dirs(path: str | os.PathLike) -> list[Path]:
    """`mkdir -p path`; returns the folders it created, outermost first (for `remove_empty_dirs`)."""
    path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    made: list[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
                continue
            made.append(d)
        if not path.is_dir():  # the nearest existing ancestor is a file
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    except BaseException:
        remove_empty_dirs(made)
        raise
    return made


def name_target(e: BaseException, target: Path, temporary: Path | None = None) -> None:
    """Make an `OSError` without a path (a full disk) or about `temporary` (or a file inside it)
    name `target`, the path the user chose."""
    if not isinstance(e, OSError):
        return
    if e.filename is None or (temporary is not None and str(e.filename).startswith(str(temporary))):
        e.filename = str(target)


def remove_empty_dirs(made: list[Path]) -> None:
    """Remove the folders `make_dirs` created, deepest first, while they are empty."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            continue


def note_aborted(target: str | os.PathLike) -> None:
    """Record that `target` was not written because its write failed or was interrupted."""
    _aborted.append(Path(target))


def aborted_outputs(clear: bool = False) -> list[Path]:
    """Targets abandoned since the last `aborted_outputs(clear=True)`, in order."""
    out = list(dict.fromkeys(_aborted))
    if clear:
        _aborted.clear()
    return out


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


@contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths beside `paths` (parents created) for the block to write, one per target
    and with its suffix (so `savefig` and friends still see the format); renamed onto the
    targets when the block ends normally. On an exception or a signal the temporary files and
    the parent folders made here are removed and the targets are left as they were."""
    targets = [Path(p) for p in paths]
    made: list[Path] = []
    tmps: list[Path] = []
    done = 0
    try:
        for path in targets:
            made += make_dirs(path.parent)
            tmps.append(path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}"))
        yield tmps
        for tmp, path in zip(tmps, targets):
            os.replace(tmp, path)
            done += 1
    except BaseException as e:
        for path, tmp in zip(targets, tmps):
            if isinstance(e, OSError) and e.filename is not None:
                name_target(e, path, tmp)
        name_target(e, targets[0] if len(targets) == 1 else targets[0].parent)
        for tmp in tmps:
            _unlink_quietly(tmp)
        remove_empty_dirs(sorted(made, key=lambda d: len(d.parts)))
        for path in targets[done:]:
            note_aborted(path)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """`atomic_paths` for one file: yields its temporary path."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` (parents created) through a temporary file and a rename."""
    path = Path(path)
    made = make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        remove_empty_dirs(made)
        note_aborted(path)
        raise
    finally:
        _unlink_quietly(tmp)
    return path


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` (parents created) through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


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
