"""The tiny interface every weight-space merge method implements, and the registry.

A method is a class with a `name`, the parameters it reads (shared or one value per input
model), how it treats a base model, and `merge(tensors, base, params, ctx)`: a pure function
of tensors (no I/O). The executor resolves parameters per tensor and streams.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch

from lsmerge.errors import LsMergeError

REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One parameter of a method.

    Args:
        name: key in configs (`t`, `weight`, `density`, `lambda`, ...).
        default: value when not given (`REQUIRED` when it must be given).
        per_model: one value per input model (lists are per model) rather than shared (lists
            are schedules over depth).
        check: returns a problem description for a bad value, or None.
    """

    name: str
    default: Any
    per_model: bool = False
    check: Callable[[Any], str | None] | None = None
    doc: str = ""


def in_unit_interval(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and 0.0 <= v <= 1.0 else "must be a number in [0, 1]"


def density_range(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and 0.0 < v <= 1.0 else "must be a number in (0, 1]"


def non_negative(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 else "must be a finite number >= 0"


def finite(v: Any) -> str | None:
    return None if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else "must be a finite number"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


@dataclass
class TensorContext:
    """What a method may know about the tensor in hand besides its values."""

    name: str
    seed: int = 0
    grams: list[torch.Tensor] | None = None  # RegMean: one (in, in) Gram per model
    kind: str = ""  # the tensor's module kind (archmap): `embed` / `lm_head` tables are not linear maps


class MergeMethod:
    """Base class. `base` policy: 'required' (task vectors are taken against it; it may not
    also be an input), 'optional' (used as 'required' when given, e.g. nuslerp / multislerp of
    task vectors; `merge` gets None without one) or 'none' (the method merges its inputs; a base
    only supplies the tensors left unselected)."""

    name: ClassVar[str]
    base: ClassVar[str] = "none"
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None
    params: ClassVar[tuple[Param, ...]] = ()
    needs_calibration: ClassVar[bool] = False
    label_param: ClassVar[str | None] = None  # the parameter shown in auto output names
    # mergekit 0.1.5 recipes (`--mergekit_config`): the recipe parameters this method accepts with
    # mergekit's defaults (None = required there); None for a method mergekit does not have.
    mergekit_defaults: ClassVar[dict[str, Any] | None] = None
    # lsmerge-only parameters pinned to mergekit's behaviour (not accepted in a recipe)
    mergekit_fixed: ClassVar[dict[str, Any]] = {}
    # how a recipe's sources become the method's inputs: "all" (every source, then base_model if
    # not among them), "base_first" ([base_model, the one other source]), "others" (the sources
    # except base_model; task vectors are taken against it), "non_base" (the sources except
    # base_model, which is optional: the method gets it as its base when the recipe names one)
    mergekit_inputs: ClassVar[str] = "others"

    def keeps_equal_inputs(self, n_models: int, has_base: bool, params: dict) -> bool:
        """True where the method's formula returns the common value exactly (== in every entry)
        whenever its inputs, and the base if given, are all equal: the executor then copies that
        value instead of computing (LoRA experts leave most tensors of a model unchanged). Each
        override states why its arithmetic is exact there."""
        return False

    def check_mergekit_params(self, block: dict, where: str) -> str | None:
        """A reason to refuse a recipe's parameter block (override where mergekit's meaning
        differs from ours), or None."""
        return None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def check_params(self, values: dict, where: str) -> None:
        """Raise LsMergeError naming the tensor when a resolved value is out of range."""
        for p in self.params:
            v = values.get(p.name, REQUIRED)
            if v is REQUIRED:
                raise LsMergeError(f"{self.name}: parameter {p.name!r} is required ({where}). Set it under parameters.")
            if p.check is None:
                continue
            for item in v if p.per_model else [v]:
                problem = p.check(item)
                if problem:
                    raise LsMergeError(f"{self.name}: parameter {p.name}={item!r} {problem} ({where}). Fix it in the config.")
        self.check_combination(values, where)

    def check_combination(self, values: dict, where: str) -> None:
        """Checks across parameters (override where needed)."""

    def merge(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None, params: dict, ctx: TensorContext) -> torch.Tensor:
        """The merged tensor. The executor passes `tensors` as a list it keeps no other
        reference to: a method may `release_inputs(tensors)` once it has what it needs."""
        raise NotImplementedError


def release_inputs(tensors: Sequence[torch.Tensor]) -> None:
    """Drop the executor's input list (a no-op for other sequences) so its tensors can be
    freed before a method's largest temporaries are allocated."""
    if isinstance(tensors, list):
        tensors.clear()


METHODS: dict[str, MergeMethod] = {}


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    """Class decorator: make a method available by its `name`."""
    if cls.name in METHODS:
        raise ValueError(f"merge method {cls.name!r} registered twice")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise LsMergeError(f"unknown merge method {name!r}. Use one of: {', '.join(sorted(METHODS))}.") from None


def derive_seed(*parts) -> int:
    """A 63-bit seed from sha256 of the parts joined by NUL, the same on any machine and device."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def tensor_seed(seed: int, name: str, model_index: int) -> int:
    """The seed of one input's random mask: from the config seed, the tensor name and the input's
    index, so random methods give the same bytes for the same config on any device."""
    return derive_seed(seed, name, model_index)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32
