"""What a results run costs: each step's wall seconds as recorded when it ran, summed by kind.

Every step of `lsmerge.results.pipeline.Runner` keeps the wall time it took in its cache record
(prepare steps, VAE fits, row builds, row scoring, sweep / inspect / generations / judge); a
cached step keeps the time of the run that did the work. The ledger sums them:

    total = sum over steps s of seconds(s)        (steps without a record are listed, not guessed)

A score reused from a byte-identical checkpoint costs 0 s. The sum is a measured estimate of a
run from scratch on the machine the steps ran on, under whatever load each step saw; it is not
the time of one uninterrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lsmerge.errors import LsMergeError

KINDS = ("prepare (fetch, experts, statistics)", "VAE fits", "row builds", "row scoring", "sweep, inspect, judge, harness")


@dataclass(frozen=True)
class StepCost:
    """One step of a run: its kind (one of KINDS), a label, and its recorded wall seconds (None: not recorded)."""

    kind: str
    label: str
    seconds: float | None


def field_seconds(files: list[str], field: str) -> float | None:
    """Sum of the dotted `field` (e.g. training.train_seconds) over JSON `files`; None when a file or
    the field is missing (a step that caches its own work reports its cost through such records)."""
    total = 0.0
    for f in files:
        try:
            value = json.loads(Path(f).read_text())
        except (OSError, ValueError):
            return None
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        total += float(value)
    return total


def check_cost_records(spec, where: str) -> dict:
    """A prepare step's `cost_records: {files: [JSON, ...], field: dotted.key}`, checked."""
    if not isinstance(spec, dict) or set(spec) != {"files", "field"} or not isinstance(spec["field"], str) \
            or not isinstance(spec["files"], list) or not spec["files"] or not all(isinstance(f, str) for f in spec["files"]):
        raise LsMergeError(f"{where}: cost_records must be {{files: [JSON files], field: dotted.key}} (the records the "
                           f"step writes with its own training time), got {spec!r}.")
    return spec


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def ledger_lines(costs: list[StepCost], budget_hours: float | None = None) -> list[str]:
    """Markdown: a table of steps, recorded minutes and unrecorded steps per kind, the total, and the
    steps without a record by name."""
    lines = ["| steps | count | recorded wall time (min) | without a record |", "| --- | --- | --- | --- |"]
    total, unknown = 0.0, []
    for kind in KINDS:
        steps = [c for c in costs if c.kind == kind]
        if not steps:
            continue
        known = sum(c.seconds for c in steps if c.seconds is not None)
        missing = [c for c in steps if c.seconds is None]
        total += known
        unknown += missing
        lines.append(f"| {kind} | {len(steps)} | {_minutes(known)} | {len(missing) or ''} |")
    lines.append(f"| **all** | {len(costs)} | **{_minutes(total)}** ({total / 3600:.2f} h) | {len(unknown) or ''} |")
    lines += ["", f"Sum of the recorded steps: {total / 3600:.2f} h. Each step's wall time is the one it took when it ran "
              "(cached steps keep the time of the run that did the work, on this machine under the load it had then); "
              "a score reused from a byte-identical checkpoint counts 0. It is a measured estimate of a run from scratch, "
              "not the time of one uninterrupted run."]
    if budget_hours is not None:
        verdict = "within" if total <= budget_hours * 3600 and not unknown else \
            "over" if total > budget_hours * 3600 else "not decidable (steps without a record)"
        lines[-1] += f" Against the {budget_hours:g} h target: {verdict}."
    if unknown:
        lines += ["", "Steps without a recorded time (their output was already there: made by another plan sharing the cache, by hand, or before times were kept): "
                  + "; ".join(f"{c.label} ({c.kind})" for c in unknown) + "."]
    return lines
