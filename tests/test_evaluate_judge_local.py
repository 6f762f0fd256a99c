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


GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn> {{ 'model' if m['role'] == 'assistant' else m['role'] }} "
                  "{{ m['content'] }} <end_of_turn> {% endfor %}{% if add_generation_prompt %}<start_of_turn> model {% endif %}")


def _bos_tokenizer(template: str | None):
    """A word-level tokenizer that, like Gemma's, puts <bos> before plain text; with a chat template."""
    from tokenizers import processors

    from conftest import word_tokenizer
    from lsmerge.evaluate.judge.verdicts import JUDGE_INSTRUCTION, JUDGE_QUESTION
    from tests.judge_helpers import BAD, GOOD, PROMPTS

    words = " ".join([JUDGE_INSTRUCTION, JUDGE_QUESTION, *PROMPTS, *GOOD, *BAD, "Answer : user model"])
    tok = word_tokenizer([words], specials=["<unk>", "<pad>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                         unk="<unk>", chat_template=template, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>")  # fmt: skip
    bos = tok.convert_tokens_to_ids("<bos>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    return tok


def test_gemma3_as_local_judge(sets):
    """Gemma-3 (tiny, random) judges through its kind of chat template: one BOS, the user turn, the
    model's turn opened; without a BOS in the template one is still put first; verdicts are read."""
    from conftest import tiny_causal_lm

    model = tiny_causal_lm(4, layers=2, hidden=48, vocab=128, family="gemma3", pad_token_id=1)
    tok = _bos_tokenizer(GEMMA_TEMPLATE)
    bos, sot = tok.convert_tokens_to_ids("<bos>"), tok.convert_tokens_to_ids("<start_of_turn>")
    gemma = LocalJudge(model, tok, batch_size=2)
    ids = gemma.encode(Ask("say hello", "hello good", "bye"))
    assert gemma.use_chat and ids[:3] == [bos, sot, tok.convert_tokens_to_ids("user")] and ids.count(bos) == 1
    assert ids[-2:] == [sot, tok.convert_tokens_to_ids("model")]
    assert gemma.label_ids == tok.convert_tokens_to_ids(["A", "B"])
    no_bos = LocalJudge(model, _bos_tokenizer(GEMMA_TEMPLATE.removeprefix("{{ bos_token }}")))
    assert no_bos.encode(Ask("say hello", "hello good", "bye")) == ids
    plain = LocalJudge(model, tok, chat_template=False).encode(Ask("say hello", "hello good", "bye"))
    assert plain[0] == bos and plain.count(bos) == 1
    pairs = pair_responses(*(read_responses(p) for p in sets))
    result = run_judge(pairs, gemma)
    assert result["summary"]["pairs"] == 4 and torch.isfinite(torch.tensor(
        [[r[k]["logprob_first"], r[k]["logprob_second"]] for r in result["pairs"] for k in ("a_first", "b_first")])).all()
