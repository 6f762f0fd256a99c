"""`EndpointJudge`: an OpenAI-compatible chat-completions endpoint as judge (standard library only).

The base URL is one the user configures (option or LSMERGE_JUDGE_BASE_URL; there is no default),
the API key is read only from LSMERGE_JUDGE_API_KEY. Replies are read by `parse_verdict`; one that
cannot be read counts as a tie with a warning, and all replies unreadable is an error.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

from lsmerge.errors import LsMergeError
from lsmerge.io.provenance import redact_url
from lsmerge.evaluate.judge.responses import Ask
from lsmerge.evaluate.judge.verdicts import Judge, Verdict, judge_text, parse_verdict

BASE_URL_ENV = "LSMERGE_JUDGE_BASE_URL"
API_KEY_ENV = "LSMERGE_JUDGE_API_KEY"


def resolve_endpoint(base_url: str | None) -> tuple[str, str]:
    """(base URL, API key) from the option or the environment; refuses when either is missing."""
    url = base_url or os.environ.get(BASE_URL_ENV)
    if not url:
        raise LsMergeError(
            f"the endpoint judge has no base URL and lsmerge has no default one: set {BASE_URL_ENV} "
            "(e.g. http://127.0.0.1:8000/v1) or pass --base_url. Nothing was sent."
        )
    if not re.match(r"^https?://[^/\s]+", url):
        raise LsMergeError(f"base URL {redact_url(url)!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1.")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise LsMergeError(f"base URL {redact_url(url)!r} carries credentials (user:password@); remove them and put the key "
                           f"in {API_KEY_ENV}. Nothing was sent.")
    key = os.environ.get(API_KEY_ENV)
    if not key:
        raise LsMergeError(
            f"the endpoint judge needs an API key in {API_KEY_ENV} (it is read only from the environment; "
            "for a local server without keys set any value, e.g. none)."
        )
    return url.rstrip("/"), key


def warn_plain_http(url: str) -> None:
    """Warn on stderr when `url` is plain http to a host other than this machine."""
    if url.startswith("http://") and not re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\])[:/]", url + "/"):
        print(f"warning: {redact_url(url)} is plain http to another host; the API key and prompts travel unencrypted.", file=sys.stderr)


class EndpointJudge(Judge):
    """An OpenAI-compatible chat-completions endpoint as judge, at `<base_url>/chat/completions`.

    Temperature 0, one request per ask. Connection errors, timeouts, 429 and 5xx replies are
    retried `retries` times with doubling waits from `retry_wait` seconds; other HTTP errors fail
    at once. Replies are read by `parse_verdict`; unreadable ones become ties with a warning.
    """

    def __init__(self, base_url: str, api_key: str, model: str, *, timeout: float = 60.0, retries: int = 3,
                 retry_wait: float = 1.0, max_tokens: int = 16):  # fmt: skip
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key, self.model = api_key, model
        self.timeout, self.retries, self.retry_wait, self.max_tokens = timeout, retries, retry_wait, max_tokens
        self.name = f"endpoint {model} at {redact_url(base_url)}"
        self.shown_url = redact_url(self.url)  # what messages show: no credentials

    def request_body(self, ask: Ask) -> dict:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": "You are an impartial judge of response quality. Reply with A, B or tie only."},
                {"role": "user", "content": judge_text(ask)},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }

    def complete(self, body: dict) -> str:
        """The assistant message text for one request body, with retries."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_wait * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                last_error = f"HTTP {e.code}: {detail}"
                if e.code != 429 and e.code < 500:
                    raise LsMergeError(
                        f"the judge endpoint {self.shown_url} refused the request ({last_error}); check the base URL, "
                        f"the model name {self.model!r} and {API_KEY_ENV}."
                    ) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last_error = str(getattr(e, "reason", e))
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise LsMergeError(
                    f"the judge endpoint {self.shown_url} did not answer like a chat-completions API; "
                    "check that the base URL ends in the API root (e.g. .../v1)."
                ) from None
        raise LsMergeError(
            f"the judge endpoint {self.shown_url} failed after {self.retries + 1} attempts (last: {last_error}); "
            "check that the server is up, or raise --timeout / --retries."
        )

    def judge(self, asks: list[Ask]) -> list[Verdict]:
        verdicts = []
        for ask in asks:
            reply = self.complete(self.request_body(ask))
            choice = parse_verdict(reply)
            if choice is None:
                print(f"warning: unparseable judge reply counted as a tie: {reply[:200]!r}", file=sys.stderr)
            verdicts.append(Verdict(choice or "tie", {"reply": reply, "parsed": choice is not None}))
        if verdicts and not any(v.detail["parsed"] for v in verdicts):
            raise LsMergeError(
                f"no reply of the judge could be read as A, B or tie (first reply: {verdicts[0].detail['reply'][:200]!r}); "
                "use a model that follows the instruction or raise --max_tokens."
            )
        return verdicts
