"""Lazy, read-only access to a Hugging Face checkpoint folder.

`CheckpointStore` lists tensor names, shapes and dtypes from the safetensors headers without
reading any data, and loads one tensor at a time (plain reads of that tensor's bytes into a
fresh tensor; nothing stays memory-mapped). Sharded checkpoints are followed through `model.safetensors.index.json`.
PyTorch `.bin` files are read only through `torch.load(weights_only=True)`; any other pickle
is refused. The input folder is never written to.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from lsmerge.errors import LsMergeError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    """Header facts about one stored tensor: no data is read to get them."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str
    offset: int = -1  # byte offset of the data in a safetensors file (-1: a .bin entry)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """Read and check a safetensors header; raise LsMergeError on corruption or truncation.

    Returns the header and the byte offset where the data section starts (8 + header length).
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than the 8-byte header length")
            n = int.from_bytes(raw, "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit in a file of {size} bytes")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        end = 0
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, stop = (int(v) for v in meta["data_offsets"])
            numel = math.prod(int(d) for d in meta["shape"])
            if meta["dtype"] in _ST_DTYPES and stop - start != numel * _ST_DTYPES[meta["dtype"]].itemsize:
                raise ValueError(f"tensor {name} has {stop - start} data bytes for shape {meta['shape']} {meta['dtype']}")
            end = max(end, stop)
        if 8 + n + end > size:
            raise ValueError(f"data ends at byte {8 + n + end} but the file has {size} bytes (truncated?)")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise LsMergeError(
            f"{path} is not a valid safetensors file ({e}). Re-download or re-export the checkpoint."
        ) from None
    return header, 8 + n


def _read_tensor(path: Path, info: TensorInfo) -> torch.Tensor:
    """Read one safetensors tensor (little-endian, as the format stores it) into a new tensor."""
    out = torch.empty(info.shape, dtype=info.dtype)
    nbytes = info.nbytes
    if nbytes == 0:
        return out
    buf = memoryview(out.view(-1).view(torch.uint8).numpy())
    with open(path, "rb", buffering=0) as f:
        f.seek(info.offset)
        done = 0
        while done < nbytes:
            got = f.readinto(buf[done:])
            if not got:
                raise LsMergeError(f"{path} ends inside tensor {info.name} (truncated?). Re-download or re-export the checkpoint.")
            done += got
    return out


class CheckpointStore:
    """A checkpoint folder opened lazily.

    Args:
        path: a folder with `*.safetensors` (single or sharded with an index), or with
            `pytorch_model*.bin` files (read with `torch.load(weights_only=True)`).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise LsMergeError(f"checkpoint folder {self.path} does not exist. Check the path.")
        if self.path.is_file():
            if self.path.suffix == ".gguf":
                raise LsMergeError(
                    f"{self.path} is a GGUF file. Convert it first: lsmerge import-gguf --gguf {self.path} --out DIR"
                )
            if self.path.suffix in PICKLE_SUFFIXES:
                raise LsMergeError(
                    f"{self.path} is a pickle file; lsmerge never unpickles a bare file. Point at the "
                    "Hugging Face checkpoint folder that holds it (with config.json), or convert it to safetensors."
                )
            raise LsMergeError(f"{self.path} is a file; pass the checkpoint folder that contains config.json and the weights.")
        self._infos: dict[str, TensorInfo] = {}
        self._bin_cache: dict[str, dict[str, torch.Tensor]] = {}
        self.format = self._scan()
        if not self._infos:
            raise LsMergeError(f"checkpoint {self.path} holds no tensors. Check that the export finished.")

    # -- discovery -------------------------------------------------------------------------
    def _scan(self) -> str:
        st_index = self.path / SAFETENSORS_INDEX
        st_files = sorted(self.path.glob("*.safetensors"))
        if st_index.exists():
            weight_map = self._read_index(st_index)
            files = sorted(set(weight_map.values()))
        elif st_files:
            files = [p.name for p in st_files]
        else:
            return self._scan_bin()
        for fname in files:
            fpath = self.path / fname
            if not fpath.exists():
                raise LsMergeError(f"{self.path} index names shard {fname}, which is missing. Re-download the checkpoint.")
            header, data_start = _safetensors_header(fpath)
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in _ST_DTYPES:
                    raise LsMergeError(f"{fpath}: tensor {name} has unsupported dtype {meta['dtype']}.")
                offset = data_start + int(meta["data_offsets"][0])
                self._infos[name] = TensorInfo(name, tuple(meta["shape"]), _ST_DTYPES[meta["dtype"]], fname, offset)
        return "safetensors"

    def _read_index(self, index: Path) -> dict[str, str]:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise LsMergeError(f"{index} is not a valid index file ({e}). Re-download the checkpoint.") from None
        return weight_map

    def _scan_bin(self) -> str:
        bin_index = self.path / BIN_INDEX
        if bin_index.exists():
            files = sorted(set(self._read_index(bin_index).values()))
        else:
            files = sorted(p.name for p in self.path.glob("pytorch_model*.bin"))
        if not files:
            others = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
            hint = f" Found {others}: lsmerge reads only safetensors or pytorch_model*.bin." if others else ""
            raise LsMergeError(
                f"no weights in {self.path}: expected model.safetensors, sharded *.safetensors with "
                f"{SAFETENSORS_INDEX}, or pytorch_model*.bin.{hint}"
            )
        for fname in files:
            for name, t in self._load_bin(fname).items():
                self._infos[name] = TensorInfo(name, tuple(t.shape), t.dtype, fname)
        return "bin"

    def _load_bin(self, fname: str) -> dict[str, torch.Tensor]:
        if fname not in self._bin_cache:
            try:
                sd = torch.load(self.path / fname, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 - any failure means we refuse the file
                raise LsMergeError(
                    f"{self.path / fname} could not be read with torch.load(weights_only=True) ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}). lsmerge never runs arbitrary pickles; convert "
                    "it to safetensors with a tool you trust."
                ) from None
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise LsMergeError(f"{self.path / fname} is not a state dict of tensors.")
            self._bin_cache[fname] = sd
        return self._bin_cache[fname]

    # -- queries ---------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Tensor names in a stable order (the order of the files, then of each header)."""
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise LsMergeError(f"tensor {name!r} is not in checkpoint {self.path}.") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        return self.info(name).dtype

    def get(self, name: str) -> torch.Tensor:
        """Load one tensor: a fresh CPU tensor in anonymous memory; only its own bytes are read.

        Safetensors data is read with plain file reads straight into the tensor's buffer, not
        memory-mapped: one copy from the page cache is several times faster than faulting in
        a mapping page by page, and nothing of the input stays mapped (so resident memory is
        only the tensors alive), once the tensor is freed.
        """
        info = self.info(name)
        if self.format == "bin":
            return self._load_bin(info.file)[name].clone()
        return _read_tensor(self.path / info.file, info)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) one at a time, file by file."""
        for name in self._infos:  # filled file by file in `_scan`
            yield name, self.get(name)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    @property
    def config(self) -> dict:
        """The parsed config.json (empty dict when the folder has none)."""
        cfg = self.path / "config.json"
        if not cfg.exists():
            return {}
        try:
            return json.loads(cfg.read_text())
        except ValueError as e:
            raise LsMergeError(f"{cfg} is not valid JSON ({e}).") from None

    @property
    def side_files(self) -> list[Path]:
        """config, generation config and tokenizer files present beside the weights."""
        return [self.path / n for n in SIDE_FILES if (self.path / n).exists()]

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.path)!r}, tensors={len(self)}, format={self.format!r})"


def checkpoint_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The `__metadata__` of a checkpoint folder's (first) safetensors file; {} when it has none.
    lsmerge's writer puts the same provenance in every shard."""
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            first = sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LsMergeError(f"{index} is not a valid safetensors index. Re-download the checkpoint.") from None
        file = folder / first
    else:
        file = folder / "model.safetensors"
    if not file.is_file():
        return {}
    header, _ = _safetensors_header(file)
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def open_checkpoint(path: str | os.PathLike) -> CheckpointStore:
    """Open a checkpoint folder lazily (see `CheckpointStore`)."""
    return CheckpointStore(path)
