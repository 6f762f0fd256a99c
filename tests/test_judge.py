"""`lsmerge judge`: pairing, swap debiasing, the Wilson interval, the local and endpoint judges."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.judge import (
    JUDGE_INSTRUCTION,
    JUDGE_QUESTION,
    Ask,
    EndpointJudge,
    LocalJudge,
    Verdict,
    combine,
    judge,
    pair_responses,
    parse_verdict,
    read_responses,
    run_judge,
    summarize,
    swapped_asks,
    wilson_interval,
)
from tests.conftest import make_tiny_llama

PROMPTS = ["name a fruit", "say hello", "count to three", "what is two plus two"]
GOOD = ["apple good", "hello good", "one two three good", "four good"]
BAD = ["rock", "bye", "five", "seven"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def response_set(path, responses, prompts=PROMPTS, **extra):
    """A response set in the format `lsmerge generate` writes."""
    rows = [{"index": i, "prompt": p, "response": r, "finish_reason": "eos", "operator": None, **extra}
            for i, (p, r) in enumerate(zip(prompts, responses))]  # fmt: skip
    return write_jsonl(path, rows)


@pytest.fixture
def sets(tmp_path):
    """A (all good responses) and B (all bad), in different orders."""
    a = response_set(tmp_path / "good.jsonl", GOOD)
    b = response_set(tmp_path / "bad.jsonl", BAD[::-1], prompts=PROMPTS[::-1])
    return a, b


# -- pure pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_first, b_first, winner",
    [
        ("first", "second", "A"), ("second", "first", "B"),  # consistent across the swap
        ("first", "first", "tie"), ("second", "second", "tie"),  # position bias
        ("first", "tie", "tie"), ("tie", "second", "tie"), ("second", "tie", "tie"), ("tie", "first", "tie"),
        ("tie", "tie", "tie"),
    ],
)  # fmt: skip
def test_swap_combination_table(a_first, b_first, winner):
    assert combine(a_first, b_first) == winner


def test_combine_rejects_unknown_verdict():
    with pytest.raises(ValueError):
        combine("first", "A")


def test_wilson_interval_by_hand():
    # 6 wins, 2 ties, 2 losses: s = (6 + 1) / 10 = 0.7, z = 1.959964 (95%)
    # centre = (0.7 + z^2/20) / (1 + z^2/10) = 0.892073 / 1.384146 = 0.644493
    # half = z / 1.384146 * sqrt(0.021 + z^2/400) = 1.416009 * 0.174939 = 0.247715
    summary = summarize(["A"] * 6 + ["tie"] * 2 + ["B"] * 2)
    assert (summary["wins"], summary["ties"], summary["losses"], summary["pairs"]) == (6, 2, 2, 10)
    assert summary["score"] == pytest.approx(0.7)
    assert summary["win_rate"] == pytest.approx(0.6) and summary["loss_rate"] == pytest.approx(0.2)
    assert summary["ci_low"] == pytest.approx(0.644493 - 0.247715, abs=2e-6)
    assert summary["ci_high"] == pytest.approx(0.644493 + 0.247715, abs=2e-6)
    # s = 0.5, n = 4, 50%: z = 0.674490, centre = 0.5, half = 0.674490 / 1.113734 * sqrt(0.0625 + 0.454936/64)
    low, high = wilson_interval(0.5, 4, confidence=0.5)
    assert (low, high) == pytest.approx((0.5 - 0.159782, 0.5 + 0.159782), abs=2e-6)
    assert wilson_interval(1.0, 5)[1] == 1.0 and wilson_interval(0.0, 5)[0] == 0.0


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


@pytest.mark.parametrize(
    "reply, choice",
    [
        ("A", "first"), ("B", "second"), ("tie", "tie"), (" **B**\n", "second"), ("[[A]]", "first"), ("[[C]]", "tie"),
        ("Response A", "first"), ("B. It is correct.", "second"), ("Verdict: A", "first"), ("A is better", "first"),
        ("I prefer Response B here.", "second"), ("Tie.", "tie"),
        ("A good answer would need more", None), ("Response A and Response B are equally bad", None), ("", None),
    ],
)  # fmt: skip
def test_parse_verdict(reply, choice):
    assert parse_verdict(reply) == choice


class FixedJudge:
    """Answers from a function of the ask; records every ask."""

    def __init__(self, answer):
        self.answer, self.asks, self.name = answer, [], "fixed"

    def judge(self, asks):
        self.asks += asks
        return [Verdict(self.answer(a)) for a in asks]


def test_position_bias_gives_ties_and_a_fair_judge_wins(tmp_path, sets):
    pairs = pair_responses(*(read_responses(p) for p in sets))
    biased = run_judge(pairs, FixedJudge(lambda a: "first"))
    assert biased["summary"]["ties"] == 4 and biased["summary"]["position_flips"] == 4
    fair = FixedJudge(lambda a: "first" if "good" in a.first else "second")
    result = run_judge(pairs, fair)
    assert len(fair.asks) == 8 and fair.asks[:4] == swapped_asks(pairs)[0] and fair.asks[4:] == swapped_asks(pairs)[1]
    assert [r["winner"] for r in result["pairs"]] == ["A"] * 4
    assert result["pairs"][0]["b_first"] == {"choice": "second", "prefers": "A"}
    assert result["summary"]["position_flips"] == 0


# -- the local judge -------------------------------------------------------------------------


def _tokenizer(chat: bool, verdict_words: bool = True):
    """A word-level tokenizer trained here on the judging prompt's words (vocab < 128)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = " ".join([JUDGE_INSTRUCTION, JUDGE_QUESTION, *PROMPTS, *GOOD, *BAD, "Answer :"])
    if not verdict_words:
        words = re.sub(r"\b[AB]\b", "", words)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[UNK]", "[PAD]", "<s>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator([words], trainers.WordLevelTrainer(special_tokens=specials))
    assert tok.get_vocab_size() <= 128
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")
    if chat:
        wrapped.chat_template = (
            "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
        )
    return wrapped


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("judge") / "tiny-judge"
    model = make_tiny_llama(path, seed=3, hidden=32)
    _tokenizer(chat=True).save_pretrained(path)
    return path, model


def test_local_judge_asks_both_orders_deterministically(judge_model, sets, monkeypatch):
    _, model = judge_model
    pairs = pair_responses(*(read_responses(p) for p in sets))
    seen = []
    original = LocalJudge.verdict_logprobs
    monkeypatch.setattr(LocalJudge, "verdict_logprobs", lambda self, asks: seen.append(list(asks)) or original(self, asks))
    local = LocalJudge(model, _tokenizer(chat=True), batch_size=3)
    assert local.use_chat and local.encode(Ask("p", "x", "y"))[-1] == local.tokenizer.convert_tokens_to_ids("<|assistant|>")
    first = run_judge(pairs, local)
    assert seen == [[*swapped_asks(pairs)[0], *swapped_asks(pairs)[1]]]
    assert run_judge(pairs, local) == first
    one_by_one = LocalJudge(model, _tokenizer(chat=True), batch_size=1)
    torch.testing.assert_close(one_by_one.verdict_logprobs(seen[0]), original(local, seen[0]), atol=1e-5, rtol=0)
    lp = first["pairs"][0]["a_first"]
    assert lp["choice"] == ("first" if lp["logprob_first"] > lp["logprob_second"] else "second")
    # a margin wider than any gap makes every ask a tie
    wide = run_judge(pairs, LocalJudge(model, _tokenizer(chat=True), tie_margin=100.0))
    assert wide["summary"]["ties"] == 4


def test_local_judge_plain_text_and_unknown_verdict_tokens(judge_model):
    _, model = judge_model
    plain = LocalJudge(model, _tokenizer(chat=True), chat_template=False)
    assert not plain.use_chat and plain.encode(Ask("p", "x", "y"))[-1] == plain.tokenizer.convert_tokens_to_ids(":")
    assert not LocalJudge(model, _tokenizer(chat=False)).use_chat
    with pytest.raises(LsMergeError, match="cannot tell the verdicts"):
        LocalJudge(model, _tokenizer(chat=False, verdict_words=False))


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
        (["--responses_a", str(sets[0]), "--responses_b", str(sets[1]), "--model", str(tmp_path / "nope")], "does not exist"),
        (["--responses_a", str(sets[0]), "--responses_b", str(sets[1])], "needs --model"),
        (["--responses_a", str(sets[0]), "--responses_b", str(sets[1]), "--model", str(path), "--judge", "oracle"], "unknown judge"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as e:
            main(["judge", *args, "--out", str(out)])
        assert e.value.code == 1 and message in capsys.readouterr().err
    assert not out.parent.exists()


# -- the endpoint judge ----------------------------------------------------------------------

KEY = "sk-test-123"


class Server:
    """A chat-completions server on 127.0.0.1 with canned verdicts; records every request."""

    def __init__(self):
        self.requests, self.script = [], []  # script: (status, reply) served before the default answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, reply = server.script.pop(0) if server.script else (200, server.answer(body))
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    status, reply = 401, "bad key"
                payload = {"choices": [{"message": {"role": "assistant", "content": reply}}]} if status == 200 else {"error": reply}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @staticmethod
    def answer(body) -> str:
        """Prefers the response containing "good", in a chatty way the parser must read."""
        text = body["messages"][-1]["content"]
        first = text.split("[Response A]\n", 1)[1].split("\n\n[Response B]", 1)[0]
        return "[[A]] because it is good" if "good" in first else "Response B is better."


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("LSMERGE_JUDGE_BASE_URL", raising=False)
    monkeypatch.setenv("LSMERGE_JUDGE_API_KEY", KEY)
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_endpoint_judge_end_to_end(server, sets, tmp_path, monkeypatch, capsys):
    from lsmerge.cli import main

    monkeypatch.setenv("LSMERGE_JUDGE_BASE_URL", server.base_url + "/")
    out = tmp_path / "endpoint.json"
    main(["judge", "--judge", "endpoint", "--model", "judge-7b", "--responses_a", str(sets[0]),
          "--responses_b", str(sets[1]), "--out", str(out)])  # fmt: skip
    assert len(server.requests) == 8
    for r in server.requests:
        assert r["path"] == "/v1/chat/completions" and r["auth"] == f"Bearer {KEY}"
        assert r["body"]["model"] == "judge-7b" and r["body"]["temperature"] == 0
        assert "[Response A]" in r["body"]["messages"][-1]["content"]
    shown_first = [r["body"]["messages"][-1]["content"].split("[Response A]\n")[1].split("\n")[0] for r in server.requests]
    assert shown_first == GOOD + BAD  # A first for every pair, then B first
    result = json.loads(out.read_text())
    assert result["summary"]["wins"] == 4 and result["summary"]["unparsed"] == 0
    assert result["pairs"][0]["b_first"]["reply"] == "Response B is better."
    assert result["settings"]["base_url"] == server.base_url
    assert KEY not in out.read_text() and KEY not in capsys.readouterr().out


def test_endpoint_refuses_without_base_url_or_key(server, sets, tmp_path, monkeypatch):
    out = tmp_path / "never.json"
    kwargs = dict(responses_a=str(sets[0]), responses_b=str(sets[1]), judge="endpoint", model="m", out=str(out))
    with pytest.raises(LsMergeError, match="no base URL"):
        judge(**kwargs)
    with pytest.raises(LsMergeError, match="http"):
        judge(**kwargs, base_url="127.0.0.1:8000")
    monkeypatch.delenv("LSMERGE_JUDGE_API_KEY")
    with pytest.raises(LsMergeError, match="LSMERGE_JUDGE_API_KEY"):
        judge(**kwargs, base_url=server.base_url)
    assert server.requests == [] and not out.exists()


def test_endpoint_retries_and_errors(server, capsys):
    ask = [Ask("p", "x good", "y")]
    endpoint = EndpointJudge(server.base_url, KEY, "m", retries=2, retry_wait=0.0)
    server.script = [(500, "overloaded"), (429, "slow down")]
    assert endpoint.judge(ask)[0].choice == "first" and len(server.requests) == 3
    server.script = [(500, "down")] * 3
    with pytest.raises(LsMergeError, match="failed after 3 attempts.*HTTP 500"):
        endpoint.judge(ask)
    server.script = [(404, "no such model")]
    with pytest.raises(LsMergeError, match="refused the request.*404"):
        endpoint.judge(ask)
    with pytest.raises(LsMergeError, match="refused the request.*401"):
        EndpointJudge(server.base_url, "wrong", "m", retry_wait=0.0).judge(ask)
    # unreadable replies: a tie with a warning; all unreadable is an error quoting the reply
    server.script = [(200, "I cannot decide")]
    verdicts = endpoint.judge(ask + ask)
    assert verdicts[0].choice == "tie" and not verdicts[0].detail["parsed"] and verdicts[1].choice == "first"
    assert "unparseable" in capsys.readouterr().err
    server.script = [(200, "hmm")]
    with pytest.raises(LsMergeError, match="'hmm'"):
        endpoint.judge(ask)


def test_endpoint_unreachable(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    endpoint = EndpointJudge(f"http://127.0.0.1:{port}/v1", KEY, "m", retries=1, retry_wait=0.0, timeout=2)
    with pytest.raises(LsMergeError, match="failed after 2 attempts"):
        endpoint.judge([Ask("p", "a", "b")])
