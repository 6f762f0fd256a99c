"""`lsmerge.evaluate.summary`: the demo's table and summary lines, computed from the numbers only;
and the demo's merge steps (`scripts/demo.py`, shipped configs with the demo's overrides) run on
tiny Llamas, evaluated and summarised end to end."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from lsmerge.data.corpora import corpus_path
from lsmerge.evaluate.summary import format_table, gain_kept, merge_summary, read_perplexity
from tests.evaluate_helpers import sample_text

ROOT = Path(__file__).resolve().parents[1]
BASE, E1, E2 = "base", "expert-shakespeare", "expert-python"
EXPERTS = {"shakespeare": E1, "python": E2}


def table(**merges):
    t = {BASE: {"shakespeare": 30.0, "python": 8.0}, E1: {"shakespeare": 20.0, "python": 8.4},
         E2: {"shakespeare": 31.0, "python": 6.0}}
    return t | {name: dict(zip(("shakespeare", "python"), v)) for name, v in merges.items()}


def test_gain_kept():
    t = table(m=(25.0, 9.0))
    assert gain_kept(t, "m", BASE, E1, "shakespeare") == pytest.approx(0.5)
    assert gain_kept(t, "m", BASE, E2, "python") == pytest.approx(-0.5)
    assert gain_kept(t, E1, BASE, E1, "shakespeare") == pytest.approx(1.0)
    assert gain_kept(t, "m", BASE, E1, "python") is None  # E1 is worse than the base on python


def test_summary_names_best_per_corpus_and_best_balance():
    # a: best on shakespeare, poor on python; b: best on python; c: the best minimum of both
    t = table(a=(21.0, 7.9), b=(29.0, 6.1), c=(24.0, 7.0))
    lines = merge_summary(t, BASE, EXPERTS, ["a", "b", "c"])
    assert any(line.startswith("best merge on shakespeare: a (21.00; trails expert-shakespeare 20.00") for line in lines)
    assert any(line.startswith("best merge on python: b (6.10;") for line in lines)
    assert lines[-1] == ("keeps both specialities best: c (60 % of expert-shakespeare's gain on shakespeare "
                         "and 50 % of expert-python's gain on python; next b, whose weaker side keeps 10 % against 50 %).")
    assert "python 7.90 (base 8.00, expert-python 6.00, keeps 5 % of expert-python's gain)" in lines[2]
    assert any(line.startswith("a: shakespeare 21.00 (base 30.00, expert-shakespeare 20.00, keeps 90 %") for line in lines)
    assert "specialised" in lines[0] and "specialised" in lines[1]
    assert not any(line.startswith("every expert also beats") for line in lines)


def test_summary_flags_weak_experts_and_merges_that_lose_a_speciality():
    t = table(m=(25.0, 8.5))
    t[E1]["shakespeare"] = 29.5  # -1.7 %: weak
    lines = merge_summary(t, BASE, EXPERTS, ["m"])
    assert "-1.7 % vs base; weak: less than 10 % better" in lines[0]
    assert "python 8.50 (base 8.00, expert-python 6.00, worse than the base: -25 % of expert-python's gain)" in lines[2]
    assert lines[-1].startswith("no merge keeps both specialities: the best balance, m, keeps")
    assert "shakespeare 25.00 (base 30.00, expert-shakespeare 29.50, beats expert-shakespeare: 1000 % of its gain)" in lines[2]
    assert "beats expert-shakespeare 29.50" in next(line for line in lines if line.startswith("best merge on shakespeare"))


def test_summary_when_an_expert_did_not_improve():
    t = table(m=(25.0, 7.0))
    t[E2]["python"] = 8.2
    lines = merge_summary(t, BASE, EXPERTS, ["m"])
    assert "weak: it did not beat the base on its own corpus" in lines[1]
    assert lines[-1] == "no merge can keep both specialities: expert-python did not beat the base on its own corpus."
    assert merge_summary(t, BASE, EXPERTS, []) == lines[:2]


def test_summary_notices_gains_shared_by_all_experts():
    t = table(m=(21.0, 6.5))
    t[E1]["python"], t[E2]["shakespeare"] = 7.5, 28.0
    lines = merge_summary(t, BASE, EXPERTS, ["m"])
    assert lines[2].startswith("every expert also beats the base off its own corpus")
    assert lines[-1].startswith("keeps both specialities best: m (90 % of")


def test_format_table_shows_change_against_base():
    out = format_table(table(m=(24.0, 8.0)), [BASE, E1, E2, "m"], ["shakespeare", "python"], BASE)
    rows = out.splitlines()
    assert rows[0].split() == ["model", "shakespeare", "python"]
    assert rows[2].split() == [BASE, "30.00", "8.00"]
    assert "20.00 (-33.3 %)" in rows[3] and "8.40 (+5.0 %)" in rows[3]
    assert "24.00 (-20.0 %)" in rows[5] and "8.00 (+0.0 %)" in rows[5]


def _demo_module():
    spec = importlib.util.spec_from_file_location("lsmerge_demo_script", ROOT / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_merges_run_evaluate_and_summarise_on_tiny_models(tiny_world, tmp_path, monkeypatch, capsys):
    """The demo's three merge commands (shipped configs + the demo's overrides) on tiny Llamas, then
    `evaluate` on two corpora, then the summary: every line agrees with the JSON's numbers."""
    from lsmerge.cli import main
    from lsmerge.evaluate.perplexity_command import evaluate

    demo = tmp_path / "demo"
    for domain, src in (("shakespeare", tiny_world.e1), ("python", tiny_world.e2)):
        shutil.copytree(src, demo / f"expert-{domain}")  # a copy: evaluate names a model by its resolved folder
    monkeypatch.chdir(ROOT)  # the shipped configs are named relative to the repository
    steps = _demo_module().merge_steps(base=str(tiny_world.base), demo=str(demo))
    assert [s[0] for s in steps] == ["merge-linear", "merge-ties", "merge-lsmerge-delta"]
    for label, _, cmd in steps:
        assert "--config" in cmd and cmd[cmd.index("--config") + 1].startswith("configs/")
        main([*cmd, "--out", str(demo / label), "--progress", "false"])
        assert (demo / label / "config.json").is_file()

    root = tmp_path / "ckpt"
    for i, corpus in enumerate(("shakespeare", "python")):
        p = corpus_path(root, corpus, "validation")
        p.parent.mkdir(parents=True)
        p.write_text(sample_text(120, seed=i))
    models = [tiny_world.base, demo / E1, demo / E2, *(demo / s[0] for s in steps)]
    evaluate(models=[str(m) for m in models], corpora=["shakespeare", "python"], root=str(root), max_length=32,
             stride=32, out=str(tmp_path / "ppl"))
    t = read_perplexity(tmp_path / "ppl.json")
    labels = [Path(m).name for m in models]
    assert set(t) == set(labels) and all(set(v) == {"shakespeare", "python"} for v in t.values())
    assert t[E1]["python"] == json.loads((tmp_path / "ppl.json").read_text())["results"][3]["perplexity"]

    merges = [s[0] for s in steps]
    lines = merge_summary(t, labels[0], EXPERTS, merges)
    for corpus in ("shakespeare", "python"):
        best = min(merges, key=lambda m: t[m][corpus])
        assert f"best merge on {corpus}: {best} ({t[best][corpus]:.2f};" in "\n".join(lines)
    assert len(format_table(t, labels, ["shakespeare", "python"], labels[0]).splitlines()) == 2 + len(labels)
