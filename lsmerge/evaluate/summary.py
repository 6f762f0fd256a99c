"""A perplexity table of merges beside their inputs, and the plain-language lines it supports.

Used by `scripts/demo.py`: base, one expert per corpus and some merges of those experts are
scored by `lsmerge evaluate`; `read_perplexity` turns its JSON into {model: {corpus: ppl}},
`format_table` prints it with each number's change against the base, and `merge_summary` says,
from those numbers only, how strong each expert is, what each merge keeps of each expert's gain,
and which merge keeps both specialities best. Nothing here knows which method made a row.

"Gain kept" on corpus c: (ppl_base - ppl_merge) / (ppl_base - ppl_expert_c), the share of the
c-expert's improvement over the base that the merge still has (1 = as good as the expert,
0 = no better than the base, < 0 = worse than the base, > 1 = better than the expert). It is defined only where the expert
beats the base on its own corpus.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

Table = dict[str, dict[str, float]]  # {model label: {corpus name: perplexity}}


def read_perplexity(json_path: str | os.PathLike) -> Table:
    """{model label: {corpus: perplexity}} from an `lsmerge evaluate --out` JSON; a text named
    `<corpus>/<split>` is keyed by `<corpus>`."""
    rows = json.loads(Path(json_path).read_text(encoding="utf-8"))["results"]
    table: Table = {}
    for r in rows:
        table.setdefault(r["model"], {})[r["text"].split("/")[0]] = float(r["perplexity"])
    return table


def _pct(value: float, ref: float) -> str:
    return f"{100 * (value / ref - 1):+.1f} %"


def format_table(table: Table, models: list[str], corpora: list[str], base: str) -> str:
    """Perplexity per model (rows, in the order given) and corpus, each with its change against `base`."""
    width = max(len(m) for m in models)
    cell = 20
    lines = ["  ".join([f"{'model':<{width}}", *(f"{c:>{cell}}" for c in corpora)])]
    lines.append("  ".join(["-" * width, *("-" * cell for _ in corpora)]))
    for m in models:
        cells = []
        for c in corpora:
            v = table[m][c]
            cells.append(f"{v:>{cell}.2f}" if m == base else f"{f'{v:.2f} ({_pct(v, table[base][c])})':>{cell}}")
        lines.append("  ".join([f"{m:<{width}}", *cells]))
    return "\n".join(lines)


def gain_kept(table: Table, model: str, base: str, expert: str, corpus: str) -> float | None:
    """Share of the expert's improvement over the base on `corpus` that `model` keeps; None when
    the expert does not beat the base there."""
    b, e = table[base][corpus], table[expert][corpus]
    if not e < b:
        return None
    return (b - table[model][corpus]) / (b - e)


def merge_summary(table: Table, base: str, experts: dict[str, str], merges: list[str],
                  weak_below: float = 0.10) -> list[str]:
    """Lines saying what the table shows: each expert against the base (flagged weak when its own
    corpus improves by less than `weak_below`), each merge against the inputs, the best merge per
    corpus, and the merge keeping the most of both specialities. `experts` maps each corpus to
    its expert's label."""
    lines = []
    corpora = list(experts)
    for corpus, expert in experts.items():
        b, e = table[base][corpus], table[expert][corpus]
        others = ", ".join(f"{c} {table[base][c]:.2f} -> {table[expert][c]:.2f}" for c in corpora if c != corpus)
        gain = 1 - e / b
        verdict = ("weak: it did not beat the base on its own corpus" if gain <= 0
                   else f"weak: less than {100 * weak_below:.0f} % better" if gain < weak_below else "specialised")
        lines.append(f"{expert}: {corpus} {b:.2f} -> {e:.2f} ({_pct(e, b)} vs base; {verdict}); off its corpus: {others}.")
    shared = [e for c, e in experts.items() if all(table[e][o] < table[base][o] for o in corpora if o != c)]
    if len(experts) > 1 and len(shared) == len(experts):
        lines.append("every expert also beats the base off its own corpus: part of what they learned is shared "
                     "(e.g. plain text rather than chat), and a merge can add those parts up.")
    for m in merges:
        parts = []
        for corpus, expert in experts.items():
            v, k = table[m][corpus], gain_kept(table, m, base, expert, corpus)
            kept = ("" if k is None else f", worse than the base: {100 * k:.0f} % of {expert}'s gain" if k < 0
                    else f", keeps {100 * k:.0f} % of {expert}'s gain" if k <= 1
                    else f", beats {expert}: {100 * k:.0f} % of its gain")
            parts.append(f"{corpus} {v:.2f} (base {table[base][corpus]:.2f}, {expert} {table[expert][corpus]:.2f}{kept})")
        lines.append(f"{m}: " + "; ".join(parts) + ".")
    if not merges:
        return lines
    for corpus, expert in experts.items():
        best = min(merges, key=lambda m: table[m][corpus])
        v, e, b = table[best][corpus], table[expert][corpus], table[base][corpus]
        rel = "beats" if v < e else "matches" if v == e else "trails"
        lines.append(f"best merge on {corpus}: {best} ({v:.2f}; {rel} {expert} {e:.2f}, base {b:.2f}).")
    scored = {m: [gain_kept(table, m, base, e, c) for c, e in experts.items()] for m in merges}
    if any(k is None for ks in scored.values() for k in ks):
        weak = [e for c, e in experts.items() if gain_kept(table, e, base, e, c) is None]
        lines.append(f"no merge can keep both specialities: {', '.join(weak)} did not beat the base on its own corpus.")
        return lines
    ranked = sorted(merges, key=lambda m: min(scored[m]), reverse=True)
    best = ranked[0]
    kept = " and ".join(f"{100 * k:.0f} % of {e}'s gain on {c}" for k, (c, e) in zip(scored[best], experts.items()))
    runner_up = ""
    if len(ranked) > 1:
        nxt = ranked[1]
        runner_up = (f"; next {nxt}, whose weaker side keeps {100 * min(scored[nxt]):.0f} % "
                     f"against {100 * min(scored[best]):.0f} %")
    if min(scored[best]) > 0:
        lines.append(f"keeps both specialities best: {best} ({kept}{runner_up}).")
    else:
        lines.append(f"no merge keeps both specialities: the best balance, {best}, keeps {kept}{runner_up}.")
    return lines
