"""The lm-evaluation-harness section of a results plan: `lsmerge evaluate --tasks` on chosen rows.

    harness:
      tasks: [continuation_shakespeare, continuation_python]   # any name `lsmerge evaluate --tasks` takes
      rows: [base, expert 1, weight linear 0.5, hidden SLERP]   # checkpoint rows and hidden-state rows
      reference: weight linear 0.5      # the row every other is compared with (default: the first row)
      task_items: 50                    # items per continuation task (default 100)
      batch_size: 8

Each row runs as one `lsmerge evaluate` on its checkpoint (`--models`) or its hidden-state mix
(`--mixes`, the residual stream mixed during the forward, so representation merges are scored like
weight merges), on the plan's eval split and corpora root, seeded with the plan's seed; the
result is cached under `<out_dir>/harness/<row>.json`, keyed by the row's model and the settings
(a result written without each item's metric, before they were kept, is redone).

The section reports each metric as value ± lm-eval's standard error, and each row's difference to
the reference with a paired bootstrap interval over items: every row answers the same items, so
with a_r[i] the metric on item i (accuracy: 0 or 1),

    d = mean_i a_row[i] - mean_i a_ref[i],   resampled over items with the same draws for both rows

(`lsmerge.evaluate.intervals.paired_difference` with one "token" per item; the plan's bootstrap
settings and seed, one resampling per task). Higher is better for these metrics: "better" when the
whole interval is above 0, "worse" when below, else "level".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.intervals import Interval, WindowScores, domain_seed, paired_difference
from lsmerge.io.atomic import write_text_atomic

KEYS = {"tasks", "rows", "reference", "task_items", "task_choices", "batch_size"}


def check_harness(spec, row_names: set[str], where: str) -> dict:
    """The plan's `harness` section, checked before any work: tasks and rows non-empty lists, rows
    known, sizes positive integers."""
    if not isinstance(spec, dict) or set(spec) - KEYS or not {"tasks", "rows"} <= set(spec):
        raise LsMergeError(f"{where}: harness must be {{tasks: [...], rows: [...]}} with optional reference, task_items, "
                           f"task_choices, batch_size; got {spec!r}.")
    for key in ("tasks", "rows"):
        if not isinstance(spec[key], list) or not spec[key] or not all(isinstance(v, str) for v in spec[key]):
            raise LsMergeError(f"{where}: harness.{key} must be a non-empty list of names, got {spec[key]!r}.")
    unknown = [r for r in spec["rows"] if r not in row_names]
    if unknown:
        raise LsMergeError(f"{where}: harness.rows: no row named {unknown[0]!r}.")
    if "reference" in spec and spec["reference"] not in spec["rows"]:
        raise LsMergeError(f"{where}: harness.reference {spec['reference']!r} is not one of harness.rows {spec['rows']}; "
                           "name one of them (or leave it out: the first row).")
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


def _itemised(result: Path) -> list[dict] | None:
    """The scores of a result whose every score carries its per-item values (`items`, None for a metric
    lm-eval gives no per-item number for); None for a missing result or one written before they were kept."""
    try:
        scores = json.loads(result.read_text())["results"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return scores if scores and all("items" in s for s in scores) else None


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
        scores = _itemised(result) if cached and cached.get("key") == key else None
        if scores is None:
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


def paired_items(row: dict, ref: dict, *, resamples: int, confidence: float, seed: int) -> Interval | None:
    """Interval of mean(row items) - mean(reference items) over the same items (paired bootstrap, seeded
    per task); None when either score lacks per-item values. Different item counts are an error."""
    if row.get("items") is None or ref.get("items") is None:
        return None
    if len(row["items"]) != len(ref["items"]):
        raise LsMergeError(f"harness task {row['task']}: {row['model']} answered {len(row['items'])} items and the reference "
                           f"{ref['model']} {len(ref['items'])}; paired intervals need the same items (same task_items and split).")
    ones = [1.0] * len(row["items"])
    return paired_difference(WindowScores.of(row["items"], ones), WindowScores.of(ref["items"], ones),
                             resamples=resamples, seed=domain_seed(seed, row["task"]), confidence=confidence)  # fmt: skip


def _verdict(iv: Interval) -> str:
    """Higher is better for these metrics (the interval is of row - reference)."""
    return "better" if iv.low > 0 else "worse" if iv.high < 0 else "level"


def harness_lines(spec: dict, results: list[dict], boot: dict, seed: int = 0) -> list[str]:
    """Markdown: one row per plan row, one column per task / metric, value ± stderr, and each row's paired
    interval of its difference to the reference row (better / level / worse from the interval only);
    `boot`: the plan's bootstrap settings with their defaults ({resamples, confidence})."""
    columns = list(dict.fromkeys((s["task"], s["metric"]) for r in results for s in r["scores"]))
    n = {s["task"]: s["n_items"] for r in results for s in r["scores"]}
    ref_name = spec.get("reference", spec["rows"][0])
    ref = next(r for r in results if r["row"] == ref_name)
    ref_scores = {(s["task"], s["metric"]): s for s in ref["scores"]}
    pct = f"{100 * boot['confidence']:g} %"
    head = "| row | " + " | ".join(f"{t} {m}" for t, m in columns) + " |"
    lines = [f"`lsmerge evaluate --tasks` (lm-evaluation-harness, zero-shot multiple choice) on the plan's held-out split: "
             + ", ".join(f"{t} ({n[t]} items, {spec.get('task_choices', 4)} choices, chance {1 / spec.get('task_choices', 4):.2f})"
                         for t in dict.fromkeys(t for t, _ in columns))
             + f". Each cell: value ± lm-eval's standard error; below it, the difference to **{ref_name}** on the same items with "
             f"its {pct} paired bootstrap interval over items ({boot['resamples']} resamples) and the verdict read from that "
             "interval only (higher is better).",
             "", head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        cells = []
        for s in (next((s for s in r["scores"] if (s["task"], s["metric"]) == c), None) for c in columns):
            if s is None:
                cells.append("")
                continue
            text = f"{s['value']:.3f}" + (f" ± {s['stderr']:.3f}" if s["stderr"] is not None else "")
            ref_s = ref_scores.get((s["task"], s["metric"]))
            if r["row"] == ref_name:
                text += "<br>reference"
            elif ref_s and (iv := paired_items(s, ref_s, resamples=boot["resamples"], confidence=boot["confidence"], seed=seed)):
                text += f"<br>{iv.estimate:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}] {_verdict(iv)}"
            cells.append(text)
        lines.append(f"| {r['row']} | " + " | ".join(cells) + " |")
    return lines
