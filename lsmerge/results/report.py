"""RESULTS.md and the interpolation-curve plot from a run's records: every section's table with each
row's paired interval against the section's reference and, where the section holds every corpus's
own expert, the summary number (`comparisons`); what the numbers show, worded from the intervals only."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path

from lsmerge.evaluate.intervals import Interval
from lsmerge.evaluate.judge.stats import POSITION_BIASED, judge_position_biased
from lsmerge.io.atomic import write_text_atomic
from lsmerge.results.comparisons import SectionComparison, compare_section
from lsmerge.results.cost import ledger_lines
from lsmerge.results.harness_rows import harness_lines
from lsmerge.results.plan import CONTROLS, DEFAULT_BOOTSTRAP, Plan, Row, cli_value


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.3g}" if v >= 1e4 else f"{v:.2f}"


def produced_by(row: Row) -> str:
    """The command line of a row, with the plan's `{names}` left in place."""
    if row.model is not None:
        return f"`{row.model}` (as is)"
    if row.hidden is not None:
        h = row.hidden
        return (f"hidden-state {h['operator']} of `{h['base']}` with `{h['source']}` at layer {h['mix_layer']}, "
                f"beta {h['beta']} (all positions)")  # fmt: skip
    parts = [f"lsmerge {row.command}"]
    if row.config:
        parts.append(f"--config {row.config}")
    parts += [f"--{k} {cli_value(v)}" for k, v in row.args.items()]
    return "`" + " ".join(parts) + "`"


def _pct(log_ratio: float) -> str:
    return f"{100 * (math.exp(log_ratio) - 1):+.1f} %"


def _interval_pct(iv: Interval) -> str:
    """A paired interval of log(PPL / PPL_ref) as percentages: "-1.2 % [-2.0, -0.4]"."""
    return f"{_pct(iv.estimate)} [{100 * (math.exp(iv.low) - 1):+.1f}, {100 * (math.exp(iv.high) - 1):+.1f}]"


def _summary_cell(iv: Interval | None) -> str:
    return "" if iv is None else f"{iv.estimate:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def _error_cell(err: dict | None) -> str:
    """"2.4 %" or "2.4 %, 2.0 %" (relative, output-weighted); empty for a row without weights."""
    if not err:
        return ""
    cell = f"{100 * err['relative_error']:.3g} %"
    if err.get("output_weighted_error") is not None:
        cell += f", {100 * err['output_weighted_error']:.3g} %"
    return cell


def row_label(row: Row) -> str:
    return row.name + (f" *(control: {CONTROLS[row.control]})*" if row.control else "")


def findings(plan: Plan, sections: dict[str, SectionComparison], corpora: list[str]) -> list[str]:
    """Plain statements read off the intervals only: per section and corpus, which rows are better /
    level / worse than the section's reference (the whole 95 % interval of the paired difference
    below / around / above 0), the summary number's best row, and where the best LS-Merge row stands."""
    lines = []
    for group, sc in sections.items():
        if len(sc.records) < 2:
            continue
        short = plan.groups[group].split(" (")[0].split(":")[0]
        ref = sc.reference["row"].name
        others = [r["row"].name for r in sc.records if r is not sc.reference]
        for c in corpora:
            verdicts = {n: sc.cells[n][c].verdict() for n in others}
            better = [n for n in others if verdicts[n] == "better"]
            worse = [n for n in others if verdicts[n] == "worse"]
            level = len(others) - len(better) - len(worse)
            listed = ", ".join(f"{n} ({_interval_pct(sc.cells[n][c])})" for n in better) or "none"
            line = (f"- {short}, {c}, against {ref} ({_fmt(sc.reference['scores']['corpora'][c]['perplexity'])}): "
                    f"better: {listed}; level: {level} row{'s' * (level != 1)}; worse: {len(worse)} row{'s' * (len(worse) != 1)}")
            if worse:
                w = max(worse, key=lambda n: sc.cells[n][c].estimate)
                line += f" (most: {w}, {_interval_pct(sc.cells[w][c])})"
            lines.append(line + ".")
        if sc.summary:
            experts = set(plan.domain_experts.values())
            merges = [r["row"].name for r in sc.records if r["row"].control is None and r["row"].name not in experts]
            if merges and merges[0] == ref:
                lines.append(f"- {short}, mean perplexity relative to each corpus's own expert: the best merge is the "
                             f"reference, {ref} {_summary_cell(sc.summary[ref])}.")  # fmt: skip
            elif merges:
                best, d = merges[0], sc.summary_vs_reference[merges[0]]
                lines.append(f"- {short}, mean perplexity relative to each corpus's own expert: best merge {best} "
                             f"{_summary_cell(sc.summary[best])}, {d.verdict()} against the reference {ref} "
                             f"{_summary_cell(sc.summary[ref])} (difference {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]).")  # fmt: skip
        ls = [r for r in sc.records if r["row"].name.lower().startswith("ls-merge")]
        if ls and sc.summary:
            b = min(ls, key=lambda r: sc.summary[r["row"].name].estimate)["row"].name
            d = sc.summary_vs_reference[b]
            lines.append(f"- {short}: the best LS-Merge row by the summary, {b} {_summary_cell(sc.summary[b])}, is "
                         f"{d.verdict()} against {ref} (difference {d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]).")  # fmt: skip
        elif ls:
            b = min(ls, key=lambda r: sum(r["scores"]["corpora"][c]["nll"] for c in corpora))["row"].name
            parts = ", ".join(f"{sc.cells[b][c].verdict()} on {c} ({_interval_pct(sc.cells[b][c])})" for c in corpora)
            lines.append(f"- {short}: the best LS-Merge row, {b}, against {ref}: {parts}.")
    return lines


def plot_curves(plan: Plan, records: list[dict], corpora: list[str], path: Path) -> Path | None:
    """Perplexity against x (lambda / t / beta) for each curve, one panel per corpus."""
    curves: dict[str, list] = {}
    for r in records:
        if r["row"].curve is not None:
            curves.setdefault(r["row"].curve, []).append(r)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(corpora), figsize=(5.5 * len(corpora), 4.2), squeeze=False)
    for ax, c in zip(axes[0], corpora):
        for label, recs in curves.items():
            recs = sorted(recs, key=lambda r: r["row"].x)
            ax.plot([r["row"].x for r in recs], [r["scores"]["corpora"][c]["perplexity"] for r in recs], marker="o", label=label)
        ax.set_yscale("log")
        ax.set_xlabel("interpolation weight of the second model (lambda / t / beta)")
        ax.set_ylabel(f"perplexity ({c}, log scale)")
        ax.set_title(c)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _machine() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}" + (f", commit {commit}" if commit else "")


def write_report(plan: Plan, records: list[dict], extras: dict, settings: dict, missing: list[str] | None = None) -> dict:
    corpora = list(settings["corpora"])
    boot = {**DEFAULT_BOOTSTRAP, **plan.bootstrap}
    results = Path(plan.results)
    plots = Path(plan.plots_dir)
    rel = lambda p: os.path.relpath(p, results.parent)  # noqa: E731
    curve_png = plot_curves(plan, records, corpora, plots / "interpolation_curves.png")
    lines = [
        f"# {plan.title}",
        "",
        f"Written by `scripts/reproduce.py` on {_dt.date.today().isoformat()} ({_machine()}). "
        f"Every number below is regenerated by running it again; cached steps are reused.",
        "",
        f"Perplexity on the held-out `{settings['split']}` split of each corpus"
        + (f", its first {settings['max_tokens']} tokens (all of a smaller split)" if settings.get("max_tokens") else "")
        + f", sliding windows of {settings['max_length']} tokens moved by {settings['stride']} (lower is better); "
        "every row of a section is scored on the same windows. "
        f"In brackets: the change against the section's reference row (**bold**) with its {boot['confidence']:.0%} "
        f"paired-bootstrap interval ({boot['resamples']} resamples of the windows, seed {settings.get('seed', 0)}); "
        "a row is better or worse only when the whole interval is below or above zero, otherwise level. "
        + ("Summary: the mean over the corpora of the row's perplexity relative to that corpus's own expert ("
           + ", ".join(f"{c}: {e}" for c, e in plan.domain_experts.items())
           + "; 1.0 = as good as the specialist on its own corpus), with its interval (windows resampled within each "
           "corpus); sections holding every expert are sorted by it. " if plan.domain_experts else "")
        + "Control rows are marked. Time: wall seconds of the command that built the row's model (merge, export); "
        "hidden-state rows need none. Seed: passed to the command.",
        "",
        "Tokens scored per corpus (first row's tokenizer): "
        + ", ".join(f"{c} {records[0]['scores']['corpora'][c]['tokens']} in {len(records[0]['scores']['corpora'][c]['window_tokens'])} "
                    "windows" for c in corpora) + "." if records else "",
        "",
        "Names in the commands: " + ", ".join(f"`{{{k}}}` = `{v}`" for k, v in plan.models.items()) + ".",
    ]
    if missing:
        lines += ["", f"**Partial table** (`scripts/reproduce.py --partial`): written from the cached rows only; {len(missing)} of "
                  f"the plan's {len(missing) + len(records)} rows were not built or scored yet and are left out: "
                  + "; ".join(missing) + ". Run `scripts/reproduce.py` without `--partial` to complete it."]  # fmt: skip
    if plan.vae_runs:
        lines += ["", "VAE runs (`lsmerge fit` of a derived config, written to the run folder as `fit.yaml`):", ""]
        for run in plan.vae_runs:
            d = plan.vae_dir(run.name)
            done = {}
            try:
                done = json.loads((d / "done.json").read_text())
            except (OSError, ValueError):
                pass
            secs = done.get("seconds")
            lines.append(f"- `{{vae:{run.name}}}`: `{d}/fit.yaml`, from `{run.base_config}`, compression ratio {run.ratio}, "
                         f"budget {run.minutes} min"
                         + "".join(f", `{k}: {cli_value(v)}`" for k, v in run.overrides.items())
                         + (f", took {secs:.0f} s" if secs else ""))  # fmt: skip
    sections = {}
    for group, title in plan.groups.items():
        recs = [r for r in records if r["row"].group == group]
        if not recs:
            continue
        sc = sections[group] = compare_section(plan, group, recs, corpora, settings.get("seed", 0))
        spec = plan.weight_error.get(group)
        err_head = (f" | weight error ({', '.join(spec.get('kinds') or ['mlp'])}){', output-weighted' if spec.get('importance') else ''}"
                    if spec else "")  # fmt: skip
        head = ("| row" + err_head + " | " + " | ".join(corpora) + (" | summary [95 %]" if sc.summary else "")
                + " | produced by | seed | time (s) |")
        lines += ["", f"## {title}", "", head, "|" + " --- |" * (head.count("|") - 1)]
        for r in sc.records:
            row, sc_c = r["row"], r["scores"]["corpora"]
            is_ref = r is sc.reference
            cells = [_fmt(sc_c[c]["perplexity"]) + ("" if is_ref else f" ({_interval_pct(sc.cells[row.name][c])})") for c in corpora]
            if sc.summary:
                cells.append(_summary_cell(sc.summary[row.name]))
            seed = "" if row.model is not None or row.hidden is not None or row.command == "export" else str(plan.seed if row.seed is None else row.seed)
            t = r["built"]["seconds"]
            name = f"**{row_label(row)}** (reference)" if is_ref else row_label(row)
            if spec:
                name += f" | {_error_cell(r.get('error'))}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {produced_by(row)} | {seed} | {'' if t is None else f'{t:.1f}' if t < 10 else f'{t:.0f}'} |")
    if extras.get("judge"):
        lines += ["", "## Pairwise judge", "",
                  "Each pair of responses asked in both orders; a win must survive the swap (else a tie). "
                  "Score of A = (wins + ties / 2) / pairs, with its Wilson interval. Position flips: pairs where the judge "
                  "preferred whichever response it saw first (or second) in both orders; a judge that flips on more than "
                  f"half of the pairs gives no verdict (\"{POSITION_BIASED}\") instead of ties.", "",
                  "| A | B | judge | pairs | A wins | ties | B wins | score of A [interval] | position flips |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for j in extras["judge"]:
            s = j["summary"]
            if judge_position_biased(s):
                counts = f"{POSITION_BIASED} | | | {POSITION_BIASED}"
            else:
                counts = f"{s['wins']} | {s['ties']} | {s['losses']} | {s['score']:.2f} [{s['ci_low']:.2f}, {s['ci_high']:.2f}]"
            lines.append(f"| {j['a']} | {j['b']} | `{j['judge']}` | {s['pairs']} | {counts} | {s.get('position_flips', '')} |")
    if extras.get("harness"):
        lines += ["", "## lm-evaluation-harness", "", *harness_lines(plan.harness, extras["harness"], boot, plan.seed)]
    lines += ["", "## What the numbers show", "", *findings(plan, sections, corpora)]
    biased = [j for j in extras.get("judge") or [] if judge_position_biased(j["summary"])]
    if biased:
        lines.append(f"- Pairwise judge: {POSITION_BIASED} on {len(biased)} of {len(extras['judge'])} comparisons (the judge "
                     "changed its choice with the order of the answers on more than half of the pairs).")
    if extras.get("costs"):
        lines += ["", "## What the run costs", "", *ledger_lines(extras["costs"], plan.time_budget_hours)]
    if plan.notes.strip():
        lines += ["", "## Notes", "", plan.notes.strip()]
    figures = [("Interpolation curves", curve_png), ("Hidden-state mixing sweep (layer x ratio)", extras.get("sweep"))]
    figures += [(f"Kurtosis per layer: {Path(p).stem.removeprefix('kurtosis_')}", p) for p in extras.get("kurtosis") or []]
    figures = [(t, p) for t, p in figures if p]
    if figures:
        lines += ["", "## Plots", ""]
        for t, p in figures:
            lines += [f"### {t}", "", f"![{t}]({rel(p)})", ""]
    results.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results, "\n".join(lines).rstrip() + "\n")
    return {"results": str(results), "plots": [str(p) for _, p in figures], "rows": len(records)}
