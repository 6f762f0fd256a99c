"""What a row's checkpoint holds, for the results pipeline: a digest of what it computes (so
byte-identical checkpoints share one score) and its weight error against another checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lsmerge.errors import LsMergeError

#: files of a checkpoint folder that describe how it was made, not what it computes
_PROVENANCE_FILES = ("README.md",)


def checkpoint_content_key(path: str) -> str:
    """Digest of what a checkpoint folder computes: every safetensors tensor's name, dtype, shape and
    data bytes (in name order, across shards; not the header metadata, where lsmerge records the
    command that wrote it), and the bytes of every other file except the model card and the shard
    index (config, generation config, tokenizer, chat template, any other weight file)."""
    from lsmerge.io.store import _safetensors_header

    p = Path(path)
    h = hashlib.sha256()
    tensors = {}
    for f in sorted(p.glob("*.safetensors")):
        header, start = _safetensors_header(f)
        tensors.update({n: (f, start, m) for n, m in header.items() if n != "__metadata__"})
    for name in sorted(tensors):
        f, start, meta = tensors[name]
        lo, hi = (int(v) for v in meta["data_offsets"])
        h.update(json.dumps([name, meta["dtype"], meta["shape"]]).encode())
        with open(f, "rb") as fh:
            fh.seek(start + lo)
            left = hi - lo
            while left:
                block = fh.read(min(left, 1 << 24))
                h.update(block)
                left -= len(block)
    for f in sorted(p.iterdir()):
        if f.is_file() and f.suffix != ".safetensors" and f.name not in _PROVENANCE_FILES and not f.name.endswith(".safetensors.index.json"):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def weight_errors(reference: str, model: str, kinds: list[str], importance: str | None) -> dict:
    """{"relative_error", "output_weighted_error", "tensors"} of `model` against `reference` over the
    reference's tensors of `kinds` (`lsmerge.evaluate.noise_reference.relative_errors`)."""
    from lsmerge.data.importance import ImportanceStats
    from lsmerge.data.weight_datamodule import select_tensors
    from lsmerge.evaluate.noise_reference import relative_errors
    from lsmerge.io.archmap import ArchitectureMap
    from lsmerge.io.store import open_checkpoint

    ref, mod = open_checkpoint(reference), open_checkpoint(model)
    stats = ImportanceStats.load(importance) if importance else None
    names = select_tensors(ref, ArchitectureMap.from_config(ref.config, where=ref.path), kinds)
    missing = [n for n in names if n not in mod or mod.shape(n) != ref.shape(n)]
    if missing:
        raise LsMergeError(f"weight error of {model} against {reference}: {len(missing)} of the {kinds} tensors are missing "
                           f"or of another shape, e.g. {missing[0]}; compare checkpoints of one architecture.")
    pairs = ((n, ref.get(n), mod.get(n), stats.for_tensor(n, ref.shape(n)) if stats else None) for n in names)
    return {**relative_errors(pairs), "tensors": len(names)}
