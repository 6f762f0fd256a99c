"""Reading a user's text files: strictly UTF-8 unless the user asks for replacement.

A byte that is not UTF-8 is an error naming the file, the byte offset and the fix, not a
silent U+FFFD: a corpus in Latin-1 would otherwise be scored as a different text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from lsmerge.errors import LsMergeError

EncodingErrors = Literal["strict", "replace"]
ENCODING_ERRORS = get_args(EncodingErrors)


def decode_text(data: bytes, what: str, encoding_errors: str = "strict") -> str:
    """`data` decoded as UTF-8; LsMergeError naming `what` and the byte when it is not (strict)."""
    if encoding_errors not in ENCODING_ERRORS:
        raise LsMergeError(f"encoding_errors must be one of {ENCODING_ERRORS}, got {encoding_errors!r}.")
    try:
        return data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as e:
        raise LsMergeError(f"{what} is not valid UTF-8 at byte {e.start} ({data[e.start:e.start + 1]!r}); convert it "
                           "(e.g. iconv -f latin1 -t utf-8), or pass --encoding_errors replace.") from None


def read_text(path: str | os.PathLike, what: str | None = None, encoding_errors: str = "strict") -> str:
    """The text of `path` as UTF-8 (`encoding_errors` "replace" turns bad bytes into U+FFFD);
    LsMergeError when it is missing, a folder, or (strict) not UTF-8."""
    path = Path(path).expanduser()
    what = f"{what} {path}" if what else str(path)
    if not path.exists():
        raise LsMergeError(f"{what} does not exist; check the path.")
    if path.is_dir():
        raise LsMergeError(f"{what} is a folder; give a text file.")
    return decode_text(path.read_bytes(), what, encoding_errors)
