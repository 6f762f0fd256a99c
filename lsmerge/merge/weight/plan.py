"""A validated merge plan: every check runs here, from headers only, before anything is written."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import ArchitectureMap
from lsmerge.io.compat import check_same_family
from lsmerge.io.store import CheckpointStore
from lsmerge.merge.weight.base import MergeMethod
from lsmerge.merge.weight.parameters import ParameterResolver
from lsmerge.merge.weight.selection import EMBED_KINDS, Selection


@dataclass
class TensorTask:
    """One output tensor: copied from the reference (`params` None) or merged with `params`.

    By default every input and the base are read under the output's `name` (`plan.models`,
    `plan.base`). A mergekit layout (slices, layer ranges, frankenmerges) names them instead:
    `inputs` the method's inputs as (store, input tensor name), `base_input` the base's;
    `group` all the tensors of mergekit's group in its order (inputs and base, as keys into
    `inputs + [base_input]`), for `vocab`, a remapping of vocabulary rows to the output tokenizer
    (`mergekit_vocab.VocabRemap`) applied before the merge.
    """

    name: str
    kind: str
    params: dict[str, Any] | None
    vocab_rows: int | None = None  # rows to pad / truncate inputs to (vocabulary mismatch)
    inputs: list[tuple[CheckpointStore, str]] | None = None
    base_input: tuple[CheckpointStore, str] | None = None
    vocab: Any = None


@dataclass
class MergePlan:
    method: MergeMethod
    models: list[CheckpointStore]
    base: CheckpointStore | None
    archmap: ArchitectureMap
    tasks: list[TensorTask]
    out: Path
    dtype: Any = None
    device: str = "cpu"
    seed: int = 0
    max_shard_size: str = "2GB"
    overwrite: bool = False
    provenance: dict = field(default_factory=dict)
    calibration: Any = None
    report: list[str] = field(default_factory=list)
    load_dtype: Any = None  # inputs rounded to this dtype as they are read (a mergekit recipe's `dtype`)
    side_files: dict[str, Any] | None = None  # CheckpointWriter's side_files (output config, tokenizer)

    @property
    def reference(self) -> CheckpointStore:
        """Where unselected tensors, config and tokenizer come from."""
        return self.base if self.base is not None else self.models[0]

    @property
    def inputs(self) -> list[CheckpointStore]:
        return ([self.base] if self.base is not None else []) + self.models


def check_layers(layers: list[int] | None, num_layers: int) -> None:
    for layer in layers or []:
        if not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise LsMergeError(
                f"layer {layer} is out of range: the model has {num_layers} layers (0..{num_layers - 1}). Fix `layers`."
            )


def build_tasks(
    method: MergeMethod,
    models: list[CheckpointStore],
    base: CheckpointStore | None,
    archmap: ArchitectureMap,
    resolver: ParameterResolver,
    selection: Selection,
    allow_vocab_mismatch: bool = True,
) -> tuple[list[TensorTask], list[str]]:
    """Check names, shapes and dtypes across inputs, resolve and check parameters for every
    merged tensor. Returns the tasks and a human report (vocabulary handling)."""
    ref = base if base is not None else models[0]
    stores = ([base] if base is not None else []) + models
    check_same_family(stores, "Weight-space merges need one architecture; for different families use LS-Merge "
                              "with optimal transport (lsmerge merge).")
    ref_names = set(ref.names)
    for s in stores:
        extra = [n for n in s.names if n not in ref_names]
        if extra:
            raise LsMergeError(
                f"tensor {extra[0]!r} is in {s.path} but missing from {ref.path} ({len(extra)} such tensors). "
                "The models must have the same tensors; check they are the same architecture and size."
            )
    tasks, report = [], []
    for name in ref.names:
        role = archmap.role(name)
        ref_shape = ref.shape(name)
        vocab_rows = None
        for s in stores:
            if name not in s:
                raise LsMergeError(f"tensor {name!r} is missing from {s.path} (present in {ref.path}). The models must have the same tensors.")
            shape = s.shape(name)
            if shape != ref_shape:
                vocab = role.kind in EMBED_KINDS and len(shape) == 2 and shape[1:] == ref_shape[1:]
                if not (vocab and allow_vocab_mismatch):
                    raise LsMergeError(
                        f"tensor {name!r} has shape {list(shape)} in {s.path} but {list(ref_shape)} in {ref.path}. "
                        "Merge models of the same size."
                    )
                vocab_rows = ref_shape[0]
                how = "truncated" if shape[0] > ref_shape[0] else "padded with the base's rows"
                report.append(f"vocabulary: {name} has {shape[0]} rows in {s.path.name}, {ref_shape[0]} in {ref.path.name}: {how} to {ref_shape[0]}")
        floating = ref.dtype(name).is_floating_point
        if floating and selection.selects(role):
            params = resolver.resolve(name, role)
            method.check_params(params, f"tensor {name}")
            tasks.append(TensorTask(name, role.kind, params, vocab_rows))
        else:
            tasks.append(TensorTask(name, role.kind, None))
    if not any(t.params is not None for t in tasks):
        raise LsMergeError("the selection matches no tensor: nothing would be merged. Check `layers` and `kinds`.")
    return tasks, report


def provenance_json(d: dict) -> dict:
    """A JSON-safe, deterministic copy of the resolved configuration."""
    return json.loads(json.dumps(d, sort_keys=True, default=str))
