"""`lsmerge judge` (`lsmerge.evaluate.judge.command`): both orders asked, position bias gives
ties, a rigged local judge through the command line, every error before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.judge.command import judge, run_judge
from lsmerge.evaluate.judge.local import LocalJudge
from lsmerge.evaluate.judge.responses import pair_responses, read_responses, swapped_asks
from lsmerge.evaluate.judge.stats import POSITION_BIASED, format_summary, wilson_interval
from tests.judge_helpers import PROMPTS, FixedJudge, good_and_bad_sets, make_judge_model


@pytest.fixture
def sets(tmp_path):
    return good_and_bad_sets(tmp_path)


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory):
    return make_judge_model(tmp_path_factory.mktemp("judge") / "tiny-judge")


def test_position_bias_gives_ties_and_a_fair_judge_wins(tmp_path, sets):
    pairs = pair_responses(*(read_responses(p) for p in sets))
    biased = run_judge(pairs, FixedJudge(lambda a: "first"))
    assert biased["summary"]["ties"] == 4 and biased["summary"]["position_flips"] == 4
    # a judge that always prefers the first answer gives no verdict, not four ties
    assert biased["summary"]["position_biased"] and POSITION_BIASED in format_summary(biased["summary"], "a", "b", "fixed")
    fair = FixedJudge(lambda a: "first" if "good" in a.first else "second")
    result = run_judge(pairs, fair)
    assert len(fair.asks) == 8 and fair.asks[:4] == swapped_asks(pairs)[0] and fair.asks[4:] == swapped_asks(pairs)[1]
    assert [r["winner"] for r in result["pairs"]] == ["A"] * 4
    assert result["pairs"][0]["b_first"] == {"choice": "second", "prefers": "A"}
    assert result["summary"]["position_flips"] == 0
    assert not result["summary"]["position_biased"] and POSITION_BIASED not in format_summary(result["summary"], "a", "b", "fair")
    # exactly half of the pairs flipping is not more than half: still a verdict
    half = run_judge(pairs, FixedJudge(lambda a: "first" if "good" in a.first or a.prompt in PROMPTS[:2] else "second"))
    assert half["summary"]["position_flips"] == 2 and not half["summary"]["position_biased"]


# -- the local judge -------------------------------------------------------------------------


def test_rigged_local_judge_through_the_cli(judge_model, sets, tmp_path, monkeypatch, capsys):
    from lsmerge.cli import main

    path, _ = judge_model

    def rigged(self, asks):  # log p("A"), log p("B"): prefers the response containing "good"
        return torch.tensor([[-0.1, -3.0] if "good" in a.first else [-3.0, -0.1] for a in asks])

    monkeypatch.setattr(LocalJudge, "verdict_logprobs", rigged)
    out = tmp_path / "res" / "good_vs_bad.json"
    main(["judge", "--responses_a", str(sets[0]), "--responses_b", str(sets[1]), "--model", str(path), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "A wins (good)" in printed and "Wilson" in printed
    result = json.loads(out.read_text())
    assert result["summary"]["wins"] == 4 and result["summary"]["losses"] == 0
    assert result["summary"]["ci_low"] == pytest.approx(wilson_interval(1.0, 4)[0])
    assert result["pairs"][1]["a_first"]["logprob_first"] == pytest.approx(-0.1)
    # swapped sets: B wins everything
    judge(responses_a=str(sets[1]), responses_b=str(sets[0]), model=str(path), out=str(out))
    assert json.loads(out.read_text())["summary"]["losses"] == 4


def test_cli_errors_before_writing(judge_model, sets, tmp_path, capsys):
    from lsmerge.cli import main

    path, _ = judge_model
    out = tmp_path / "out" / "j.json"
    cases = [
        (["--responses_a", str(tmp_path / "none.jsonl"), "--responses_b", str(sets[1]), "--model", str(path)], "does not exist"),
        (["--responses_a", str(sets[0]), "--responses_b", str(sets[1]), "--model", str(tmp_path / "nope")], "unknown model"),
        (["--responses_a", str(sets[0]), "--responses_b", str(sets[1])], "needs --model"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            main(["judge", *args, "--out", str(out)])
        assert e.value.code == 1 and message in capsys.readouterr().err
    # a choice outside the typed set is refused by the command line parser (exit 2), naming the choices
    typed = [(["--judge", "oracle"], "Expected a typing.Literal['local', 'endpoint']. Got value: oracle"),
             (["--dtype", "float8"], "Got value: float8")]  # fmt: skip
    for args, message in typed:
        with pytest.raises(SystemExit) as e:
            main(["judge", "--responses_a", str(sets[0]), "--responses_b", str(sets[1]), "--model", str(path), *args, "--out", str(out)])
        assert e.value.code == 2 and message in capsys.readouterr().err
    # ... and by the function for Python callers
    with pytest.raises(LsMergeError, match="unknown judge 'oracle'"):
        judge(responses_a=str(sets[0]), responses_b=str(sets[1]), judge="oracle", model=str(path), out=str(out))
    assert not out.parent.exists()


def test_help_lists_the_choices(capsys):
    from lsmerge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["judge", "--help"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "--judge {local,endpoint}" in printed and "{float32,fp32,bfloat16,bf16,float16,fp16,float64}" in printed
