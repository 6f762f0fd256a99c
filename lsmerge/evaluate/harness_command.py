"""`lsmerge evaluate --tasks`: lm-evaluation-harness tasks on checkpoints and hidden-state mixes.

Task names resolve, in order, to: `continuation_<corpus>` for each corpus prepared under
`<root>/corpora/` with the chosen split (built on demand by `harness_tasks`, cached), the tasks
of the YAML files in `task_dir`, and lm-eval's own tasks (which may download their data).
Every check (names, task rows, models, mixes, output paths, lm-eval installed) runs before a
task is built or a model loaded; the table is printed and written as JSON and CSV at the end.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.harness import (INSTALL_HINT, HiddenMix, TaskScore, known_tasks, make_lm, require_lm_eval, run_tasks,
                                      task_manager, task_scores)  # fmt: skip
from lsmerge.evaluate.harness_tasks import (TASK_PREFIX, ContinuationSpec, build_continuation_task, check_task_rows,
                                            local_corpora, read_task_configs)  # fmt: skip
from lsmerge.evaluate.inputs import check_model_dir, output_paths, tokenizer_key
from lsmerge.io.atomic import atomic_paths
from lsmerge.io.hf import load_causal_lm, load_tokenizer, resolve_model
from lsmerge.merge.hidden.hooks import check_mix_layer
from lsmerge.merge.hidden.mixer import HiddenStateMixer, MixedForward, MixSpec
from lsmerge.torch_options import resolve_device, resolve_dtype


def resolve_task_names(tasks: list[str], root: str, split: str, task_dir: str | None) -> tuple[list[str], dict, bool]:
    """(corpora to build continuation tasks from, {user task: (yaml, config)}, whether lm-eval's own
    tasks are needed). Raises LsMergeError for an unknown name, listing the available ones."""
    corpora = local_corpora(root, split)
    user = read_task_configs(task_dir) if task_dir else {}
    local = {TASK_PREFIX + c: c for c in corpora}
    unknown = [t for t in tasks if t not in local and t not in user]
    if unknown:
        try:
            own = set(known_tasks())
        except LsMergeError:
            own = None
        missing = [t for t in unknown if own is None or t not in own]
        if missing:
            available = [*local, *user]
            beyond = (f" or one of lm-eval's {len(own)} own tasks (`lm-eval ls tasks`)" if own is not None
                      else f"; lm-eval's own tasks need lm-evaluation-harness: {INSTALL_HINT}")  # fmt: skip
            raise LsMergeError(
                f"unknown task {missing[0]!r}. Available here: {', '.join(available) or 'none'} (continuation_<corpus> "
                f"for each corpus under {root}/corpora with a {split} split, made by `lsmerge fetch`; the tasks of "
                f"--task_dir){beyond}."
            )
    return [local[t] for t in tasks if t in local], {t: user[t] for t in tasks if t in user and t not in local}, bool(unknown)


def _num_layers(path: Path) -> int | None:
    config = json.loads((path / "config.json").read_text())
    n = config.get("num_hidden_layers", (config.get("text_config") or {}).get("num_hidden_layers"))
    return n if isinstance(n, int) else None


def _check_mix(mix: HiddenMix) -> tuple[MixSpec, Path, list[Path], str]:
    """(spec, base path, fine-tuned paths, row label) of a mix, every check done on files only."""
    spec = MixSpec(mix.operator, mix.mix_layer, mix.beta, "all", tuple(mix.weights) if mix.weights else None)
    spec.check_sources(len(mix.fine_tuned))
    if spec.op.sources == "none":
        raise LsMergeError(f"operator {mix.operator!r} steers with deltas; mixes here take lerp, slerp or mean.")
    base = resolve_model(mix.base)
    fine_tuned = [resolve_model(m) for m in mix.fine_tuned]
    for p in (base, *fine_tuned):
        check_model_dir(p)
        if tokenizer_key(p) != tokenizer_key(base):
            raise LsMergeError(f"{p} has other tokenizer files than the mix's base {base}; a mix needs one tokenizer.")
    n = _num_layers(base)
    if n is not None:
        check_mix_layer(mix.mix_layer, n, what=str(base))
    label = mix.label or f"{mix.operator}({'+'.join(p.name for p in (base, *fine_tuned))})@{mix.mix_layer},beta={mix.beta:g}"
    return spec, base, fine_tuned, label


def format_scores(scores: list[TaskScore]) -> str:
    """One row per model, one column per task/metric: `value ± stderr`."""
    models = list(dict.fromkeys(s.model for s in scores))
    columns = list(dict.fromkeys(f"{s.task}/{s.metric}" for s in scores))
    cell = {(s.model, f"{s.task}/{s.metric}"): f"{s.value:.4f}" + (f" ± {s.stderr:.4f}" if s.stderr is not None else "")
            for s in scores}  # fmt: skip
    width0 = max(len("model"), *(len(m) for m in models))
    widths = [max(len(c), 17) for c in columns]
    lines = ["  ".join([f"{'model':<{width0}}", *(f"{c:>{w}}" for c, w in zip(columns, widths))]),
             "  ".join(["-" * width0, *("-" * w for w in widths)])]  # fmt: skip
    for m in models:
        lines.append("  ".join([f"{m:<{width0}}", *(f"{cell.get((m, c), '-'):>{w}}" for c, w in zip(columns, widths))]))
    return "\n".join(lines)


def write_scores(scores: list[TaskScore], settings: dict, out: str) -> tuple[Path, Path]:
    """`<out>.json` ({"settings", "results"}: every TaskScore, per-item values included) and `<out>.csv`
    (the same without per-item values; a folder: lm_eval.json / .csv), both or neither."""
    json_path, csv_path = output_paths(out, stem="lm_eval")
    rows = [asdict(s) for s in scores]
    buf = io.StringIO()
    columns = [f for f in TaskScore.__dataclass_fields__ if f != "items"]  # per-item values: the JSON only
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_paths(json_path, csv_path) as (json_tmp, csv_tmp):
        json_tmp.write_text(json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")
        csv_tmp.write_text(buf.getvalue())
    return json_path, csv_path


def evaluate_tasks(*, models: list[str], mixes: list[HiddenMix], tasks: list[str], task_dir: str | None, root: str,
                   split: str, spec: ContinuationSpec, task_cache: str | None, limit: int | None, batch_size: int,
                   device: str, dtype: str, out: str | None, seed: int) -> list[TaskScore]:  # fmt: skip
    """Run lm-eval `tasks` on each checkpoint of `models` and each hidden-state mix of `mixes`
    (see `perplexity_command.evaluate` for the arguments); returns one TaskScore per metric."""
    # -- every check before any work -------------------------------------------------------
    if not models and not mixes:
        raise LsMergeError("no models given; pass --models DIR [DIR ...] and/or --mixes (hidden-state mixes).")
    if batch_size < 1:
        raise LsMergeError(f"batch_size={batch_size} must be at least 1.")
    if limit is not None and limit < 1:
        raise LsMergeError(f"task_limit={limit} must be at least 1 (or left unset to score every item).")
    spec.check()
    corpora, user_tasks, own_tasks = resolve_task_names(list(dict.fromkeys(tasks)), root, split, task_dir)
    for name, (yaml_path, config) in user_tasks.items():
        check_task_rows(name, yaml_path, config)
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    model_paths = [resolve_model(m) for m in models]
    for p in model_paths:
        check_model_dir(p)
    checked_mixes = [_check_mix(m) for m in mixes]
    if out is not None:
        for p in output_paths(out, stem="lm_eval"):
            if p.exists() and not p.is_file():
                raise LsMergeError(f"output {p} exists and is not a file. Choose another --out.")
    require_lm_eval()

    # -- run ---------------------------------------------------------------------------------
    cache = Path(task_cache) if task_cache else Path(root) / "cache" / "lm_eval_tasks"
    include = [str(build_continuation_task(root, c, split, spec, cache)) for c in corpora]
    include += list(dict.fromkeys(str(y.parent.resolve()) for y, _ in user_tasks.values()))
    names = list(dict.fromkeys(tasks))
    manager = task_manager(include, own_tasks=own_tasks)
    dtype_name, device_name = str(torch_dtype).removeprefix("torch."), str(torch_device)
    labels = [p.name for p in model_paths]
    labels = labels if len(set(labels)) == len(labels) else [str(p) for p in model_paths]
    scores: list[TaskScore] = []
    for path, label in zip(model_paths, labels):
        model = load_causal_lm(path, dtype_name, device_name, safetensors_only=False)
        lm = make_lm(model, load_tokenizer(path), batch_size=batch_size)
        scores += task_scores(run_tasks(lm, names, manager, limit=limit, seed=seed), label, str(path))
        del lm, model
    for mix_spec, base_path, ft_paths, label in checked_mixes:
        base = load_causal_lm(base_path, dtype_name, device_name, safetensors_only=False)
        sources = [load_causal_lm(p, dtype_name, device_name, safetensors_only=False) for p in ft_paths]
        with HiddenStateMixer(base, mix_spec) as mixer:
            lm = make_lm(base, load_tokenizer(base_path), batch_size=batch_size, forward=MixedForward(base, sources, mixer))
            results = run_tasks(lm, names, manager, limit=limit, seed=seed)
        scores += task_scores(results, label, str(base_path))
        del lm, base, sources
    print(format_scores(scores))
    if out is not None:
        settings = {"tasks": names, "split": split, "task_spec": asdict(spec), "limit": limit, "batch_size": batch_size,
                    "dtype": dtype_name, "seed": seed, "mixes": [asdict(m) for m in mixes]}  # fmt: skip
        json_path, csv_path = write_scores(scores, settings, out)
        print(f"wrote {json_path} and {csv_path}")
    return scores
