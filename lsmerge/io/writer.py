"""Streaming, atomic, deterministic writer of Hugging Face safetensors checkpoints.

Tensors are written to disk as they arrive (only the tensor in hand is in memory), shards
are cut at `max_shard_size` and indexed by `model.safetensors.index.json`. Everything goes
into a temporary folder beside the target (`.<name>.lsmerge-tmp-<pid>`) that is renamed into
place only when complete; a crash or kill leaves just that temporary folder, which the next
write to the same target removes. Outputs carry no timestamps or host names, so the same
inputs give byte-identical files.

The safetensors format is written directly: 8-byte little-endian header length, a JSON
header (tensor name -> dtype, shape, data_offsets; `__metadata__` with string values), then
the raw little-endian data. Each shard reserves header space up front so data can be
streamed straight into the final file; the header is padded with spaces (valid JSON
whitespace, as safetensors itself pads) and, if it outgrows the reservation, the shard is
rewritten once with a larger one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from pathlib import Path
from typing import Iterable

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.card import CARD_NAME, model_card
from lsmerge.io.atomic import make_dirs, name_target, note_aborted, remove_empty_dirs
from lsmerge.io.provenance import input_digests
from lsmerge.io.store import SAFETENSORS_INDEX, SIDE_FILES

_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
_TMP_MARK = ".lsmerge-tmp-"
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """'2GB' / '500MiB' / 1000000 -> bytes."""
    if isinstance(size, int):
        return size
    s = str(size).strip().upper().replace(" ", "")
    for unit in sorted(_UNITS, key=len, reverse=True):
        if s.endswith(unit) and s[: -len(unit)].replace(".", "", 1).isdigit():
            return int(float(s[: -len(unit)]) * _UNITS[unit])
    if s.isdigit():
        return int(s)
    raise LsMergeError(f"cannot read shard size {size!r}; write it like '2GB', '500MiB' or a byte count.")


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_dir(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (), overwrite: bool = False) -> Path:
    """Validate an output folder before any work: not an input, not inside one, not holding one,
    and empty unless `overwrite`; its nearest existing ancestor a writable folder. Returns the
    resolved path."""
    out = Path(out).expanduser().resolve()
    _check_writable_place(out)
    for inp in inputs:
        inp = Path(inp).expanduser().resolve()
        if _is_within(out, inp) or _is_within(inp, out):
            raise LsMergeError(
                f"output folder {out} overlaps input checkpoint {inp}; inputs are never modified. Choose another --out."
            )
    if out.exists():
        if not out.is_dir():
            raise LsMergeError(f"output path {out} exists and is a file. Choose another --out.")
        if any(out.iterdir()) and not overwrite:
            raise LsMergeError(f"output folder {out} exists and is not empty. Choose another --out or pass --overwrite true.")
    return out


def _check_writable_place(out: Path) -> None:
    """Refuse an output whose nearest existing ancestor is a file or a folder this user cannot
    write (as root `os.access` allows nearly everything; the write itself reports the rest)."""
    place = out
    while not place.exists() and place != place.parent:
        place = place.parent
    if place != out and not place.is_dir():
        raise LsMergeError(f"cannot create output folder {out}: {place} is a file, not a folder. Choose another --out.")
    folder = place if place != out else out.parent  # the temporary folder is made beside `out`
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LsMergeError(f"cannot write output folder {out}: {folder} is not writable. Choose a writable --out.")


def _header_bytes(entries: dict, metadata: dict[str, str], reserve: int | None = None) -> bytes:
    header = {"__metadata__": metadata, **entries} if metadata else dict(entries)
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    target = reserve if reserve is not None else len(raw) + (-len(raw)) % 8
    if len(raw) > target:
        raise OverflowError
    return raw + b" " * (target - len(raw))


class _Shard:
    """One safetensors file being streamed."""

    def __init__(self, path: Path, reserve: int):
        self.path = path
        self.reserve = reserve
        self.entries: dict[str, dict] = {}
        self.size = 0
        self.file = open(path, "wb")
        self.file.write(b"\0" * (8 + reserve))

    def add(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().contiguous().cpu()
        nbytes = data.numel() * data.element_size()
        if nbytes:
            self.file.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
        self.entries[name] = {
            "dtype": _DTYPE_NAMES[data.dtype],
            "shape": list(data.shape),
            "data_offsets": [self.size, self.size + nbytes],
        }
        self.size += nbytes

    def close(self, metadata: dict[str, str]) -> None:
        try:
            header = _header_bytes(self.entries, metadata, self.reserve)
            self.file.seek(0)
            self.file.write(len(header).to_bytes(8, "little"))
            self.file.write(header)
            self.file.close()
        except OverflowError:
            self.file.close()
            header = _header_bytes(self.entries, metadata)
            grown = self.path.with_suffix(".grow")
            with open(self.path, "rb") as src, open(grown, "wb") as dst:
                dst.write(len(header).to_bytes(8, "little"))
                dst.write(header)
                src.seek(8 + self.reserve)
                shutil.copyfileobj(src, dst, 16 << 20)
            os.replace(grown, self.path)


class CheckpointWriter:
    """Write a Hugging Face checkpoint folder tensor by tensor, atomically.

    Use as a context manager::

        with CheckpointWriter(out, source=base_dir, inputs=[a, b], config=resolved) as w:
            for name, t in ...:
                w.add(name, t)

    Args:
        out: the target folder (must not exist, or be empty, unless `overwrite`).
        source: a checkpoint folder whose config, generation config and tokenizer files are copied.
        inputs: input checkpoint folders; `out` may not be, contain, or sit inside any of them.
        max_shard_size: shard limit ('2GB', '500MiB' or bytes); a tensor larger than it gets its own shard.
        overwrite: replace a non-empty `out` (only once the new one is complete).
        config: the command's resolved configuration, stored as JSON provenance in each shard
            (`lsmerge_config`); it must not name the output path, so the bytes do not depend on it.
            The sha256 of every weight file and config of each input goes beside it (`lsmerge_inputs`).
            When it names its `command`, a model card `README.md` (io.card) is written into the folder too.
        dtype: cast floating-point tensors to this dtype on write (None keeps each tensor's dtype).
        header_reserve: bytes reserved for each shard's JSON header.
        nonfinite_hint: what to tell the user when an output tensor holds NaN / Inf (the command's fix).
        side_files: overrides of the side files copied from `source`, by file name: bytes to write,
            a path to copy from, or None to leave that file out (a new config.json, another
            model's tokenizer).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        *,
        source: str | os.PathLike | None = None,
        inputs: Iterable[str | os.PathLike] = (),
        max_shard_size: int | str = "2GB",
        overwrite: bool = False,
        config: dict | None = None,
        dtype: torch.dtype | None = None,
        header_reserve: int = 1 << 16,
        nonfinite_hint: str = "Check the inputs (lsmerge inspect) and lower the merge's scale (lambda / weights).",
        side_files: dict[str, bytes | str | os.PathLike | None] | None = None,
    ):
        from lsmerge import __version__

        inputs = list(inputs)
        self.out = check_output_dir(out, inputs + ([source] if source else []), overwrite)
        self.nonfinite_hint = nonfinite_hint
        self.source = Path(source).expanduser().resolve() if source else None
        self.max_shard_size = parse_size(max_shard_size)
        self.overwrite = overwrite
        self.dtype = dtype
        self.side_files = dict(side_files or {})
        self.header_reserve = header_reserve
        self.metadata = {"format": "pt", "lsmerge_version": __version__}
        if config is not None:
            self.metadata["lsmerge_config"] = json.dumps(config, sort_keys=True, default=str)
        # the inputs' sha256 are computed in a thread while the tensors stream (hashlib releases the
        # GIL), and joined before the first shard's header or the card is written
        self._config, self._version, self._inputs = config, __version__, inputs
        self._digest_result: list = []
        self._digest_thread = threading.Thread(target=self._hash_inputs, name="lsmerge-digests", daemon=True) if inputs else None
        if self._digest_thread is not None:
            self._digest_thread.start()
        self._digests: list[dict] | None = None if inputs else []
        self.card: str | None = None
        self.tmp = self.out.parent / f".{self.out.name}{_TMP_MARK}{os.getpid()}"
        self._shards: list[_Shard] = []
        self._names: set[str] = set()
        self._open = False
        self._made_dirs: list[Path] = []

    def _hash_inputs(self) -> None:
        try:
            self._digest_result.append(input_digests(self._inputs))
        except BaseException as e:  # raised where the digests are needed
            self._digest_result.append(e)

    @property
    def digests(self) -> list[dict]:
        """The inputs' file digests (`io.provenance.input_digests`); waits for the hashing thread.
        Also fills the metadata's `lsmerge_inputs` and the model card."""
        if self._digests is None:
            self._digest_thread.join()
            result = self._digest_result[0]
            if isinstance(result, BaseException):
                raise result
            self._digests = result
            self.metadata["lsmerge_inputs"] = json.dumps(result, sort_keys=True)
        if self.card is None and self._config and "command" in self._config:
            # a command's output (its provenance names the command) gets a model card, README.md
            self.card = model_card(self._config, self._digests, self._version)
        return self._digests

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "CheckpointWriter":
        self._made_dirs = make_dirs(self.out.parent)
        try:
            clean_stale_tmp(self.out)
            if self.tmp.exists():
                shutil.rmtree(self.tmp)
            self.tmp.mkdir()
        except BaseException:
            self.abort()
            raise
        self._open = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            name_target(exc, self.out, self.tmp)
            self.abort()
            return
        try:
            self.finish()
        except BaseException as e:
            name_target(e, self.out, self.tmp)
            raise

    def abort(self) -> None:
        """Drop everything written so far, and the parent folders `__enter__` created if still empty.
        Waits for the input-hashing thread first: no thread of ours is left running when an
        interrupted command exits (a daemon thread stopped mid-call at interpreter exit can abort
        the process instead of the clean exit status)."""
        if self._digest_thread is not None and self._digest_thread.is_alive():
            self._digest_thread.join()
        for shard in self._shards:
            if not shard.file.closed:
                try:
                    shard.file.close()
                except OSError:  # flushing into a full disk fails again; the file goes anyway
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)
        remove_empty_dirs(self._made_dirs)
        self._made_dirs = []
        note_aborted(self.out)
        self._open = False

    # -- writing ---------------------------------------------------------------------------
    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Append one tensor (written to disk immediately)."""
        if not self._open:
            raise RuntimeError("CheckpointWriter.add called outside its `with` block")
        if name in self._names:
            raise LsMergeError(f"tensor {name!r} written twice; each name must be unique.")
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        # one float32 sum instead of an elementwise mask: NaN / Inf make it non-finite (a finite tensor
        # whose sum overflows is confirmed with the full check)
        if tensor.is_floating_point() and tensor.numel() and not math.isfinite(float(tensor.sum(dtype=torch.float32))) \
                and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise LsMergeError(f"output tensor {name!r} would hold {bad} NaN / Inf values of {tensor.numel()} "
                               f"({_DTYPE_NAMES.get(tensor.dtype, tensor.dtype)}); nothing was written. {self.nonfinite_hint}")
        nbytes = tensor.numel() * tensor.element_size()
        shard = self._shards[-1] if self._shards else None
        if shard is None or (shard.entries and shard.size + nbytes > self.max_shard_size):
            if shard is not None:
                self.digests  # noqa: B018 - the header needs them
                shard.close(self.metadata)
            shard = _Shard(self.tmp / f"shard-{len(self._shards):05d}.tmp", self.header_reserve)
            self._shards.append(shard)
        shard.add(name, tensor)
        self._names.add(name)

    def finish(self) -> Path:
        """Close the last shard, write the index and side files, and move the folder into place."""
        if not self._open:
            return self.out
        try:
            if not self._shards:
                raise LsMergeError("nothing to write: no tensors were added.")
            self.digests  # noqa: B018 - the header and the card need them
            self._shards[-1].close(self.metadata)
            n = len(self._shards)
            weight_map: dict[str, str] = {}
            for i, shard in enumerate(self._shards):
                fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                os.replace(shard.path, self.tmp / fname)
                weight_map.update({name: fname for name in shard.entries})
            if n > 1:
                total = sum(s.size for s in self._shards)
                index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
                (self.tmp / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            if self.source is not None:
                for fname in SIDE_FILES:
                    if fname not in self.side_files and (self.source / fname).exists():
                        shutil.copyfile(self.source / fname, self.tmp / fname)
            for fname, content in self.side_files.items():
                if isinstance(content, bytes):
                    (self.tmp / fname).write_bytes(content)
                elif content is not None:
                    shutil.copyfile(content, self.tmp / fname)
            if self.card is not None:  # inside the temporary folder: atomic with the weights
                (self.tmp / CARD_NAME).write_text(self.card, encoding="utf-8")
            self._move_into_place()
        except BaseException:
            self.abort()
            raise
        self._open = False
        return self.out

    def _move_into_place(self) -> None:
        if self.out.exists():
            if any(self.out.iterdir()) and not self.overwrite:
                raise LsMergeError(f"output folder {self.out} appeared while writing; not replacing it.")
            trash = self.out.parent / f".{self.out.name}.lsmerge-old-{os.getpid()}"
            os.replace(self.out, trash)
            os.replace(self.tmp, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(out: Path) -> list[Path]:
    """Remove temporary folders left beside `out` by writers that died; returns what was removed."""
    removed = []
    prefix = f".{out.name}{_TMP_MARK}"
    if not out.parent.exists():
        return removed
    for p in out.parent.iterdir():
        if p.name.startswith(prefix):
            pid = p.name[len(prefix) :]
            if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed
