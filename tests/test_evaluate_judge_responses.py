"""`lsmerge.evaluate.judge.responses`: reading response sets, pairing by prompt or id, swapped asks."""

from __future__ import annotations

import pytest

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.judge.responses import Ask, pair_responses, read_responses, swapped_asks
from tests.judge_helpers import BAD, GOOD, PROMPTS, response_set, write_jsonl


def test_pairing_by_prompt_and_by_id(tmp_path):
    a = read_responses(response_set(tmp_path / "a.jsonl", GOOD))
    b = read_responses(response_set(tmp_path / "b.jsonl", BAD[::-1], prompts=PROMPTS[::-1]))
    pairs = pair_responses(a, b)
    assert [p.prompt for p in pairs] == PROMPTS  # A's order
    assert [(p.response_a, p.response_b) for p in pairs] == list(zip(GOOD, BAD))
    first, second = swapped_asks(pairs)
    assert first[0] == Ask(PROMPTS[0], GOOD[0], BAD[0]) and second[0] == Ask(PROMPTS[0], BAD[0], GOOD[0])
    # ids, when every record has one, take precedence over prompts
    with_ids = [dict(r, id=f"q{i}") for i, r in enumerate(a)]
    by_id = pair_responses(with_ids, [dict(r, id=f"q{PROMPTS.index(r['prompt'])}") for r in b])
    assert [p.key for p in by_id] == ["q0", "q1", "q2", "q3"]
    # chat-message prompts pair too
    msgs = [{"prompt": [{"role": "user", "content": "hi"}], "response": "x"}]
    assert pair_responses(msgs, [dict(msgs[0], response="y")])[0].response_b == "y"


def test_pairing_errors(tmp_path):
    a = read_responses(response_set(tmp_path / "a.jsonl", GOOD))
    with pytest.raises(LsMergeError, match="'say hello' is in A but not in B"):
        pair_responses(a, [r for r in a if r["prompt"] != "say hello"])
    with pytest.raises(LsMergeError, match="'extra' is in B but not in A"):
        pair_responses(a, [*a, {"prompt": "extra", "response": "x"}])
    with pytest.raises(LsMergeError, match="two records"):
        pair_responses([*a, a[0]], a)
    ids_a = [dict(r, id=i) for i, r in enumerate(a)]
    with pytest.raises(LsMergeError, match="different prompts"):
        pair_responses(ids_a, [dict(r, id=(i + 1) % 4) for i, r in enumerate(a)])


def test_reading_errors(tmp_path):
    with pytest.raises(LsMergeError, match="does not exist"):
        read_responses(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(LsMergeError, match="is empty"):
        read_responses(tmp_path / "empty.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "response": "r"}\n\n{"prompt": oops}\n')
    with pytest.raises(LsMergeError, match=r"bad.jsonl:3: not valid JSON"):
        read_responses(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "noresp.jsonl", [{"prompt": "p", "response": "r"}, {"prompt": "p"}])
    with pytest.raises(LsMergeError, match=r"noresp.jsonl:2: .*\"response\""):
        read_responses(tmp_path / "noresp.jsonl")
