"""Per-tensor parameter resolution for native configs: global, per module kind, per layer,
per tensor-name regex, with schedules over depth.

Precedence (later wins): method defaults < `parameters` < `per_kind` (groups such as `attn`
before single kinds such as `attn_q`) < `per_layer` < `per_tensor` (in the order given).

A list given for a shared parameter (`t`, `lambda`, `alpha`, ...) is a schedule over depth,
interpolated as mergekit does: position x = layer / (num_layers - 1) (1 for a single layer,
0 for tensors outside the decoder blocks: embeddings, final norm, lm_head), scaled =
x * (len - 1), value = (1 - frac) v[floor] + frac v[floor + 1]. A list given for a per-model
parameter (`weight`, `density`) holds one value per model.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import TensorRole, expand_kinds
from lsmerge.merge.weight.base import MergeMethod


class ParameterResolver(Protocol):
    def resolve(self, name: str, role: TensorRole) -> dict[str, Any]:
        """Final values for one tensor: shared parameters as scalars, per-model ones as lists."""


def schedule_value(values: list, x: float) -> Any:
    """mergekit's gradient rule: numbers interpolate linearly, other values pick a step."""
    if not values:
        raise LsMergeError("an empty list is not a schedule; give at least one value.")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return values[int(x * (len(values) - 1))]
    scaled = x * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * float(values[i0]) + frac * float(values[i1])


def depth_position(role: TensorRole, num_layers: int) -> float:
    """Position in [0, 1] used to read schedules (see module docstring)."""
    if role.layer is None:
        return 0.0
    return role.layer / (num_layers - 1) if num_layers > 1 else 1.0


class NativeParameters:
    """Resolve `parameters` / `per_kind` / `per_layer` / `per_tensor` for one method."""

    def __init__(
        self,
        method: MergeMethod,
        n_models: int,
        num_layers: int,
        parameters: dict | None = None,
        per_kind: dict | None = None,
        per_layer: dict | None = None,
        per_tensor: dict | None = None,
    ):
        self.method = method
        self.n_models = n_models
        self.num_layers = num_layers
        self.global_ = self._check_block(parameters or {}, "parameters")
        kinds = []
        for key, block in (per_kind or {}).items():
            kinds.append((expand_kinds([key]), self._check_block(block, f"per_kind.{key}")))
        kinds.sort(key=lambda kb: -len(kb[0]))  # groups first, single kinds after (more specific wins)
        self.per_kind = kinds
        self.per_layer: dict[int, dict] = {}
        for key, block in (per_layer or {}).items():
            try:
                layer = int(key)
            except (TypeError, ValueError):
                raise LsMergeError(f"per_layer key {key!r} is not a layer index.") from None
            if not 0 <= layer < num_layers:
                raise LsMergeError(
                    f"per_layer names layer {layer}, but the model has {num_layers} layers (0..{num_layers - 1})."
                )
            block = self._check_block(block, f"per_layer.{layer}")
            for k, v in block.items():
                if isinstance(v, list) and not method.param(k).per_model:
                    raise LsMergeError(f"per_layer.{layer}.{k} is a list; a single layer takes one value.")
            self.per_layer[layer] = block
        self.per_tensor = []
        for pattern, block in (per_tensor or {}).items():
            try:
                rx = re.compile(pattern)
            except re.error as e:
                raise LsMergeError(f"per_tensor pattern {pattern!r} is not a valid regex ({e}).") from None
            self.per_tensor.append((rx, self._check_block(block, f"per_tensor.{pattern}")))

    def _check_block(self, block: Any, where: str) -> dict:
        if not isinstance(block, dict):
            raise LsMergeError(f"{where} must be a mapping of parameter names to values, got {block!r}.")
        known = {p.name for p in self.method.params}
        for k, v in block.items():
            if k not in known:
                raise LsMergeError(
                    f"{where}: {self.method.name} has no parameter {k!r}. Its parameters: {', '.join(sorted(known)) or 'none'}."
                )
            p = self.method.param(k)
            if p.per_model and isinstance(v, list) and len(v) != self.n_models:
                raise LsMergeError(
                    f"{where}.{k} has {len(v)} values for {self.n_models} models; give one per model or a single value."
                )
        return dict(block)

    def resolve(self, name: str, role: TensorRole) -> dict[str, Any]:
        raw = {p.name: p.default for p in self.method.params}
        raw.update(self.global_)
        for kinds, block in self.per_kind:
            if role.kind in kinds:
                raw.update(block)
        if role.layer in self.per_layer:
            raw.update(self.per_layer[role.layer])
        for rx, block in self.per_tensor:
            if rx.search(name):
                raw.update(block)
        x = depth_position(role, self.num_layers)
        out: dict[str, Any] = {}
        for p in self.method.params:
            v = raw[p.name]
            if p.per_model:
                out[p.name] = list(v) if isinstance(v, list) else [v] * self.n_models
            else:
                out[p.name] = schedule_value(v, x) if isinstance(v, list) else v
        return out

