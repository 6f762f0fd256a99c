"""The results plan: what `scripts/reproduce.py` builds, merges, scores and plots.

A plan is a YAML file (`configs/results/smollm2.yaml`); every row names the command and the
shipped config that produce its model, so the table can state them. Strings may refer to
named paths as `{name}`: the plan's `models` and, for each VAE run, `{vae:<run name>}` (its
`last.ckpt`).

    out_dir: checkpoints/results        # merged models, scores, generations (cached)
    results: RESULTS.md                 # the table
    plots_dir: results                  # PNG plots
    seed: 0
    models: {base: checkpoints/base/smollm2-135m-instruct, ...}
    prepare:                            # commands run when `creates` (a path or a list) is missing (always: true runs
                                        # them every time: for commands that skip finished work
                                        # themselves and must check it, e.g. experts of a budget)
      - {argv: [lsmerge, fetch], creates: checkpoints/base/smollm2-135m-instruct/config.json}
                                        # cost_records: {files: [JSON], field: training.train_seconds}: the
                                        # step's cost read from records it writes (a step that skips its own
                                        # finished work); otherwise its wall time when it last did the work
    time_budget_hours: 3                # the cost section says whether the recorded steps sum within it
    vae_runs:                           # `lsmerge fit` of a derived config (lsmerge.results.vae_runs)
      - {name: r2-30min, base_config: configs/vae/smollm2_mlp.yaml, ratio: 2, minutes: 30}
      - {name: r1w, base_config: ..., ratio: 1, minutes: 8,      # `overrides`: dotted keys of the fit
         overrides: {data.importance: FILE, model.output_weighting: true}}   # config ({names} allowed)
    eval: {corpora: [shakespeare, python], split: test, max_tokens: 16384, max_length: 512, stride: 512}
                                        # max_tokens: per corpus, all of a smaller split (default 16384);
                                        # min_tokens: fewer scored tokens in a corpus is an error
    bootstrap: {resamples: 2000, confidence: 0.95}   # paired intervals over windows (seed: the plan's)
    domain_experts: {shakespeare: expert 1, python: expert 2}   # each corpus's own expert (a row name):
                                        # sections holding these rows get the summary column
    references: {experts: best-weight-space, reconstruction: base}   # the row each section is compared
                                        # with (default: its first row); best-weight-space: the section's
                                        # best non-control merge-weights row
    weight_error: {reconstruction: {kinds: [mlp], importance: FILE}}   # a column with each row's relative
                                        # weight error against the group's first row (or `against:`), and
                                        # output-weighted by h_j with `importance` (lsmerge importance)
    groups: {reconstruction: "1. Reconstruction", ...}   # section titles, in order
    rows:
      - {group: reconstruction, name: base, model: "{base}", control: input}   # control: input | zero | codec
                                                                               # | reference (lsmerge perturb)
      - {group: reconstruction, name: VAE ratio 2, command: export, args: {vae: "{vae:r2-30min}", model: "{base}"}}
      - {group: reconstruction, name: iid 2.4 %, command: perturb, control: reference,
         args: {model: "{base}", perturbation: iid, level: 0.024}}
      - {group: experts, name: TIES, command: merge-weights, config: configs/merge_weights/ties.yaml,
         args: {models: ["{expert1}", "{expert2}"]}, curve: null}
      - {group: experts, name: hidden SLERP, hidden: {base: "{expert1}", source: "{expert2}",
         operator: slerp, mix_layer: 24, beta: 0.5}}
    sweep: {base: "{base}", fine_tuned: ["{expert1}"], text: ..., layers: [...], ratios: [...]}
    inspect: ["{base}", "{gemma}"]     # kurtosis-per-layer figures
    judge: {model: "{base}", prompts: FILE, max_new_tokens: 48, pairs: [[row A, row B], ...]}
    harness: {tasks: [continuation_shakespeare], rows: [base, ...], task_items: 50}   # lm-eval on rows
    notes: "markdown"                   # printed under "Notes" as written
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lsmerge.errors import LsMergeError
from lsmerge.results.cost import check_cost_records
from lsmerge.results.harness_rows import check_harness
from lsmerge.results.vae_runs import derive_fit_config

ROW_COMMANDS = ("merge", "merge-weights", "export", "perturb")
HIDDEN_KEYS = {"base", "source", "operator", "mix_layer", "beta"}
#: control rows: an input as it is; a curve at lambda / t / beta = 0; a codec's encode-decode without merging;
#: a known perturbation (`lsmerge perturb`: the noise reference a codec's error is read against)
CONTROLS = {"input": "input as it is", "zero": "lambda / t / beta = 0", "codec": "encode-decode, no merge",
            "reference": "known perturbation, the noise reference"}
BEST_WEIGHT_SPACE = "best-weight-space"
DEFAULT_BOOTSTRAP = {"resamples": 2000, "confidence": 0.95}
PREPARE_KEYS = {"argv", "creates", "always", "cost_records"}


@dataclass
class Row:
    """One line of the table: a model to score (an existing checkpoint, one a command
    writes, or a hidden-state mix of two checkpoints)."""

    group: str
    name: str
    model: str | None = None
    command: str | None = None
    config: str | None = None
    args: dict = field(default_factory=dict)
    hidden: dict | None = None
    curve: str | None = None  # rows of one curve are plotted as perplexity against `x`
    x: float | None = None
    seed: int | None = None
    control: str | None = None  # a key of CONTROLS

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "-", f"{self.group}-{self.name}").strip("-").lower()


@dataclass
class VAERun:
    name: str
    base_config: str
    ratio: float
    minutes: float
    steps_per_minute: int = 500
    layers: list[int] | None = None
    overrides: dict = field(default_factory=dict)  # dotted config keys set on the derived config, e.g.
    # {data.importance: FILE, model.output_weighting: true}


@dataclass
class Plan:
    out_dir: str
    results: str
    plots_dir: str
    eval: dict
    rows: list[Row]
    seed: int = 0
    models: dict[str, str] = field(default_factory=dict)
    prepare: list[dict] = field(default_factory=list)
    vae_runs: list[VAERun] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    sweep: dict | None = None
    inspect: list[str] = field(default_factory=list)
    judge: dict | None = None
    title: str = "Results"
    notes: str = ""  # markdown appended to the report as is (caveats that hold whatever the numbers)
    vae_root: str | None = None  # default <out_dir>/vae
    bootstrap: dict = field(default_factory=dict)  # resamples, confidence (DEFAULT_BOOTSTRAP)
    domain_experts: dict[str, str] = field(default_factory=dict)  # corpus -> row name of its own expert
    references: dict[str, str] = field(default_factory=dict)  # group -> row name or BEST_WEIGHT_SPACE
    # group -> {against: row name (default: the group's first row), kinds: [mlp], importance: FILE}: each
    # row's relative weight error against that row (and output-weighted with the importance statistics)
    weight_error: dict[str, dict] = field(default_factory=dict)
    harness: dict | None = None  # lm-eval tasks on chosen rows (lsmerge.results.harness_rows)
    time_budget_hours: float | None = None  # the cost section states whether the recorded steps sum within it

    def vae_dir(self, name: str) -> Path:
        return Path(self.vae_root or Path(self.out_dir) / "vae") / name

    def names(self) -> dict[str, str]:
        """Placeholder values: the plan's models and `vae:<run>` checkpoints."""
        out = dict(self.models)
        out.update({f"vae:{r.name}": str(self.vae_dir(r.name) / "last.ckpt") for r in self.vae_runs})
        return out

    def first_row(self, group: str) -> Row:
        return next(r for r in self.rows if r.group == group)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise LsMergeError(f"results plan: no row named {name!r} (rows: {[r.name for r in self.rows]}).")


def cli_value(value: Any) -> str:
    """A config value as a command-line argument: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


_PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_:.\-]+)\}")


def substitute(value: Any, names: dict[str, str]) -> Any:
    """`value` with every `{name}` in its strings replaced (lists and dicts recursively)."""
    if isinstance(value, str):
        def one(m: re.Match) -> str:
            if m.group(1) not in names:
                raise LsMergeError(f"results plan: unknown name {{{m.group(1)}}}; define it under models: (known: {sorted(names)}).")
            return names[m.group(1)]

        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    return value


def _check_row(r: Row, where: str) -> None:
    sources = [k for k in ("model", "command", "hidden") if getattr(r, k) is not None]
    if len(sources) != 1:
        raise LsMergeError(f"{where}: give exactly one of model, command or hidden (got {sources or 'none'}).")
    if r.command is not None and r.command not in ROW_COMMANDS:
        raise LsMergeError(f"{where}: command {r.command!r} is not one of {list(ROW_COMMANDS)}.")
    if r.config is not None and r.command is None:
        raise LsMergeError(f"{where}: config is only used with command.")
    if r.config is not None and not Path(r.config).is_file():
        raise LsMergeError(f"{where}: config {r.config} does not exist.")
    if "out" in r.args:
        raise LsMergeError(f"{where}: args must not set out; the pipeline chooses the output folder.")
    if r.hidden is not None and set(r.hidden) != HIDDEN_KEYS:
        raise LsMergeError(f"{where}: hidden needs exactly the keys {sorted(HIDDEN_KEYS)}, got {sorted(r.hidden)}.")
    if (r.curve is None) != (r.x is None):
        raise LsMergeError(f"{where}: curve and x go together.")
    if r.control is not None and r.control not in CONTROLS:
        raise LsMergeError(f"{where}: control {r.control!r} is not one of {sorted(CONTROLS)}.")


WEIGHT_ERROR_KEYS = {"against", "kinds", "importance"}


def prepare_creates(step: dict) -> list[str]:
    """A prepare step's `creates`: one path or a list of them (the step runs when any is missing)."""
    return step["creates"] if isinstance(step["creates"], list) else [step["creates"]]


def _check_weight_error(plan: Plan, p: Path) -> None:
    """weight_error names groups of the plan, known keys and a row of the group that comes before the
    rows it is compared with (it is built first)."""
    for group, spec in plan.weight_error.items():
        where = f"results plan {p}: weight_error.{group}"
        if not isinstance(spec, dict) or set(spec) - WEIGHT_ERROR_KEYS:
            raise LsMergeError(f"{where}: give a mapping with keys among {sorted(WEIGHT_ERROR_KEYS)}, got {spec!r}.")
        rows = [r for r in plan.rows if r.group == group]
        if not rows:
            raise LsMergeError(f"{where}: no row has group {group!r} (groups: {sorted({r.group for r in plan.rows})}).")
        against = spec.get("against") or rows[0].name
        if against not in [r.name for r in rows]:
            raise LsMergeError(f"{where}: against {against!r} is not a row of that group.")
        ref = next(r for r in rows if r.name == against)
        if ref.hidden is not None:
            raise LsMergeError(f"{where}: against {against!r} is a hidden-state row (no weights); name a checkpoint row.")
        for r in plan.rows:
            if r.group == group and r is not ref and plan.rows.index(r) < plan.rows.index(ref):
                raise LsMergeError(f"{where}: against {against!r} must come before the group's other rows (row {r.name!r} "
                                   "is listed first); move it up.")


def _check_evaluation(plan: Plan, p: Path) -> None:
    """The bootstrap settings, each corpus's own expert and each section's reference name real things."""
    unknown = set(plan.bootstrap) - set(DEFAULT_BOOTSTRAP)
    if unknown:
        raise LsMergeError(f"results plan {p}: bootstrap: unknown keys {sorted(unknown)} (known: {sorted(DEFAULT_BOOTSTRAP)}).")
    boot = {**DEFAULT_BOOTSTRAP, **plan.bootstrap}
    if not (isinstance(boot["resamples"], int) and boot["resamples"] >= 1 and 0 < boot["confidence"] < 1):
        raise LsMergeError(f"results plan {p}: bootstrap needs resamples >= 1 and 0 < confidence < 1, got {boot}.")
    corpora = list(plan.eval.get("corpora") or [])
    if len(corpora) != len(set(corpora)):
        raise LsMergeError(f"results plan {p}: eval corpora {corpora} name a corpus twice.")
    if plan.domain_experts:
        if set(plan.domain_experts) != set(corpora):
            raise LsMergeError(f"results plan {p}: domain_experts must name one expert row for each eval corpus {corpora}, "
                               f"got {sorted(plan.domain_experts)}.")  # fmt: skip
        if len(corpora) < 2:
            raise LsMergeError(f"results plan {p}: the summary over domains needs at least 2 corpora, got {corpora}.")
        for name in plan.domain_experts.values():
            plan.row(name)
    for group, ref in plan.references.items():
        if group not in plan.groups:
            raise LsMergeError(f"results plan {p}: references: no section {group!r} (sections: {list(plan.groups)}).")
        if ref != BEST_WEIGHT_SPACE and not any(r.group == group and r.name == ref for r in plan.rows):
            raise LsMergeError(f"results plan {p}: references: section {group!r} has no row {ref!r}; name one of its rows "
                               f"or {BEST_WEIGHT_SPACE}.")  # fmt: skip


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan (structure, names, configs) before anything runs."""
    p = Path(path)
    if not p.is_file():
        raise LsMergeError(f"results plan {p} does not exist.")
    raw = yaml.safe_load(p.read_text()) or {}
    known = set(Plan.__dataclass_fields__)
    unknown = set(raw) - known
    if unknown:
        raise LsMergeError(f"results plan {p}: unknown keys {sorted(unknown)} (known: {sorted(known)}).")
    for key in ("out_dir", "results", "plots_dir", "eval", "rows"):
        if key not in raw:
            raise LsMergeError(f"results plan {p}: {key} is required.")
    rows = []
    for i, r in enumerate(raw["rows"]):
        where = f"results plan {p}: rows[{i}]"
        try:
            row = Row(**r)
        except TypeError as e:
            raise LsMergeError(f"{where}: {e}") from None
        _check_row(row, where)
        rows.append(row)
    runs = []
    for i, v in enumerate(raw.get("vae_runs") or []):
        try:
            runs.append(VAERun(**v))
        except TypeError as e:
            raise LsMergeError(f"results plan {p}: vae_runs[{i}]: {e}") from None
    plan = Plan(**{**raw, "rows": rows, "vae_runs": runs})
    slugs = [r.slug for r in rows]
    dup = sorted({s for s in slugs if slugs.count(s) > 1})
    if dup:
        raise LsMergeError(f"results plan {p}: rows with the same group and name: {dup}.")
    names = plan.names()
    for r in rows:
        substitute([r.model, r.args, r.hidden], names)  # unknown names fail here, before any work
        if r.group not in plan.groups:
            plan.groups[r.group] = r.group
    for pair in (plan.judge or {}).get("pairs", []):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise LsMergeError(f"results plan {p}: judge pair {pair!r} must be [row A, row B] (quote names that contain commas).")
        plan.row(pair[0]), plan.row(pair[1])
    _check_evaluation(plan, p)
    _check_weight_error(plan, p)
    for i, step in enumerate(plan.prepare):
        if not isinstance(step, dict) or not {"argv", "creates"} <= set(step) or set(step) - PREPARE_KEYS:
            raise LsMergeError(f"results plan {p}: prepare[{i}] must have argv and creates (and optionally always, "
                               f"cost_records), got {step!r}.")
        made = step["creates"]
        if not (isinstance(made, str) or isinstance(made, list) and made and all(isinstance(c, str) for c in made)):
            raise LsMergeError(f"results plan {p}: prepare[{i}].creates must be a path or a non-empty list of paths, got {made!r}.")
        if "cost_records" in step:
            check_cost_records(step["cost_records"], f"results plan {p}: prepare[{i}]")
    if plan.harness is not None:
        check_harness(plan.harness, {r.name for r in plan.rows}, f"results plan {p}")
    b = plan.time_budget_hours
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0):
        raise LsMergeError(f"results plan {p}: time_budget_hours must be a positive number of hours, got {b!r}.")
    for run in plan.vae_runs:  # overrides name sections of the base config (checked before any work)
        if run.overrides:
            if not Path(run.base_config).is_file():
                raise LsMergeError(f"results plan {p}: VAE run {run.name}: base config {run.base_config} does not exist.")
            derive_fit_config(yaml.safe_load(Path(run.base_config).read_text()), ratio=run.ratio, minutes=run.minutes,
                              out_dir="-", overrides=substitute(run.overrides, names))
    return plan
