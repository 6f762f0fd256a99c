"""What each section of the results table is compared with, and how sure the comparison is.

Pure functions on a run's records (`{"row": Row, "built": ..., "scores": {"corpora": {corpus:
{"perplexity", "nll", "window_nll", "window_tokens", ...}}}}`), all rows of a section scored on
the same windows (`lsmerge.results.scoring.score_model`):

- each section's reference row: named in the plan's `references`, or `best-weight-space` (the
  section's best non-control `merge-weights` row: lowest summary number where the section has
  one, else lowest mean log-perplexity over the corpora), or by default the section's first row;
- per row and corpus, the paired-bootstrap interval of log(PPL_row / PPL_reference)
  (`lsmerge.evaluate.intervals.paired_difference`);
- in a section holding every corpus's own expert row (the plan's `domain_experts`), the summary
  number R = mean over corpora of PPL_row / PPL_own expert with its interval, and the paired
  interval of R_row - R_reference; such a section is sorted by R.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lsmerge.evaluate.intervals import Interval, WindowScores, difference, domain_replicates, percentile_interval, relative
from lsmerge.results.plan import BEST_WEIGHT_SPACE, DEFAULT_BOOTSTRAP, Plan


@dataclass
class SectionComparison:
    """The reference of one section, every row's intervals against it, and the summary numbers."""

    records: list[dict]  # in table order: sorted by summary when there is one
    reference: dict
    cells: dict[str, dict[str, Interval]]  # row name -> corpus -> interval of log(PPL / PPL_ref)
    summary: dict[str, Interval] = field(default_factory=dict)  # row name -> R with its interval
    summary_vs_reference: dict[str, Interval] = field(default_factory=dict)  # row name -> R_row - R_ref


def window_scores(record: dict, corpus: str) -> WindowScores:
    c = record["scores"]["corpora"][corpus]
    return WindowScores.of(c["window_nll"], c["window_tokens"])


def _mean_nll(record: dict, corpora: list[str]) -> float:
    return sum(record["scores"]["corpora"][c]["nll"] for c in corpora) / len(corpora)


def _by_domain(record: dict, corpora: list[str]) -> dict[str, WindowScores]:
    return {c: window_scores(record, c) for c in corpora}


def choose_reference(plan: Plan, group: str, records: list[dict], corpora: list[str],
                     summary: dict[str, Interval] | None = None) -> dict:  # fmt: skip
    """The section's reference record (see the module docstring)."""
    ref = plan.references.get(group)
    if ref is None:
        return records[0]
    if ref != BEST_WEIGHT_SPACE:
        return next(r for r in records if r["row"].name == ref)
    weight = [r for r in records if r["row"].command == "merge-weights" and r["row"].control is None]
    if not weight:
        return records[0]
    if summary:
        return min(weight, key=lambda r: summary[r["row"].name].estimate)
    return min(weight, key=lambda r: _mean_nll(r, corpora))


def compare_section(plan: Plan, group: str, records: list[dict], corpora: list[str], seed: int = 0) -> SectionComparison:
    """Reference, paired intervals and (where the section holds every own expert) the summary of one section.

    Each row's resampled mean NLLs are computed once per corpus on resamples shared by every row
    (`intervals.domain_replicates`); every interval is then a difference of those replicates."""
    boot = {**DEFAULT_BOOTSTRAP, **plan.bootstrap}
    conf = boot["confidence"]
    reps = {r["row"].name: domain_replicates(_by_domain(r, corpora), resamples=boot["resamples"], seed=seed) for r in records}
    names = {r["row"].name: r for r in records}
    summary: dict[str, Interval] = {}
    relatives = {}
    if plan.domain_experts and all(name in names for name in plan.domain_experts.values()):
        experts = {c: reps[plan.domain_experts[c]][c] for c in corpora}
        relatives = {name: relative(rep, experts) for name, rep in reps.items()}
        summary = {name: percentile_interval(est, values, conf) for name, (est, values) in relatives.items()}
        records = sorted(records, key=lambda r: summary[r["row"].name].estimate)
    ref = choose_reference(plan, group, records, corpora, summary)
    ref_name = ref["row"].name
    cells = {name: {c: difference(rep[c], reps[ref_name][c], conf) for c in corpora} for name, rep in reps.items()}
    vs_ref = {}
    if relatives:
        r_ref, v_ref = relatives[ref_name]
        vs_ref = {name: percentile_interval(est - r_ref, values - v_ref, conf) for name, (est, values) in relatives.items()}
    return SectionComparison(records, ref, cells, summary, vs_ref)
