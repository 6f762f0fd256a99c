"""`lsmerge.evaluate.judge.local`: the local judge asks both orders, batches deterministically,
and refuses a tokenizer that cannot tell the verdicts apart."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.judge.command import run_judge
from lsmerge.evaluate.judge.local import LocalJudge
from lsmerge.evaluate.judge.responses import Ask, pair_responses, read_responses, swapped_asks
from tests.judge_helpers import good_and_bad_sets, judge_tokenizer, make_judge_model


@pytest.fixture
def sets(tmp_path):
    return good_and_bad_sets(tmp_path)


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory):
    return make_judge_model(tmp_path_factory.mktemp("judge") / "tiny-judge")


def test_local_judge_asks_both_orders_deterministically(judge_model, sets, monkeypatch):
    _, model = judge_model
    pairs = pair_responses(*(read_responses(p) for p in sets))
    seen = []
    original = LocalJudge.verdict_logprobs
    monkeypatch.setattr(LocalJudge, "verdict_logprobs", lambda self, asks: seen.append(list(asks)) or original(self, asks))
    local = LocalJudge(model, judge_tokenizer(chat=True), batch_size=3)
    assert local.use_chat and local.encode(Ask("p", "x", "y"))[-1] == local.tokenizer.convert_tokens_to_ids("<|assistant|>")
    first = run_judge(pairs, local)
    assert seen == [[*swapped_asks(pairs)[0], *swapped_asks(pairs)[1]]]
    assert run_judge(pairs, local) == first
    one_by_one = LocalJudge(model, judge_tokenizer(chat=True), batch_size=1)
    torch.testing.assert_close(one_by_one.verdict_logprobs(seen[0]), original(local, seen[0]), atol=1e-5, rtol=0)
    lp = first["pairs"][0]["a_first"]
    assert lp["choice"] == ("first" if lp["logprob_first"] > lp["logprob_second"] else "second")
    # a margin wider than any gap makes every ask a tie
    wide = run_judge(pairs, LocalJudge(model, judge_tokenizer(chat=True), tie_margin=100.0))
    assert wide["summary"]["ties"] == 4


def test_local_judge_plain_text_and_unknown_verdict_tokens(judge_model):
    _, model = judge_model
    plain = LocalJudge(model, judge_tokenizer(chat=True), chat_template=False)
    assert not plain.use_chat and plain.encode(Ask("p", "x", "y"))[-1] == plain.tokenizer.convert_tokens_to_ids(":")
    assert not LocalJudge(model, judge_tokenizer(chat=False)).use_chat
    with pytest.raises(LsMergeError, match="cannot tell the verdicts"):
        LocalJudge(model, judge_tokenizer(chat=False, verdict_words=False))
