"""Read a mergekit 0.1.5 YAML recipe into lsmerge's terms (structure and parameters only; the
layer layout against the models' depths is `mergekit_layout`, the tokenizer `mergekit_vocab`).

Honoured exactly (the same per-tensor values as mergekit resolves them):
- `merge_method`: every method lsmerge shares with mergekit (a method file sets
  `mergekit_defaults`), `passthrough` included.
- `models:` (every model whole; `base_model` appended when not among them) or `slices:`, each
  slice a list of `sources` with their own `layer_range` (equal lengths), stacked in order:
  depth up-scaling and frankenmerges; the output has the sum of the slice lengths as layers.
- `base_model`; `parameters` at top level, per slice and per source, as scalars, gradients
  (numeric lists interpolated across the layers of each slice: t = i / (n - 1), 1 for a
  one-layer slice; embeddings read t = 0 from the first slice, final norm and lm_head t = 0
  from the last) and filter lists (`- filter: self_attn` / `value: ...`: substring of the tensor
  name, first match wins, no filter or `*` matches all). Shared parameters filter on the output
  tensor's name, per-source ones on the source tensor's name, as mergekit does. Per-method
  parameters such as `normalize`, `rescale`, `lambda` are read by the method's own table;
  `int8_mask` changes only an internal mask's dtype and is accepted everywhere.
- `dtype` (inputs are rounded to it as they are read, as mergekit loads them; arithmetic is
  float32 here) and `out_dtype` (output dtype, default `dtype`).
- `tokenizer_source` / `tokenizer.source`: `base`, `union` (mergekit's default for a `tokenizer:`
  block without a source: every model's tokens, `mergekit_union`) or one of the recipe's models
  (embedding and lm_head rows remapped to that tokenizer's vocabulary as mergekit does),
  `tokenizer.pad_to_multiple_of`; `chat_template` (`auto` or a Jinja template).

Refused, with its name: other methods, `modules:`, per-slice `base_model`, `residual_weight`,
`tokenizer.tokens`, mergekit's built-in chat template names, LoRA or hub model references,
parameters a method does not take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.base import METHODS, MergeMethod, get_method


def shared_methods() -> list[str]:
    """Registered methods that mergekit 0.1.5 also has (their `mergekit_defaults` is set)."""
    return sorted(n for n, m in METHODS.items() if m.mergekit_defaults is not None)


_IGNORED = {"int8_mask"}  # changes only the dtype of an internal mask, never a value
_TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source",
             "tokenizer", "chat_template", "name"}
_DTYPES = (None, "float32", "bfloat16", "float16")
#: mergekit's built-in chat templates (files of its package; their text is not shipped here)
BUILTIN_TEMPLATES = ("alpaca", "chatml", "exaone", "llama3", "mistral")


def _refuse(reason: str) -> LsMergeError:
    return LsMergeError(f"mergekit config: {reason} lsmerge refuses recipes it cannot reproduce exactly.")


@dataclass
class Source:
    model: str
    layer_range: tuple[int, int] | None = None  # None: the whole model (`models:` form)
    parameters: dict = field(default_factory=dict)


@dataclass
class Slice:
    sources: list[Source]
    parameters: dict = field(default_factory=dict)


@dataclass
class MergekitRecipe:
    method: str
    base_model: str | None
    form: str  # "models" or "slices"
    slices: list[Slice]
    parameters: dict
    dtype: str | None
    out_dtype: str | None
    raw: dict
    tokenizer_source: str | None = None  # None (copy the reference's files), "base", "union" or a model reference
    pad_to_multiple_of: int | None = None
    chat_template: str | None = None

    @property
    def output_dtype(self) -> str | None:
        return self.out_dtype or self.dtype

    @property
    def models(self) -> list[str]:
        """The method's inputs in the first slice, in lsmerge's order."""
        return [s.model for s in method_inputs(self, self.slices[0])[0]]

    def referenced_models(self) -> list[str]:
        """Every model the recipe names (base first), once each, in order."""
        names = [self.base_model] if self.base_model else []
        for s in self.slices:
            names += [x.model for x in s.sources]
        return list(dict.fromkeys(names))


def method_inputs(recipe: MergekitRecipe, sl: Slice) -> tuple[list[Source], Source | None]:
    """(the method's inputs, the base source) of one slice, by the method's `mergekit_inputs`:
    "all" every source in order, "base_first" [base, the one other source], "others" the sources
    except the base (task vectors are taken against it), "non_base" the same with the base optional."""
    inputs = METHODS[recipe.method].mergekit_inputs
    base = next((x for x in sl.sources if recipe.base_model and x.model == recipe.base_model), None)
    if inputs == "all":
        return list(sl.sources), None
    others = [x for x in sl.sources if x is not base]
    if inputs == "non_base":  # base_model optional: when given (among the sources), the method's base
        return others, base
    if base is None:
        raise _refuse(f"{recipe.method} needs base_model among the sources of every slice.")
    if inputs == "base_first":
        if len(others) != 1:
            raise _refuse(f"{recipe.method} merges the base with exactly one other model; got {[x.model for x in others]}.")
        return [base, others[0]], None
    if not others:
        raise _refuse(f"{recipe.method} needs at least one model besides the base.")
    return others, base


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
    return {k: v for k, v in block.items() if k not in _IGNORED}


def _layer_range(value: Any, where: str) -> tuple[int, int]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or not 0 <= value[0] < value[1]:
        raise LsMergeError(f"mergekit config: {where}.layer_range {value!r} is not [start, end] with 0 <= start < end. "
                           "Give the half-open range of layers to take, e.g. [0, 16].")
    return int(value[0]), int(value[1])


def _tokenizer(raw: dict, base: str | None) -> tuple[str | None, int | None]:
    ts, pad = raw.get("tokenizer_source"), None
    tok = raw.get("tokenizer")
    if tok is not None:
        if ts is not None:
            raise _refuse("give one of `tokenizer_source` and `tokenizer`, as mergekit requires.")
        if not isinstance(tok, dict) or set(tok) - {"source", "tokens", "pad_to_multiple_of"}:
            raise _refuse(f"`tokenizer` {tok!r} is not a mapping of source / tokens / pad_to_multiple_of.")
        if tok.get("tokens"):
            raise _refuse("`tokenizer.tokens` (per-token embedding sources) is not supported.")
        ts, pad = tok.get("source", "union"), tok.get("pad_to_multiple_of")
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 1):
            raise _refuse(f"tokenizer.pad_to_multiple_of {pad!r} is not a positive integer.")
    if ts is not None and ts not in ("base", "union"):
        ts = _model_ref(ts, "tokenizer_source")
    return ts, pad


def _chat_template(value: Any) -> str | None:
    if value is None or value == "auto":
        return value
    if not isinstance(value, str):
        raise _refuse(f"chat_template {value!r} is not a string.")
    if value in BUILTIN_TEMPLATES:
        raise _refuse(f"chat_template {value!r} names one of mergekit's built-in templates, which lsmerge does not "
                      "ship; paste the template's Jinja text instead.")
    if len(value) < 20 or "{" not in value:
        raise LsMergeError(f"mergekit config: chat_template {value!r} is not a Jinja template (mergekit refuses it too). "
                           "Give `auto` or the template's text.")
    return value


def read_mergekit_config(path: str | Path) -> MergekitRecipe:
    """Parse and check a mergekit YAML (structure only; layer ranges are checked against the
    models' depths in `mergekit_layout`)."""
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
            reason = {"modules": "the `modules:` syntax (multi-module models) is not supported."}
            raise _refuse(reason.get(key, f"key {key!r} is not supported."))
    method = raw.get("merge_method")
    if method not in shared_methods():
        raise _refuse(f"merge_method {method!r} is not one lsmerge shares with mergekit ({', '.join(shared_methods())}).")
    base = _model_ref(raw["base_model"], "base_model") if raw.get("base_model") else None
    if bool(raw.get("models")) == bool(raw.get("slices")):
        raise _refuse("give exactly one of `models:` or `slices:`.")
    slices: list[Slice] = []
    if raw.get("models"):
        form = "models"
        sources = []
        for i, m in enumerate(raw["models"]):
            if not isinstance(m, dict) or set(m) - {"model", "parameters"}:
                raise _refuse(f"models[{i}] {m!r} is not a mapping of model / parameters.")
            sources.append(Source(_model_ref(m.get("model"), f"models[{i}]"), None, _params(m.get("parameters"), f"models[{i}]", method)))
        if base and base not in [s.model for s in sources]:
            sources.append(Source(base))  # mergekit adds the base as an input without parameters
        slices.append(Slice(sources))
    else:
        form = "slices"
        for si, s in enumerate(raw["slices"]):
            where = f"slices[{si}]"
            if not isinstance(s, dict):
                raise _refuse(f"{where} is not a mapping.")
            extra = set(s) - {"sources", "parameters"}
            if extra:
                raise _refuse(f"{where}: {sorted(extra)} (per-slice base_model, residual_weight) are not supported.")
            srcs = []
            for j, src in enumerate(s.get("sources") or []):
                w = f"{where}.sources[{j}]"
                if not isinstance(src, dict) or "layer_range" not in src:
                    raise LsMergeError(f"mergekit config: {w} needs a model and a layer_range.")
                srcs.append(Source(_model_ref(src.get("model"), w), _layer_range(src["layer_range"], w),
                                   _params(src.get("parameters"), w, method)))
            if not srcs:
                raise LsMergeError(f"mergekit config: {where} has no sources.")
            lengths = {x.layer_range[1] - x.layer_range[0] for x in srcs}
            if len(lengths) != 1:
                raise LsMergeError(f"mergekit config: the sources of {where} take different numbers of layers "
                                   f"{[list(x.layer_range) for x in srcs]}; every source of a slice must give as many layers.")
            slices.append(Slice(srcs, _params(s.get("parameters"), where, method)))
    for i, sl in enumerate(slices):
        names = [x.model for x in sl.sources]
        if len(set(names)) != len(names):
            raise _refuse(f"slices[{i}] lists a model twice among its sources {names}.")
    for d in ("dtype", "out_dtype"):
        if raw.get(d) not in _DTYPES:
            raise _refuse(f"{d} {raw.get(d)!r} is not one of float32, bfloat16, float16.")
    ts, pad = _tokenizer(raw, base)
    recipe = MergekitRecipe(method, base, form, slices, _params(raw.get("parameters"), "parameters", method),
                            raw.get("dtype"), raw.get("out_dtype"), raw, ts, pad, _chat_template(raw.get("chat_template")))
    if ts not in (None, "base", "union") and ts not in recipe.referenced_models():
        raise LsMergeError(f"mergekit config: tokenizer source {ts!r} is not among the recipe's models "
                           f"{recipe.referenced_models()}; name one of them, or `base`.")
    meth = METHODS[method]
    for i, sl in enumerate(slices):
        n = len(method_inputs(recipe, sl)[0])  # the method's input rules hold in every slice
        if n < meth.min_models or (meth.max_models is not None and n > meth.max_models):
            want = f"exactly {meth.min_models}" if meth.max_models == meth.min_models else f"at least {meth.min_models}"
            raise _refuse(f"{method} merges {want} model(s) per slice; slices[{i}] gives it {n}.")
    return recipe


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
    if default in ("l1", "none"):  # rescale: true -> mergekit's L1 rescale, false -> none
        return value if isinstance(value, str) else ("l1" if value else "none")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class MergekitParameters:
    """Per-tensor parameters resolved with mergekit's precedence: source > slice > top level.

    A parameter is required when mergekit's default is None and lsmerge's is not (`weight`);
    one whose lsmerge default is None too (passthrough's `scale`) stays None when unset.
    """

    def __init__(self, recipe: MergekitRecipe):
        self.recipe = recipe
        self.method: MergeMethod = get_method(recipe.method)
        self.defaults = {**self.method.mergekit_defaults, **self.method.mergekit_fixed}

    @staticmethod
    def _lookup(key: str, scopes: list[dict], name: str, t: float) -> Any:
        for scope in scopes:
            if scope and key in scope:
                v = evaluate_setting(name, scope[key], t)
                if v is not None:
                    return v
        return None

    def _default(self, p, what: str) -> Any:
        default = self.defaults.get(p.name, p.default)
        if default is None and p.default is not None:
            raise _refuse(f"parameter {p.name!r} is required ({what}), as in mergekit.")
        return default

    def resolve(self, sl: Slice, t: float, name: str, inputs: list[tuple[Source, str]]) -> dict[str, Any]:
        """Values for output tensor `name` in slice `sl` at gradient position `t`; `inputs`
        are the method's inputs as (source, that source's tensor name)."""
        top = self.recipe.parameters
        out: dict[str, Any] = {}
        for p in self.method.params:
            if p.per_model:
                values = []
                for src, in_name in inputs:
                    v = self._lookup(p.name, [src.parameters, sl.parameters, top], in_name, t)
                    if v is None:
                        v = self._default(p, f"model {src.model}, tensor {in_name}")
                    values.append(v if v is None else _coerce(v, p.default))
                out[p.name] = values
            else:
                v = self._lookup(p.name, [sl.parameters, top], name, t)
                if v is None:
                    v = self._default(p, f"tensor {name}")
                out[p.name] = v if v is None else _coerce(v, self.defaults.get(p.name, p.default))
        return out
