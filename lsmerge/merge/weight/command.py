"""`lsmerge merge-weights`: weight-space merges (native config or a mergekit recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal


from lsmerge.errors import LsMergeError
from lsmerge.torch_options import resolve_device, resolve_dtype
from lsmerge.io.archmap import ArchitectureMap, expand_kinds
from lsmerge.io.hf import auto_name, resolve_model, resolve_models
from lsmerge.io.store import CheckpointStore, open_checkpoint
from lsmerge.io.writer import check_output_dir
from lsmerge.merge.weight.base import get_method
from lsmerge.merge.weight.gram import Calibration, collect_grams
from lsmerge.merge.weight.parameters import NativeParameters
from lsmerge.merge.weight.plan import MergePlan, build_tasks, check_layers, provenance_json
from lsmerge.merge.weight.selection import Selection

def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def _open_all(paths: list[Path]) -> dict[Path, CheckpointStore]:
    stores: dict[Path, CheckpointStore] = {}
    for p in paths:
        if p not in stores:
            stores[p] = open_checkpoint(p)
    return stores


def merge_weights(
    *,
    models: list[str] | None = None,
    base_model: str | None = None,
    method: str = "linear",
    parameters: dict | None = None,
    per_kind: dict | None = None,
    per_layer: dict | None = None,
    per_tensor: dict | None = None,
    layers: list[int] | None = None,
    kinds: list[str] | None = None,
    embeddings: Literal["merge", "base"] | None = None,
    calibration: Calibration | None = None,
    seed: int = 0,
    out: str | None = None,
    out_root: str = "checkpoints/merged",
    dtype: str | None = None,
    device: str = "auto",
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    progress: bool = True,
    layer_pattern: str | None = None,
    mergekit_config: str | None = None,
) -> str:
    """Merge checkpoints in weight space: linear, slerp, task_arithmetic, ties, dare_linear,
    dare_ties, regmean, tsv, iso_c, iso_cts, knots_ties, knots_dare; optionally only some layers
    or module kinds.

    Args:
        models: checkpoint folders (or names under checkpoints/base/) to merge. slerp: [t=0, t=1];
            task-vector methods: the fine-tuned models (not the base).
        base_model: the base: task vectors are taken against it (task_arithmetic, ties, dare_*),
            and unselected tensors, config and tokenizer come from it (default: the first model).
        method: linear | slerp | task_arithmetic | ties | dare_linear | dare_ties | regmean | model_stock |
            karcher | nuslerp | multislerp | nearswap | arcee_fusion | breadcrumbs | breadcrumbs_ties | della |
            della_linear | sce | ram | ramplus_tl | tsv | iso_c | iso_cts | knots_ties | knots_dare
            (nuslerp / multislerp: task vectors when base_model is given; passthrough through recipes).
        parameters: global parameters, e.g. {weight: [0.7, 0.3]}, {t: 0.5} or a schedule
            {t: [0, 0.5, 1]}, {density: 0.5, lambda: 1.0}, {alpha: 0.9}, {rank_fraction: 0.25}
            (tsv), {common_fraction: 0.8} (iso_cts). Lists of shared
            parameters are schedules over depth; lists of weight / density are one per model.
        per_kind: parameters per module kind or group, e.g. {attn: {t: 0.3}, mlp: {t: 0.7}}.
        per_layer: parameters per layer index, e.g. {3: {t: 0.2}}.
        per_tensor: parameters per tensor-name regex, e.g. {'q_proj': {t: 0.1}}.
        layers: merge only these decoder layers (others from the base).
        kinds: merge only these module kinds or groups (qkv, attn, mlp, norm, attn_q, ...).
        embeddings: 'merge' or 'base' for embeddings and lm_head (default: merge on a full
            merge, base when layers or kinds are given).
        calibration: calibration text for regmean (files / texts / max_tokens / seq_len / batch_size).
        seed: seed of DARE's random drop (per tensor: sha256 of seed, tensor name, model index).
        out: output folder (default: auto-named under out_root from inputs and parameters).
        out_root: where auto-named outputs go.
        dtype: output dtype float32 | bfloat16 | float16 (default: each tensor's base dtype).
            Arithmetic is float32 regardless (float64 for the RegMean solve).
        device: cpu | cuda | auto (cuda when present).
        max_shard_size: output shard size, e.g. 2GB.
        overwrite: replace a non-empty output folder.
        progress: show a progress bar (tensors, MB/s read).
        layer_pattern: regex with a (?P<layer>\\d+) group for architectures lsmerge does not know.
        mergekit_config: a mergekit YAML recipe; replaces models / base_model / method / parameters.
    Returns: the output folder.
    """
    dev = str(resolve_device(device))
    out_dtype = resolve_dtype(dtype)
    given = dict(models=models, base_model=base_model, method=method, parameters=parameters, per_kind=per_kind,
                 per_layer=per_layer, per_tensor=per_tensor, layers=layers, kinds=kinds, embeddings=embeddings,
                 calibration=vars(calibration) if calibration else None, seed=seed, dtype=dtype,
                 max_shard_size=max_shard_size, layer_pattern=layer_pattern)
    if mergekit_config:
        return _merge_mergekit(mergekit_config, out, out_root, dev, dtype, max_shard_size, overwrite, progress, layer_pattern, seed)

    meth = get_method(method)
    model_paths = resolve_models(models, " (use weights instead)")
    base_path = resolve_model(base_model) if base_model else None
    if meth.base == "required" and base_path is None:
        raise LsMergeError(f"{method} takes task vectors against a base: set base_model.")
    if meth.base in ("required", "optional") and base_path is not None:
        if base_path in model_paths:
            raise LsMergeError(f"base_model {base_path} is also listed in models; its task vector would be zero. Remove it from models.")
    n = len(model_paths)
    if n < meth.min_models or (meth.max_models is not None and n > meth.max_models):
        want = f"exactly {meth.min_models}" if meth.max_models == meth.min_models else f"at least {meth.min_models}"
        raise LsMergeError(f"{method} merges {want} models; got {n}.")
    if embeddings not in (None, "merge", "base"):
        raise LsMergeError(f"embeddings must be 'merge' or 'base', got {embeddings!r}.")
    if meth.needs_calibration and calibration is None:
        raise LsMergeError(f"{method} needs calibration text: set calibration.files or calibration.texts.")

    stores = _open_all(([base_path] if base_path else []) + model_paths)
    ref = stores[base_path or model_paths[0]]
    archmap = ArchitectureMap.from_config(ref.config, layer_pattern=layer_pattern, where=ref.path)
    num_layers = archmap.num_layers(ref.names)
    check_layers(layers, num_layers)
    kind_set = expand_kinds(kinds) if kinds else None
    emb = embeddings == "merge" if embeddings else (layers is None and kinds is None)
    selection = Selection(frozenset(layers) if layers is not None else None, kind_set, emb)
    resolver = NativeParameters(meth, n, num_layers, parameters, per_kind, per_layer, per_tensor)
    tasks, report = build_tasks(meth, [stores[p] for p in model_paths], stores[base_path] if base_path else None, archmap, resolver, selection)

    if out is None:
        label = ""
        if meth.label_param:
            first = next(t.params for t in tasks if t.params is not None)
            v = (parameters or {}).get(meth.label_param, first[meth.label_param])
            if meth.label_param == "weight":
                w = first["weight"]
                v = w[0] / sum(w) if sum(w) else w[0]
            elif isinstance(v, list):
                v = "sched"
            label = _fmt(v[0] if isinstance(v, list) else v)
        named = ([base_path] if base_path and meth.base in ("required", "optional") else []) + model_paths
        out = str(Path(out_root) / auto_name(named, method, label, layers, kinds))
    out_path = check_output_dir(out, list(stores), overwrite)
    plan = MergePlan(meth, [stores[p] for p in model_paths], stores[base_path] if base_path else None, archmap, tasks,
                     out_path, out_dtype, dev, seed, max_shard_size, overwrite,
                     provenance_json({"command": "merge-weights", **given}), calibration, report)
    grams = None
    if meth.needs_calibration:
        wanted = {t.name for t in tasks if t.params is not None and len(ref.shape(t.name)) == 2
                  and t.kind not in ("embed", "pos_embed")}
        per_model = [collect_grams(p, wanted, calibration, dev) for p in model_paths]
        grams = {name: [g[name] for g in per_model] for name in wanted if all(name in g for g in per_model)}
        plan.report.append(f"regmean: Gram matrices for {len(grams)} linear weights; {sum(t.params is not None for t in tasks) - len(grams)} merged tensors averaged")
    return _run(plan, grams, progress)


def _run(plan: MergePlan, grams, progress: bool) -> str:
    from lsmerge.merge.weight.executor import run_plan

    for line in plan.report:
        print(f"merge-weights: {line}")
    out = run_plan(plan, grams, progress)
    print(f"merge-weights: wrote {out}")
    return str(out)


def _merge_mergekit(config: str, out, out_root, dev, dtype, max_shard_size, overwrite, progress, layer_pattern, seed) -> str:
    from lsmerge.io.compat import check_same_family
    from lsmerge.merge.weight.mergekit_config import read_mergekit_config
    from lsmerge.merge.weight.mergekit_layout import build_layout, output_config, reference_model
    from lsmerge.merge.weight.mergekit_vocab import build_vocabulary, tokenizer_side_files

    recipe = read_mergekit_config(config)
    root = Path(config).resolve().parent
    meth = get_method(recipe.method)
    names = recipe.referenced_models()
    paths = {m: resolve_model(m, root) for m in names}
    opened = _open_all(list(dict.fromkeys(paths.values())))
    stores = {m: opened[paths[m]] for m in names}
    ref_name = reference_model(recipe)
    ref = stores[ref_name]
    check_same_family(list(opened.values()), "A mergekit recipe merges models of one architecture.")
    archmap = ArchitectureMap.from_config(ref.config, layer_pattern=layer_pattern, where=ref.path)
    vocab = None
    if recipe.tokenizer_source is not None:
        vocab = build_vocabulary(recipe.tokenizer_source, recipe.pad_to_multiple_of, recipe.base_model, names, paths, stores)
    layout = build_layout(recipe, stores, archmap, ref_name, vocab)
    out_dtype = resolve_dtype(dtype or recipe.output_dtype)
    report = []
    if recipe.dtype in ("bfloat16", "float16") and meth.name != "passthrough":
        report.append(f"note: mergekit does some of {recipe.method}'s arithmetic in {recipe.dtype}; lsmerge rounds the "
                      f"inputs to {recipe.dtype} as mergekit reads them, computes in float32 and rounds once to the output dtype")
    if layout.changed:
        report.append(f"layers: {layout.num_layers} output layers from " + ", ".join(
            f"{m}[{a}:{b}]" for m, a, b in _runs(layout.origins)))
    side: dict = {}
    if vocab is not None or recipe.chat_template is not None:
        side.update(tokenizer_side_files(vocab.source if vocab else ref.path, recipe.chat_template, [paths[m] for m in names],
                                         vocab.built if vocab else None))
    cfg = output_config(ref, layout, stores, vocab, dtype or recipe.output_dtype, recipe.form)
    if cfg is not None:
        side["config.json"] = cfg
    inputs = [s for s in opened.values() if s is not ref]
    if out is None:
        out = str(Path(out_root) / auto_name([paths[m] for m in names], recipe.method, "_mergekit-" + Path(config).stem, None, None))
    out_path = check_output_dir(out, list(opened), overwrite)
    prov = provenance_json({"command": "merge-weights", "mergekit_config": recipe.raw, "seed": seed})
    plan = MergePlan(meth, inputs, ref, archmap, layout.tasks, out_path, out_dtype, dev, seed, max_shard_size, overwrite,
                     prov, None, report, load_dtype=resolve_dtype(recipe.dtype) if recipe.dtype else None,
                     side_files=side or None)
    return _run(plan, None, progress)


def _runs(origins: list[tuple[str, int]]) -> list[tuple[str, int, int]]:
    """Consecutive output layers from one model's consecutive layers, as (model, start, end)."""
    runs: list[list] = []
    for model, layer in origins:
        if runs and runs[-1][0] == model and runs[-1][2] == layer:
            runs[-1][2] += 1
        else:
            runs.append([model, layer, layer + 1])
    return [(m, a, b) for m, a, b in runs]


# -- the command line's view of a mergekit recipe ----------------------------------------------


def mergekit_args(args: list[str]) -> list[str]:
    """`--config RECIPE` naming a mergekit recipe (it has `merge_method`) -> `--mergekit_config RECIPE`,
    so `lsmerge merge-weights --config configs/merge_weights/mergekit_slerp.yml` runs it too."""
    import yaml

    out, i = [], 0
    while i < len(args):
        a = args[i]
        path = args[i + 1] if a == "--config" and i + 1 < len(args) else a.split("=", 1)[1] if a.startswith("--config=") else None
        step = 2 if a == "--config" else 1
        if path is not None and Path(path).is_file():
            try:
                raw = yaml.safe_load(Path(path).read_text())
            except (yaml.YAMLError, UnicodeDecodeError):
                raw = None
            if isinstance(raw, dict) and "merge_method" in raw:
                out += ["--mergekit_config", path]
                i += step
                continue
        out += args[i:i + step]
        i += step
    return out


def mergekit_plan(config: str) -> tuple[dict, list[str]]:
    """What a mergekit recipe runs, in the native fields (method, models, base_model, parameters,
    dtype), and comment lines for what they cannot hold (per-slice and per-model parameters)."""
    from lsmerge.merge.weight.mergekit_config import read_mergekit_config

    recipe = read_mergekit_config(config)
    fields = {"method": recipe.method, "models": list(recipe.models), "base_model": recipe.base_model,
              "parameters": recipe.parameters or None, "dtype": recipe.output_dtype}
    ranges = [[list(src.layer_range) if src.layer_range else "all" for src in s.sources] for s in recipe.slices]
    notes = [f"mergekit recipe {config}: merge_method {recipe.method}, inputs in lsmerge's order {recipe.models}"
             + (f", base_model {recipe.base_model}" if recipe.base_model else "") + "."]
    for i, s in enumerate(recipe.slices):
        where = f"layer ranges {ranges[i]}"
        if recipe.form == "slices":
            notes.append(f"slices[{i}]: " + ", ".join(f"{src.model} layers {list(src.layer_range)}" for src in s.sources))
        if s.parameters:
            notes.append(f"slices[{i}] ({where}) parameters: {s.parameters}")
        for src in s.sources:
            if src.parameters:
                notes.append(f"slices[{i}] ({where}) {src.model} parameters: {src.parameters}")
    notes.append("The recipe (mergekit_config) is what runs; the fields below show it in lsmerge's terms.")
    return fields, notes
