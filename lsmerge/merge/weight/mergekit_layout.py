"""The output layers of a mergekit recipe: which tensor of which model feeds each output tensor.

mergekit 0.1.5's planner, tensor for tensor: the output's layers are the slices' layers stacked
in order (output layer j of a slice of n layers reads layer `layer_range[0] + j` of each of the
slice's sources, renamed to its index in the output, gradient position t = j / (n - 1), 1 when
n = 1); the tensors outside the layers read the same name from the first slice's sources
(embeddings, t = 0) or the last slice's (final norm, lm_head, t = 0). The output config is the
reference's (the base, else the first model) with the new layer count and per-layer lists
(lists as long as the layers, e.g. `layer_types`) taken from each output layer's source; with a
tokenizer source, the new vocab_size. Every check runs here, before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import ArchitectureMap
from lsmerge.io.store import CheckpointStore
from lsmerge.merge.weight.mergekit_config import MergekitParameters, MergekitRecipe, Slice, Source, method_inputs
from lsmerge.merge.weight.mergekit_vocab import VocabRemap, Vocabulary, config_vocab_size
from lsmerge.merge.weight.plan import TensorTask

PRE_KINDS = ("embed", "pos_embed")
VOCAB_KINDS = ("embed", "lm_head")
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


@dataclass
class Layout:
    tasks: list[TensorTask]
    num_layers: int  # of the output
    origins: list[tuple[str, int]]  # per output layer: (model, layer) of its slice's first source
    changed: bool  # the output's layers differ from the reference's in count or order


def _layer_index(archmap: ArchitectureMap, stores: dict[str, CheckpointStore]) -> dict[str, dict[int, dict[str, str]]]:
    """model -> layer -> {name with the layer index blanked: name}, in each store's order."""
    rx = archmap.family.layer_re
    out: dict[str, dict[int, dict[str, str]]] = {}
    for model, store in stores.items():
        layers: dict[int, dict[str, str]] = {}
        for name in store.names:
            m = rx.search(name)
            if m:
                a, b = m.span("layer")
                layers.setdefault(int(m.group("layer")), {})[name[:a] + "\0" + name[b:]] = name
        out[model] = layers
    return out


def _check_shapes(group: list[tuple[str, str]], stores, out_name: str, where: str, vocab_ok: bool) -> None:
    shapes = [(m, n, stores[m].shape(n)) for m, n in group]
    m0, n0, s0 = shapes[0]
    for m, n, s in shapes[1:]:
        if s != s0 and not (vocab_ok and len(s) == len(s0) and s[1:] == s0[1:]):
            raise LsMergeError(f"mergekit config: {where}: the sources disagree in shape for {out_name}: {n} is {list(s)} in {m} "
                               f"but {n0} is {list(s0)} in {m0}. The sources of a slice must be models of the same width.")


def build_layout(recipe: MergekitRecipe, stores: dict[str, CheckpointStore], archmap: ArchitectureMap,
                 reference: str, vocab: Vocabulary | None = None) -> Layout:
    """Tasks for every output tensor, after checking layer ranges, names and shapes."""
    resolver = MergekitParameters(recipe)
    meth = resolver.method
    depth = {m: archmap.num_layers(s.names) for m, s in stores.items()}
    slices: list[tuple[Slice, list[tuple[Source, int]], int]] = []
    for i, sl in enumerate(recipe.slices):
        starts = []
        for j, src in enumerate(sl.sources):
            n = depth[src.model]
            a, b = src.layer_range or (0, n)
            if b > n:
                raise LsMergeError(f"mergekit config: slices[{i}].sources[{j}] ({src.model}) takes layer_range [{a}, {b}], past "
                                   f"the model's depth: it has {n} layers (0..{n - 1}). Fix layer_range.")
            starts.append((src, a, b - a))
        if len({length for _, _, length in starts}) != 1:
            raise LsMergeError(f"mergekit config: the models of {'models' if recipe.form == 'models' else f'slices[{i}]'} "
                               f"have different depths {[depth[s.model] for s in sl.sources]}; merge models of one depth, "
                               "or give slices with layer ranges of one length.")
        slices.append((sl, [(src, a) for src, a, _ in starts], starts[0][2]))
    index = _layer_index(archmap, stores)
    rx = archmap.family.layer_re
    tasks: list[TensorTask] = []

    def add(out_name: str, kind: str, sl: Slice, t: float, names: dict[str, str], where: str) -> None:
        inputs, base = method_inputs(recipe, sl)
        vocab_ok = vocab is not None and kind in VOCAB_KINDS
        group = [(s.model, names[s.model]) for s in sl.sources]
        _check_shapes(group, stores, out_name, where, vocab_ok)
        first = stores[sl.sources[0].model]
        pairs = [(stores[s.model], names[s.model]) for s in inputs]
        base_in = (stores[base.model], names[base.model]) if base is not None else None
        if not first.dtype(names[sl.sources[0].model]).is_floating_point:
            tasks.append(TensorTask(out_name, kind, None, inputs=[(first, names[sl.sources[0].model])]))
            return
        params = resolver.resolve(sl, t, out_name, [(s, names[s.model]) for s in inputs])
        meth.check_params(params, f"tensor {out_name}")
        remap = None
        if vocab_ok:
            rows = [stores[m].shape(n)[0] for m, n in group]
            if not all(vocab.is_identity(m, r) for (m, _), r in zip(group, rows)):
                remap = VocabRemap(vocab, [s.model for s in inputs], base.model if base else None, [m for m, _ in group])
        tasks.append(TensorTask(out_name, kind, params, inputs=pairs, base_input=base_in, vocab=remap))

    ref_store = stores[reference]
    outside = [(n, archmap.role(n)) for n in ref_store.names if archmap.role(n).layer is None]
    first_sl, last_sl = slices[0][0], slices[-1][0]
    for name, role in outside:
        if role.kind in PRE_KINDS:
            _outside(add, name, role.kind, first_sl, stores, "slices[0]")
    origins: list[tuple[str, int]] = []
    for i, (sl, starts, n) in enumerate(slices):
        for j in range(n):
            t = j / (n - 1) if n > 1 else 1.0
            out_layer = len(origins)
            src0, a0 = starts[0]
            origins.append((src0.model, a0 + j))
            for key, name0 in index[src0.model].get(a0 + j, {}).items():
                names = {}
                for src, a in starts:
                    other = index[src.model].get(a + j, {}).get(key)
                    if other is None:
                        raise LsMergeError(f"mergekit config: slices[{i}]: {src.model} has no tensor like {name0} in its "
                                           f"layer {a + j}; the sources of a slice must be the same architecture.")
                    names[src.model] = other
                m = rx.search(name0)
                x, y = m.span("layer")
                out_name = name0[:x] + str(out_layer) + name0[y:]
                add(out_name, archmap.role(name0).kind, sl, t, names, f"slices[{i}]")
    for name, role in outside:
        if role.kind not in PRE_KINDS:
            _outside(add, name, role.kind, last_sl, stores, f"slices[{len(slices) - 1}]")
    ref_layers = depth[reference]
    changed = len(origins) != ref_layers or any(layer != k for k, (_, layer) in enumerate(origins))
    return Layout(tasks, len(origins), origins, changed)


def _outside(add, name: str, kind: str, sl: Slice, stores: dict[str, CheckpointStore], where: str) -> None:
    """A tensor outside the layers (embeddings, final norm, lm_head): the same name in every source."""
    for src in sl.sources:
        if name not in stores[src.model]:
            raise LsMergeError(f"mergekit config: {where}: tensor {name!r} is missing from {src.model}; the models must "
                               "have the same tensors outside the layers.")
    add(name, kind, sl, 0.0, {src.model: name for src in sl.sources}, where)


def output_config(reference: CheckpointStore, layout: Layout, stores: dict[str, CheckpointStore],
                  vocab: Vocabulary | None, dtype: str | None, form: str) -> bytes | None:
    """The output's config.json (bytes), or None when the reference's is right as it is."""
    cfg = json.loads(json.dumps(reference.config))
    if not cfg:
        return None
    edited = False
    target = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) and not any(k in cfg for k in _LAYER_KEYS) else cfg
    if form == "slices" and layout.changed:
        old = next((target[k] for k in _LAYER_KEYS if isinstance(target.get(k), int)), None)
        key = next((k for k in _LAYER_KEYS if isinstance(target.get(k), int)), "num_hidden_layers")
        target[key] = layout.num_layers
        for k, v in list(target.items()):
            if isinstance(v, list) and old is not None and len(v) == old and k not in ("architectures",):
                per_model = {}
                for model, layer in layout.origins:
                    src = stores[model].config
                    src = src.get("text_config", src) if target is not cfg else src
                    per_model.setdefault(model, src.get(k, v))
                target[k] = [per_model[m][layer] if layer < len(per_model[m]) else v[-1] for m, layer in layout.origins]
        edited = True
    if vocab is not None and config_vocab_size(cfg) != vocab.rows:
        (target if "vocab_size" in target else cfg)["vocab_size"] = vocab.rows
        edited = True
    if dtype is not None:
        key = "dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"
        if cfg.get(key) != dtype:
            cfg[key] = dtype
            edited = True
    return (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode() if edited else None


def reference_model(recipe: MergekitRecipe) -> str:
    """Whose config, generation config and (default) tokenizer the output gets: the base, else the first model."""
    return recipe.base_model or recipe.slices[0].sources[0].model


