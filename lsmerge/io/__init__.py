"""Checkpoint I/O, the bottom layer: lazy reading (store), architecture map, streaming atomic
writing (writer, atomic), model references and HF loading (hf), compatibility checks (compat),
the tiny test Llama (tiny), GGUF import."""

from lsmerge.io.archmap import GROUPS, KINDS, ArchitectureMap, TensorRole, expand_kinds
from lsmerge.io.store import CheckpointStore, TensorInfo, open_checkpoint
from lsmerge.io.writer import CheckpointWriter, check_output_dir

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
