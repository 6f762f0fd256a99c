"""`lsmerge.results.report` and `lsmerge.results.comparisons` on hand-made per-window scores over
three corpora: the reference of a section, the paired intervals and their wording (better / level /
worse only from the interval), the summary number and the sort, control rows, and a position-biased
judge reported as giving no verdict."""

from __future__ import annotations

import math

import pytest
import torch

from lsmerge.evaluate.judge.stats import POSITION_BIASED, summarize
from lsmerge.results.comparisons import compare_section
from lsmerge.results.plan import Plan, Row
from lsmerge.results.report import write_report

CORPORA = ["shakespeare", "python", "prose"]
WINDOWS, TOKENS = 10, 20
N0 = 2.0 + 0.3 * torch.randn(WINDOWS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
NOISE = 0.3 * torch.tensor([1.0, -1.0] * (WINDOWS // 2), dtype=torch.float64)  # mean 0: no shift, wide interval


def _record(row: Row, per_token: dict[str, torch.Tensor]) -> dict:
    corpora = {}
    for c, nll in per_token.items():
        sums = (nll * TOKENS).tolist()
        mean = sum(sums) / (TOKENS * WINDOWS)
        corpora[c] = {"perplexity": math.exp(mean), "nll": mean, "tokens": TOKENS * WINDOWS, "window_nll": sums,
                      "window_tokens": [TOKENS] * WINDOWS}  # fmt: skip
    return {"row": row, "built": {"seconds": None}, "scores": {"corpora": corpora}}


def _world(tmp_path, references=None):
    experts = {c: f"expert {c}" for c in CORPORA}
    recs = [_record(Row("g", experts[d], model=f"{{e_{d}}}", control="input"), {c: N0 + (0.0 if c == d else 1.0) for c in CORPORA})
            for d in CORPORA]  # fmt: skip
    weights = lambda name, **kw: Row("g", name, command="merge-weights", config="configs/merge_weights/linear.yaml", **kw)  # noqa: E731
    recs += [
        _record(weights("linear"), {c: N0 + 0.2 for c in CORPORA}),
        _record(weights("TIES"), {c: N0 + 0.1 for c in CORPORA}),
        _record(Row("g", "LS-Merge x", command="merge"), {c: N0 + 0.1 + (NOISE if c == "shakespeare" else 0) for c in CORPORA}),
        _record(weights("linear, t 0", control="zero", curve="linear", x=0.0), {c: N0 for c in CORPORA}),
    ]
    plan = Plan(out_dir=str(tmp_path / "out"), results=str(tmp_path / "RESULTS.md"), plots_dir=str(tmp_path / "plots"),
                eval={"corpora": CORPORA}, rows=[r["row"] for r in recs], groups={"g": "3. Experts (tiny)"},
                domain_experts=experts, references=references if references is not None else {"g": "best-weight-space"},
                bootstrap={"resamples": 300})  # fmt: skip
    return plan, recs


def test_section_reference_intervals_and_summary(tmp_path):
    plan, recs = _world(tmp_path)
    sc = compare_section(plan, "g", recs, CORPORA)
    # the best non-control weight-space row: TIES (the t = 0 control row is better, but a control)
    assert sc.reference["row"].name == "TIES"
    assert sc.summary["TIES"].estimate == pytest.approx(math.exp(0.1))
    assert sc.summary["linear, t 0"].estimate == pytest.approx(1.0) and sc.summary["expert prose"].estimate == pytest.approx((1 + 2 * math.e) / 3)
    # sorted by the summary number: the control at 1.0 first, the experts last
    assert [r["row"].name for r in sc.records][:4] == ["linear, t 0", "TIES", "LS-Merge x", "linear"]
    for c in CORPORA:
        assert sc.cells["linear"][c].verdict() == "worse" and sc.cells["linear, t 0"][c].verdict() == "better"
        assert sc.cells["TIES"][c].low == sc.cells["TIES"][c].high == 0.0
    assert sc.cells["LS-Merge x"]["shakespeare"].verdict() == "level" and sc.cells["LS-Merge x"]["shakespeare"].low < 0
    assert sc.summary_vs_reference["LS-Merge x"].verdict() == "level" and sc.summary_vs_reference["linear"].verdict() == "worse"
    # a named reference, and the first row by default
    assert compare_section(plan, "g", recs, CORPORA).reference is sc.reference
    plan.references = {"g": "linear"}
    assert compare_section(plan, "g", recs, CORPORA).reference["row"].name == "linear"
    plan.references, plan.domain_experts = {}, {}
    plain = compare_section(plan, "g", recs, CORPORA)
    assert plain.reference is recs[0] and not plain.summary and plain.records == recs  # no summary: plan order


def test_report_wording_from_the_intervals_and_a_position_biased_judge(tmp_path):
    plan, recs = _world(tmp_path)
    biased = summarize(["tie"] * 4, flips=4)
    fair = summarize(["A", "A", "tie", "B"], flips=1)
    extras = {"judge": [{"a": "TIES", "b": "linear", "summary": biased, "judge": "j"},
                        {"a": "TIES", "b": "LS-Merge x", "summary": fair, "judge": "j"}]}  # fmt: skip
    write_report(plan, recs, extras, {"corpora": CORPORA, "split": "test", "max_tokens": 16384, "max_length": 512, "stride": 512, "seed": 0})
    text = (tmp_path / "RESULTS.md").read_text()
    table = text[text.index("## 3. Experts"):text.index("## Pairwise judge")]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0] == "| row | shakespeare | python | prose | summary [95 %] | produced by | seed | time (s) |"
    assert lines[2].startswith("| linear, t 0 *(control: lambda / t / beta = 0)* |") and "1.000 [1.000, 1.000]" in lines[2]
    assert lines[3].startswith("| **TIES** (reference) |") and "(" not in lines[3].split("|")[2]
    assert "(+10.5 % [+10.5, +10.5])" in lines[5]  # linear: e^0.1 worse on every window
    assert lines[-1].startswith("| expert prose *(control: input as it is)* |")
    shows = text[text.index("## What the numbers show"):]
    # python: the control and python's own expert better, LS-Merge x (the same as TIES there) level, the rest worse
    assert ("- 3. Experts, python, against TIES (7.52): better: linear, t 0 (-9.5 % [-9.5, -9.5]), expert python "
            "(-9.5 % [-9.5, -9.5]); level: 1 row; worse: 3 rows (most: expert shakespeare, +146.0 % [+146.0, +146.0])." in shows)  # fmt: skip
    assert "best merge is the reference, TIES 1.105 [1.105, 1.105]" in shows
    assert "the best LS-Merge row by the summary, LS-Merge x" in shows and "is level against TIES" in shows
    assert f"- Pairwise judge: {POSITION_BIASED} on 1 of 2 comparisons" in shows
    judge = text[text.index("## Pairwise judge"):text.index("## What the numbers show")]
    biased_line, fair_line = [line for line in judge.splitlines() if line.startswith("| TIES")]
    assert POSITION_BIASED in biased_line and "| 4 |" in biased_line and "0.50 [" not in biased_line
    assert POSITION_BIASED not in fair_line and "| 2 | 1 | 1 |" in fair_line
    assert "its first 16384 tokens" in text and "10 windows" in text
