"""The lm-evaluation-harness section of a results plan: `lsmerge evaluate --tasks` on chosen rows.

    harness:
      tasks: [continuation_shakespeare, continuation_python]   # any name `lsmerge evaluate --tasks` takes
      rows: [base, expert 1, weight linear 0.5, hidden SLERP]   # checkpoint rows and hidden-state rows
      task_items: 50                    # items per continuation task (default 100)
      batch_size: 8

Each row runs as one `lsmerge evaluate` on its checkpoint (`--models`) or its hidden-state mix
(`--mixes`, the residual stream mixed during the forward, so representation merges are scored like
weight merges), on the plan's eval split and corpora root, seeded with the plan's seed; the
result is cached under `<out_dir>/harness/<row>.json`, keyed by the row's model and the settings.
The section reports each metric as value ± lm-eval's standard error; no better / worse is claimed
from it (no paired interval; the perplexity tables carry those).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import write_text_atomic

KEYS = {"tasks", "rows", "task_items", "task_choices", "batch_size"}


def check_harness(spec, row_names: set[str], where: str) -> dict:
    """The plan's `harness` section, checked before any work: tasks and rows non-empty lists, rows
    known, sizes positive integers."""
    if not isinstance(spec, dict) or set(spec) - KEYS or not {"tasks", "rows"} <= set(spec):
        raise LsMergeError(f"{where}: harness must be {{tasks: [...], rows: [...]}} with optional task_items, task_choices, "
                           f"batch_size; got {spec!r}.")
    for key in ("tasks", "rows"):
        if not isinstance(spec[key], list) or not spec[key] or not all(isinstance(v, str) for v in spec[key]):
            raise LsMergeError(f"{where}: harness.{key} must be a non-empty list of names, got {spec[key]!r}.")
    unknown = [r for r in spec["rows"] if r not in row_names]
    if unknown:
        raise LsMergeError(f"{where}: harness.rows: no row named {unknown[0]!r}.")
    for key in ("task_items", "task_choices", "batch_size"):
        v = spec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "task_choices" else 1)):
            raise LsMergeError(f"{where}: harness.{key} must be a positive integer, got {v!r}.")
    return spec


def check_tasks(spec: dict, settings: dict) -> None:
    """Before any work of a run (after the corpora are fetched): lm-eval is installed and every task
    name resolves (`lsmerge evaluate --tasks`'s own checks: unknown names are listed with the available ones)."""
    from lsmerge.evaluate.harness import require_lm_eval
    from lsmerge.evaluate.harness_command import resolve_task_names

    require_lm_eval()
    resolve_task_names(list(spec["tasks"]), str(settings["root"]), settings["split"], None)


def evaluate_argv(spec: dict, name: str, built: dict, settings: dict, seed: int, out: Path) -> list[str]:
    """`lsmerge evaluate` arguments for one row (a checkpoint, or a hidden-state mix labelled `name`)."""
    argv = ["evaluate", "--tasks", json.dumps(spec["tasks"]), "--split", settings["split"], "--root", str(settings["root"]),
            "--task_items", str(spec.get("task_items", 100)), "--task_choices", str(spec.get("task_choices", 4)),
            "--batch_size", str(spec.get("batch_size", 8)), "--seed", str(seed), "--progress", "false", "--out", str(out)]
    h = built.get("hidden")
    if h:
        mix = {"base": h["base"], "fine_tuned": [h["source"]], "operator": h["operator"], "mix_layer": int(h["mix_layer"]),
               "beta": float(h["beta"]), "label": name}
        return [*argv, "--mixes", json.dumps([mix])]
    return [*argv, "--models", json.dumps([built["path"]])]


def run_harness(spec: dict, built: dict[str, dict], slugs: dict[str, str], settings: dict, seed: int, out_dir: Path,
                run: Callable[[list[str], Path], float], say=print, partial: bool = False, not_cached=KeyError) -> list[dict]:
    """One cached `lsmerge evaluate` per row of `spec["rows"]`: [{"row", "scores": [TaskScore dicts], "seconds"}].
    `run(argv, log)` runs lsmerge and returns wall seconds; a partial run raises `not_cached` for a missing result."""
    results = []
    for name in spec["rows"]:
        if name not in built:
            raise not_cached(name)
        stem = out_dir / "harness" / slugs[name]
        argv = evaluate_argv(spec, name, built[name], settings, seed, stem)
        key = hashlib.sha256(json.dumps([built[name]["key"], argv], sort_keys=True).encode()).hexdigest()[:16]
        stamp, result = stem.parent / f"{stem.name}.stamp.json", stem.parent / f"{stem.name}.json"  # slugs hold dots
        try:
            cached = json.loads(stamp.read_text())
        except (OSError, ValueError):
            cached = None
        if not (cached and cached.get("key") == key and result.is_file()):
            if partial:
                raise not_cached(f"harness {name}")
            say(f"harness {name}: lsmerge {' '.join(argv)}")
            stem.parent.mkdir(parents=True, exist_ok=True)
            seconds = run(argv, out_dir / "logs" / f"harness-{slugs[name]}.log")
            write_text_atomic(stamp, json.dumps({"key": key, "seconds": seconds}) + "\n")
            cached = {"seconds": seconds}
        scores = json.loads(result.read_text())["results"]
        results.append({"row": name, "scores": scores, "seconds": cached.get("seconds")})
    return results


def harness_lines(spec: dict, results: list[dict]) -> list[str]:
    """Markdown: one row per plan row, one column per task / metric, value ± stderr; the items scored."""
    columns = list(dict.fromkeys((s["task"], s["metric"]) for r in results for s in r["scores"]))
    n = {s["task"]: s["n_items"] for r in results for s in r["scores"]}
    head = "| row | " + " | ".join(f"{t} {m}" for t, m in columns) + " |"
    lines = [f"`lsmerge evaluate --tasks` (lm-evaluation-harness, zero-shot multiple choice) on the plan's held-out split: "
             + ", ".join(f"{t} ({n[t]} items, {spec.get('task_choices', 4)} choices, chance {1 / spec.get('task_choices', 4):.2f})"
                         for t in dict.fromkeys(t for t, _ in columns))
             + ". Value ± lm-eval's standard error (not a paired interval: no row is called better or worse from this table).",
             "", head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        cell = {(s["task"], s["metric"]): f"{s['value']:.3f}" + (f" ± {s['stderr']:.3f}" if s["stderr"] is not None else "")
                for s in r["scores"]}
        lines.append(f"| {r['row']} | " + " | ".join(cell.get(c, "") for c in columns) + " |")
    return lines
