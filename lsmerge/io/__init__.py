"""Checkpoint I/O, the bottom layer: lazy reading (store), architecture map, streaming atomic
writing (writer, atomic), model references and HF loading (hf), compatibility checks (compat),
the tiny test Llama (tiny), GGUF import."""

import importlib

# names resolved on first use (PEP 562), so that `lsmerge.io.digest_cache` and other light
# modules import without torch (the command line hashes inputs while torch is imported)
_WHERE = {
    "GROUPS": "archmap", "KINDS": "archmap", "ArchitectureMap": "archmap", "TensorRole": "archmap", "expand_kinds": "archmap",
    "CheckpointStore": "store", "TensorInfo": "store", "open_checkpoint": "store",
    "CheckpointWriter": "writer", "check_output_dir": "writer",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"lsmerge.io.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'lsmerge.io' has no attribute {name!r}")


__all__ = [
    "GROUPS",
    "KINDS",
    "ArchitectureMap",
    "CheckpointStore",
    "CheckpointWriter",
    "TensorInfo",
    "TensorRole",
    "check_output_dir",
    "expand_kinds",
    "open_checkpoint",
]
