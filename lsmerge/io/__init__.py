"""Checkpoint I/O: lazy reading, architecture map, streaming atomic writing, GGUF import."""

from lsmerge.io.archmap import GROUPS, KINDS, ArchitectureMap, TensorRole, expand_kinds
from lsmerge.io.store import CheckpointStore, TensorInfo, open_checkpoint
from lsmerge.io.writer import CheckpointWriter, check_output_dir, save_state_dict

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
    "save_state_dict",
]
