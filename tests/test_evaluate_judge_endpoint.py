"""`lsmerge.evaluate.judge.endpoint`: an OpenAI-compatible server on 127.0.0.1, end to end through
the command; base URL and key refusals, retries, unreadable replies, an unreachable server."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.judge.command import judge
from lsmerge.evaluate.judge.endpoint import EndpointJudge
from lsmerge.evaluate.judge.responses import Ask
from tests.judge_helpers import BAD, GOOD, good_and_bad_sets


@pytest.fixture
def sets(tmp_path):
    return good_and_bad_sets(tmp_path)


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
