"""Read a mergekit YAML recipe for the methods lsmerge shares with mergekit.

Honoured exactly (the same per-tensor values as mergekit 0.1.5 resolves them):
`merge_method` linear / slerp / task_arithmetic / ties / dare_linear / dare_ties; `models:` or
`slices:` whose sources share one `layer_range` and tile the model's layers in order;
`base_model`; parameters at top level, per slice and per source, as scalars, gradients
(numeric lists interpolated across the layers of each slice: t = i / (n - 1), 1 for a
one-layer slice; embeddings, final norm and lm_head read t = 0, from the first / last slice)
and filter lists (`- filter: self_attn` / `value: ...`, substring of the tensor name, first
match wins, an entry without a filter matches all); `dtype` / `out_dtype` (output dtype;
arithmetic is always float32 here, as mergekit does for linear and SLERP).

Refused, with the reason: other methods, `modules:`, layer remapping or stacking (passthrough /
frankenmerges), per-slice base models, `residual_weight`, tokenizer merging (`tokenizer`,
`tokenizer_source` other than the base, `chat_template`), LoRA or hub model references,
parameters lsmerge cannot reproduce (`rescale` with ties, `gamma`, `epsilon`, ...).
DARE's random drop uses lsmerge's seeded generator (mergekit's is unseeded), with mergekit's
L1 rescale when `rescale` is true (its default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import TensorRole
from lsmerge.merge.weight.base import METHODS, MergeMethod, get_method


def shared_methods() -> list[str]:
    """Registered methods that mergekit 0.1.5 also has (their `mergekit_defaults` is set)."""
    return sorted(n for n, m in METHODS.items() if m.mergekit_defaults is not None)


_IGNORED = {"int8_mask"}  # changes only the dtype of an internal mask, never a value
_TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source", "name"}


def _refuse(reason: str) -> LsMergeError:
    return LsMergeError(f"mergekit config: {reason} lsmerge refuses recipes it cannot reproduce exactly.")


@dataclass
class Source:
    model: str
    parameters: dict = field(default_factory=dict)


@dataclass
class Slice:
    start: int | None  # None: the whole model (`models:` form)
    end: int | None
    sources: list[Source]
    parameters: dict = field(default_factory=dict)


@dataclass
class MergekitRecipe:
    method: str
    base_model: str | None
    models: list[str]  # inputs of lsmerge's method, in mergekit's order
    slices: list[Slice]
    parameters: dict
    dtype: str | None
    out_dtype: str | None
    raw: dict

    @property
    def output_dtype(self) -> str | None:
        return self.out_dtype or self.dtype


def _model_ref(ref: Any, where: str) -> str:
    if isinstance(ref, dict):
        ref = ref.get("model") if set(ref) <= {"model"} else None
    if not isinstance(ref, str):
        raise _refuse(f"{where}: model reference {ref!r} is not a plain path.")
    if "+" in ref:
        raise _refuse(f"{where}: {ref!r} applies a LoRA (model+lora); merge the LoRA first.")
    return ref


def _params(block: Any, where: str, method: str) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise _refuse(f"{where}.parameters must be a mapping.")
    meth = METHODS[method]
    known = set(meth.mergekit_defaults) | _IGNORED
    for k in block:
        if k not in known:
            raise _refuse(f"{where}: parameter {k!r} is not supported for {method} (supported: {sorted(known)}).")
    problem = meth.check_mergekit_params(block, where)
    if problem:
        raise _refuse(problem)
    return dict(block)


def read_mergekit_config(path: str | Path) -> MergekitRecipe:
    """Parse and check a mergekit YAML (structure only; layer counts are checked later)."""
    p = Path(path)
    if not p.is_file():
        raise LsMergeError(f"mergekit config {p} does not exist. Check --mergekit_config.")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise LsMergeError(f"mergekit config {p} is not valid YAML ({e}).") from None
    if not isinstance(raw, dict):
        raise LsMergeError(f"mergekit config {p} is not a mapping.")
    for key in raw:
        if key not in _TOP_KEYS:
            reason = {
                "modules": "the `modules:` syntax (multi-module models) is not supported.",
                "tokenizer": "tokenizer merging (`tokenizer:`) is not supported; the base model's tokenizer is copied.",
                "chat_template": "`chat_template` is not supported; the base model's is copied.",
            }.get(key, f"key {key!r} is not supported.")
            raise _refuse(reason)
    method = raw.get("merge_method")
    if method not in shared_methods():
        raise _refuse(f"merge_method {method!r} is not one lsmerge shares with mergekit ({', '.join(shared_methods())}).")
    inputs = METHODS[method].mergekit_inputs
    base = _model_ref(raw["base_model"], "base_model") if raw.get("base_model") else None
    ts = raw.get("tokenizer_source")
    if ts not in (None, "base") and not (base and ts == base):
        raise _refuse(f"tokenizer_source {ts!r}: tokenizer merging is not supported; lsmerge copies the base model's tokenizer.")
    if bool(raw.get("models")) == bool(raw.get("slices")):
        raise _refuse("give exactly one of `models:` or `slices:`.")
    slices: list[Slice] = []
    if raw.get("models"):
        sources = [Source(_model_ref(m.get("model"), f"models[{i}]"), _params(m.get("parameters"), f"models[{i}]", method))
                   for i, m in enumerate(raw["models"])]
        slices.append(Slice(None, None, sources))
    else:
        for si, s in enumerate(raw["slices"]):
            where = f"slices[{si}]"
            extra = set(s) - {"sources", "parameters"}
            if extra:
                raise _refuse(f"{where}: {sorted(extra)} (per-slice base models, residual_weight) are not supported.")
            srcs, ranges = [], set()
            for j, src in enumerate(s.get("sources") or []):
                ranges.add(tuple(src.get("layer_range") or ()))
                srcs.append(Source(_model_ref(src.get("model"), f"{where}.sources[{j}]"), _params(src.get("parameters"), f"{where}.sources[{j}]", method)))
            if len(ranges) != 1 or len(next(iter(ranges))) != 2:
                raise _refuse(f"{where}: sources use different layer_range values {sorted(ranges)}; layer remapping (frankenmerges) is not supported.")
            start, end = next(iter(ranges))
            expected = slices[-1].end if slices else 0
            if start != expected or end <= start:
                raise _refuse(f"{where}: layer_range [{start}, {end}] does not continue at layer {expected}; slices must tile the layers in order (no stacking or remapping).")
            if slices and [x.model for x in srcs] != [x.model for x in slices[0].sources]:
                raise _refuse(f"{where}: lists other models than slices[0]; every slice must merge the same models in the same order.")
            slices.append(Slice(start, end, srcs, _params(s.get("parameters"), where, method)))
    top = _params(raw.get("parameters"), "parameters", method)
    names = [x.model for x in slices[0].sources]
    if len(set(names)) != len(names):
        raise _refuse(f"a model is listed twice among the sources {names}.")
    if inputs == "all":
        models = names + ([base] if base and base not in names else [])
    elif inputs == "non_base":  # base_model optional: when given, the method's base
        models = [n for n in names if n != base]
    else:
        if not base:
            raise _refuse(f"{method} needs base_model.")
        others = [n for n in names if n != base]
        if inputs == "base_first":
            if len(others) != 1:
                raise _refuse(f"slerp merges the base with exactly one other model; got {others}.")
            models = [base, others[0]]
        else:
            models = others
            if not models:
                raise _refuse(f"{method} needs at least one model besides the base.")
    meth = METHODS[method]
    if len(models) < meth.min_models or (meth.max_models is not None and len(models) > meth.max_models):
        want = f"exactly {meth.min_models}" if meth.max_models == meth.min_models else f"at least {meth.min_models}"
        raise _refuse(f"{method} takes {want} input model(s); this recipe gives it {len(models)} ({models}).")
    for d in ("dtype", "out_dtype"):
        if raw.get(d) not in (None, "float32", "bfloat16", "float16"):
            raise _refuse(f"{d} {raw.get(d)!r} is not one of float32, bfloat16, float16.")
    return MergekitRecipe(method, base, models, slices, top, raw.get("dtype"), raw.get("out_dtype"), raw)


def evaluate_setting(tensor_name: str, setting: Any, t: float) -> Any:
    """mergekit's rule for one setting: scalars as is, numeric lists interpolated at t, other
    lists stepped, filter lists matched by substring (first match; no filter or '*' matches all)."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in setting):
                return setting[int(t * (len(setting) - 1))]
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * float(setting[i0]) + frac * float(setting[i1])
        for cond in setting:
            if not isinstance(cond, dict) or "value" not in cond:
                raise _refuse(f"setting {setting!r} mixes filters and plain values.")
            f = cond.get("filter")
            if f is None or f == "*" or (tensor_name and f in tensor_name):
                return evaluate_setting(tensor_name, cond["value"], t)
        return None
    raise _refuse(f"unexpected setting {setting!r}.")


def _coerce(value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        return bool(value)
    if default == "l1":  # rescale: true -> mergekit's L1 rescale, false -> none
        return "l1" if value else "none"
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class MergekitParameters:
    """Per-tensor parameters resolved with mergekit's precedence: source > slice > top level."""

    def __init__(self, recipe: MergekitRecipe, num_layers: int):
        self.recipe = recipe
        self.method: MergeMethod = get_method(recipe.method)
        self.defaults = {**self.method.mergekit_defaults, **self.method.mergekit_fixed}
        self.slices = []
        for s in recipe.slices:
            start, end = (0, num_layers) if s.start is None else (s.start, s.end)
            self.slices.append((start, end, s))
        if self.slices[-1][1] != num_layers:
            raise _refuse(f"the slices cover layers 0..{self.slices[-1][1] - 1}, but the models have {num_layers} layers; a slice layout that drops or adds layers is not supported.")

    def _locate(self, role: TensorRole) -> tuple[Slice, float]:
        if role.layer is None:
            pre = role.kind in ("embed", "pos_embed")
            return (self.slices[0] if pre else self.slices[-1])[2], 0.0
        for start, end, s in self.slices:
            if start <= role.layer < end:
                n = end - start
                return s, ((role.layer - start) / (n - 1) if n > 1 else 1.0)
        raise _refuse(f"layer {role.layer} is in no slice.")

    def _lookup(self, key: str, scopes: list[dict], name: str, t: float) -> Any:
        for scope in scopes:
            if scope and key in scope:
                v = evaluate_setting(name, scope[key], t)
                if v is not None:
                    return v
        return None

    def resolve(self, name: str, role: TensorRole) -> dict[str, Any]:
        s, t = self._locate(role)
        out: dict[str, Any] = {}
        for p in self.method.params:
            default = self.defaults.get(p.name, p.default)
            if p.per_model:
                values = []
                for m in self.recipe.models:
                    src = next((x.parameters for x in s.sources if x.model == m), {})
                    v = self._lookup(p.name, [src, s.parameters, self.recipe.parameters], name, t)
                    if v is None:
                        if default is None:
                            raise _refuse(f"parameter {p.name!r} is required for model {m} (tensor {name}), as in mergekit.")
                        v = default
                    values.append(_coerce(v, p.default))
                out[p.name] = values
            else:
                v = self._lookup(p.name, [s.parameters, self.recipe.parameters], name, t)
                if v is None:
                    if default is None:
                        raise _refuse(f"parameter {p.name!r} is required (tensor {name}), as in mergekit.")
                    v = default
                out[p.name] = _coerce(v, self.defaults.get(p.name, p.default))
        return out
