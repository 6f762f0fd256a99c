"""Pairwise judging of two response sets (`lsmerge judge`).

Two JSONL files written by `lsmerge generate` (one object per line with "prompt" and
"response"; an "id" field is used when every record has one) are paired and each pair is shown
to a judge twice: A first, then B first. Each ask returns a verdict about the positions, "first",
"second" or "tie", and the two are combined by position-swap debiasing:

    A first    B first    combined
    first      second     A      (A preferred in both orders)
    second     first      B      (B preferred in both orders)
    anything else         tie    (a win that does not survive the swap, or a tie in either order)

so a judge that always picks the first position yields only ties. Pairs whose two verdicts
name different winners are counted as position flips, a measure of the judge's position bias.

The summary scores A with ties as half a win, s = (wins + ties / 2) / n, and gives a Wilson score
interval at the chosen confidence level (z from the normal quantile):

    centre = (s + z^2 / 2n) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(s (1 - s) / n + z^2 / 4n^2)

Judges sit behind one interface, `judge(asks) -> verdicts`, batched as fits:
- `LocalJudge`: a transformers causal LM; compares the log-probabilities of the verdict tokens
  ("A", "B") as the next token after the judging prompt; within `tie_margin` nats it is a tie.
- `EndpointJudge`: an OpenAI-compatible chat-completions endpoint (standard library only) at a
  base URL the user configures; the reply is parsed by `parse_verdict`, and a reply that cannot
  be parsed counts as a tie with a warning (all replies unparseable is an error).
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import write_text_atomic

BASE_URL_ENV = "LSMERGE_JUDGE_BASE_URL"
API_KEY_ENV = "LSMERGE_JUDGE_API_KEY"
CHOICES = ("first", "second", "tie")

JUDGE_INSTRUCTION = (
    "You are judging two responses to the same user prompt. Decide which response is better: "
    "more helpful, correct, relevant and clear. Ignore the order in which they are shown and their length."
)
JUDGE_QUESTION = "Which response is better? Answer with exactly one of: A, B, tie."


# -- response sets and pairing ---------------------------------------------------------------


class Pair(NamedTuple):
    key: str
    prompt: str | list
    response_a: str
    response_b: str


class Ask(NamedTuple):
    """One question to a judge: the prompt and two responses in the order they are shown."""

    prompt: str | list
    first: str
    second: str


def read_responses(path: str | os.PathLike) -> list[dict]:
    """Records of a JSONL response set; each line an object with a "prompt" and a string "response"."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LsMergeError(f"response set {path} does not exist; write it with `lsmerge generate --output {path}`.")
    records = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LsMergeError(f"{path}:{line_no}: not valid JSON ({e.msg}); each line must be one JSON object.") from None
            if not isinstance(record, dict) or "prompt" not in record or not isinstance(record.get("response"), str):
                raise LsMergeError(
                    f"{path}:{line_no}: each line needs a \"prompt\" and a string \"response\" "
                    "(the records `lsmerge generate` writes)."
                )
            records.append(record)
    if not records:
        raise LsMergeError(f"response set {path} is empty; it needs one JSON object per line.")
    return records


def _prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _keyed(records: list[dict], by: str, name: str) -> dict[str, dict]:
    keyed = {}
    for record in records:
        key = str(record["id"]) if by == "id" else _prompt_key(record["prompt"])
        if key in keyed:
            raise LsMergeError(
                f"{name} has two records with the {by} {key!r}; pairing needs each {by} once. "
                "Remove the duplicate or give every record a unique \"id\"."
            )
        keyed[key] = record
    return keyed


def pair_responses(records_a: list[dict], records_b: list[dict], name_a: str = "A", name_b: str = "B") -> list[Pair]:
    """Pair two response sets by "id" (when every record has one) or else by prompt, in A's order.

    The sets must cover the same prompts: the first one missing from either side is named.
    """
    by = "id" if all("id" in r for r in [*records_a, *records_b]) else "prompt"
    keyed_a, keyed_b = _keyed(records_a, by, name_a), _keyed(records_b, by, name_b)
    for keys, other, here, there in ((keyed_a, keyed_b, name_a, name_b), (keyed_b, keyed_a, name_b, name_a)):
        for key in keys:
            if key not in other:
                raise LsMergeError(
                    f"the response sets do not match: {by} {key!r} is in {here} but not in {there}. "
                    "Generate both sets from the same prompts."
                )
    pairs = []
    for key, a in keyed_a.items():
        b = keyed_b[key]
        if by == "id" and _prompt_key(a["prompt"]) != _prompt_key(b["prompt"]):
            raise LsMergeError(
                f"id {key!r} has different prompts in {name_a} and {name_b} ({a['prompt']!r} vs {b['prompt']!r}); "
                "ids must name the same prompt in both sets."
            )
        pairs.append(Pair(key, a["prompt"], a["response"], b["response"]))
    return pairs


def swapped_asks(pairs: list[Pair]) -> tuple[list[Ask], list[Ask]]:
    """The asks with A shown first and the asks with B shown first, one each per pair."""
    return [Ask(p.prompt, p.response_a, p.response_b) for p in pairs], [Ask(p.prompt, p.response_b, p.response_a) for p in pairs]


# -- verdicts and statistics -----------------------------------------------------------------


@dataclass
class Verdict:
    """A judge's answer to one ask: `choice` is "first", "second" or "tie"; `detail` what it was based on."""

    choice: str
    detail: dict = field(default_factory=dict)


def combine(a_first: str, b_first: str) -> str:
    """Winner of a pair ("A", "B" or "tie") from the verdicts with A shown first and with B shown first."""
    for choice in (a_first, b_first):
        if choice not in CHOICES:
            raise ValueError(f"verdict {choice!r} is not one of {CHOICES}")
    if a_first == "first" and b_first == "second":
        return "A"
    if a_first == "second" and b_first == "first":
        return "B"
    return "tie"


def winner_in_order(choice: str, a_shown_first: bool) -> str:
    """The response a single verdict prefers: "A", "B" or "tie"."""
    if choice == "tie":
        return "tie"
    return "A" if (choice == "first") == a_shown_first else "B"


def wilson_interval(score: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `score` observed over n trials."""
    if n <= 0:
        raise ValueError("n must be positive")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    denom = 1 + z * z / n
    centre = (score + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(score * (1 - score) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(winners: list[str], confidence: float = 0.95, flips: int = 0) -> dict:
    """Counts, rates, the half-tie score of A and its Wilson interval from per-pair winners."""
    n = len(winners)
    wins, losses = winners.count("A"), winners.count("B")
    ties = n - wins - losses
    score = (wins + ties / 2) / n
    low, high = wilson_interval(score, n, confidence)
    return {
        "pairs": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_rate": wins / n,
        "tie_rate": ties / n,
        "loss_rate": losses / n,
        "score": score,
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "ci_method": "wilson interval on (wins + ties/2) / pairs",
        "position_flips": flips,
    }


def format_summary(summary: dict, name_a: str, name_b: str, judge_name: str) -> str:
    """The win / tie / loss table printed by the command."""
    n = summary["pairs"]
    rows = [(f"A wins ({name_a})", "wins", "win_rate"), ("ties", "ties", "tie_rate"), (f"B wins ({name_b})", "losses", "loss_rate")]
    width = max(len(label) for label, _, _ in rows)
    lines = [
        f"A = {name_a}   B = {name_b}   judge = {judge_name}   pairs = {n} (each asked in both orders)",
        "",
        f"{'':<{width}}  {'count':>5}  {'rate':>6}",
        *(f"{label:<{width}}  {summary[count]:>5}  {summary[rate]:>6.3f}" for label, count, rate in rows),
        "",
        f"score of A (ties count 1/2): {summary['score']:.3f}, "
        f"{summary['confidence']:.0%} Wilson interval [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}]",
        f"position flips (the winner changed with the order): {summary['position_flips']} of {n}",
    ]
    if summary.get("unparsed"):
        lines.append(f"unparseable replies counted as ties: {summary['unparsed']}")
    return "\n".join(lines)


# -- judging prompt and reply parsing --------------------------------------------------------


def render_prompt(prompt: str | list) -> str:
    """A prompt as text: a string as is, a chat message list as "role: content" lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def judge_text(ask: Ask) -> str:
    """The judging question for one ask (the same text for every judge)."""
    return (
        f"{JUDGE_INSTRUCTION}\n\n"
        f"[User prompt]\n{render_prompt(ask.prompt)}\n\n"
        f"[Response A]\n{ask.first}\n\n"
        f"[Response B]\n{ask.second}\n\n"
        f"{JUDGE_QUESTION}"
    )


_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_WHOLE = {
    "a": "first", "response a": "first", "assistant a": "first",
    "b": "second", "response b": "second", "assistant b": "second",
    "tie": "tie", "c": "tie", "draw": "tie", "equal": "tie", "both": "tie", "neither": "tie",
}  # fmt: skip
_LEADING = re.compile(
    r"^(?:(?i:verdict|answer|final verdict|the better response is)\s*:?\s*)?(A|B|(?i:tie))"
    r"(?:$|[^\w\s']|\s+(?:is|wins|was|because|-)(?:\W|$))"
)
_NAMED = re.compile(r"\b(?i:response|assistant|answer)\s+(A|B)\b")


def parse_verdict(reply: str) -> str | None:
    """"first", "second" or "tie" from a judge's reply, or None when it cannot be read.

    Accepted, in order: "[[A]]" / "[[B]]" / "[[tie]]" (or "[[C]]"); the whole reply being A, B,
    tie (or "Response A", "draw", ...) up to punctuation and markdown; a first line starting with
    A, B or tie and then punctuation, the end, or "is" / "wins" / "because" ("B. It is
    correct", "Verdict: A", "A is better"; not "A good answer ..."); exactly one of "Response A" / "Response B"
    named in the reply.
    """
    text = reply.strip()
    bracketed = {m.lower() for m in _BRACKETED.findall(text)}
    if len(bracketed) == 1:
        return {"a": "first", "b": "second"}.get(bracketed.pop(), "tie")
    bare = re.sub(r"[\s*_`'\"().!:\-]+", " ", text).strip().lower()
    if bare in _WHOLE:
        return _WHOLE[bare]
    first_line = re.sub(r"^[\s*_`#>\"']+", "", text.splitlines()[0] if text else "")
    m = _LEADING.match(first_line)
    if m:
        return {"a": "first", "b": "second"}.get(m.group(1).lower(), "tie")
    named = {m.upper() for m in _NAMED.findall(text)}
    if len(named) == 1:
        return "first" if named.pop() == "A" else "second"
    return None


# -- judges ----------------------------------------------------------------------------------


class Judge(Protocol):
    """The interface: `judge(asks)` answers each ask with a Verdict, in order."""

    name: str

    def judge(self, asks: list[Ask]) -> list[Verdict]: ...


class LocalJudge(Judge):
    """A causal LM as judge: the verdict whose token is likelier next after the judging prompt.

    The judging prompt is wrapped in the tokenizer's chat template (as a user turn, with the
    generation prompt) when it has one and `chat_template` is on; otherwise it is plain text
    ending in "Answer:" and the verdict tokens carry a leading space. The scores are the
    log-probabilities of the first token of each label ("A", "B"); if they differ by at most
    `tie_margin` nats the verdict is a tie. Prompts are right-padded in batches of `batch_size`
    and read at their last real position, so batching does not change the verdicts.
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 4, tie_margin: float = 0.0, chat_template: bool = True,
                 labels: tuple[str, str] = ("A", "B"), name: str = "local"):  # fmt: skip
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.tie_margin, self.name = batch_size, tie_margin, name
        self.use_chat = bool(chat_template and getattr(tokenizer, "chat_template", None))
        prefix = "" if self.use_chat else " "
        self.label_ids = []
        for label in labels:
            ids = tokenizer.encode(prefix + label, add_special_tokens=False)
            if not ids:
                raise LsMergeError(f"the judge's tokenizer gives no token for the verdict {label!r}; use another judge model.")
            self.label_ids.append(ids[0])
        if len(set(self.label_ids)) < len(self.label_ids) or tokenizer.unk_token_id in self.label_ids:
            raise LsMergeError(
                f"the judge's tokenizer cannot tell the verdicts {labels} apart by their first token "
                f"(ids {self.label_ids}); use a judge model whose vocabulary has them."
            )

    def encode(self, ask: Ask) -> list[int]:
        """Token ids of the judging prompt for one ask, ending right before the verdict."""
        text = judge_text(ask)
        if self.use_chat:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            return self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return self.tokenizer(f"{text}\nAnswer:", add_special_tokens=True)["input_ids"]

    @torch.inference_mode()
    def verdict_logprobs(self, asks: list[Ask]) -> torch.Tensor:
        """(n, 2) float32 log-probabilities of the first and second label as the next token."""
        device = next(self.model.parameters()).device
        encoded = [self.encode(a) for a in asks]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            lengths = torch.tensor([len(ids) for ids in batch])
            input_ids = torch.full((len(batch), int(lengths.max())), pad_id, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for i, ids in enumerate(batch):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention_mask[i, : len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            last = logits[torch.arange(len(batch), device=device), (lengths - 1).to(device)].float()  # (b, vocab)
            out.append(torch.log_softmax(last, dim=-1)[:, self.label_ids].cpu())
        return torch.cat(out)

    def judge(self, asks: list[Ask]) -> list[Verdict]:
        verdicts = []
        for lp_first, lp_second in self.verdict_logprobs(asks).tolist():
            margin = lp_first - lp_second
            choice = "first" if margin > self.tie_margin else "second" if margin < -self.tie_margin else "tie"
            verdicts.append(Verdict(choice, {"logprob_first": lp_first, "logprob_second": lp_second}))
        return verdicts


def resolve_endpoint(base_url: str | None) -> tuple[str, str]:
    """(base URL, API key) from the option or the environment; refuses when either is missing."""
    url = base_url or os.environ.get(BASE_URL_ENV)
    if not url:
        raise LsMergeError(
            f"the endpoint judge has no base URL and lsmerge has no default one: set {BASE_URL_ENV} "
            "(e.g. http://127.0.0.1:8000/v1) or pass --base_url. Nothing was sent."
        )
    if not re.match(r"^https?://[^/\s]+", url):
        raise LsMergeError(f"base URL {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1.")
    key = os.environ.get(API_KEY_ENV)
    if not key:
        raise LsMergeError(
            f"the endpoint judge needs an API key in {API_KEY_ENV} (it is read only from the environment; "
            "for a local server without keys set any value, e.g. none)."
        )
    return url.rstrip("/"), key


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
        self.name = f"endpoint {model} at {base_url}"

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
                        f"the judge endpoint {self.url} refused the request ({last_error}); check the base URL, "
                        f"the model name {self.model!r} and {API_KEY_ENV}."
                    ) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last_error = str(getattr(e, "reason", e))
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise LsMergeError(
                    f"the judge endpoint {self.url} did not answer like a chat-completions API; "
                    "check that the base URL ends in the API root (e.g. .../v1)."
                ) from None
        raise LsMergeError(
            f"the judge endpoint {self.url} failed after {self.retries + 1} attempts (last: {last_error}); "
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


# -- running ---------------------------------------------------------------------------------


def run_judge(pairs: list[Pair], judge: Judge, confidence: float = 0.95) -> dict:
    """Ask `judge` about every pair in both orders; per-pair records and the summary."""
    a_first, b_first = swapped_asks(pairs)
    verdicts = judge.judge(a_first + b_first)
    n = len(pairs)
    records, winners, flips, unparsed = [], [], 0, 0
    for pair, va, vb in zip(pairs, verdicts[:n], verdicts[n:]):
        winner = combine(va.choice, vb.choice)
        order_winners = {winner_in_order(va.choice, True), winner_in_order(vb.choice, False)}
        flips += order_winners == {"A", "B"}
        unparsed += sum(v.detail.get("parsed") is False for v in (va, vb))
        winners.append(winner)
        records.append({
            "key": pair.key, "prompt": pair.prompt, "winner": winner,
            "a_first": {"choice": va.choice, "prefers": winner_in_order(va.choice, True), **va.detail},
            "b_first": {"choice": vb.choice, "prefers": winner_in_order(vb.choice, False), **vb.detail},
        })  # fmt: skip
    summary = summarize(winners, confidence, flips)
    summary["unparsed"] = unparsed
    return {"summary": summary, "pairs": records}


def judge(
    *,
    responses_a: str,
    responses_b: str,
    judge: str = "local",
    model: str | None = None,
    base_url: str | None = None,
    out: str | None = None,
    batch_size: int = 4,
    tie_margin: float = 0.0,
    chat_template: bool = True,
    confidence: float = 0.95,
    timeout: float = 60.0,
    retries: int = 3,
    max_tokens: int = 16,
    dtype: str = "float32",
    device: str = "cpu",
) -> dict:
    """Compare two response sets pairwise with a judge, each pair asked in both orders.

    Records are paired by "id" (when every record has one) or by prompt. A pair is won only if
    the judge prefers the same response with A shown first and with B shown first; anything else
    is a tie. Prints win / tie / loss counts and rates of A against B, and the score of A (ties
    count half) with a Wilson interval.

    Args:
        responses_a: JSONL response set A (as written by `lsmerge generate --output`).
        responses_b: JSONL response set B over the same prompts.
        judge: local (a Hugging Face causal LM scored by verdict-token log-probabilities) or
            endpoint (an OpenAI-compatible chat-completions server).
        model: local: the judge checkpoint folder; endpoint: the model name sent to the server.
        base_url: endpoint API root, e.g. http://127.0.0.1:8000/v1; default: the
            LSMERGE_JUDGE_BASE_URL environment variable. There is no built-in URL. The API key is
            read only from LSMERGE_JUDGE_API_KEY.
        out: JSON file for the per-pair verdicts and the summary (written atomically).
        batch_size: local: judging prompts per forward pass.
        tie_margin: local: log-probability gap (nats) of "A" over "B" within which an ask is a tie.
        chat_template: local: wrap the judging prompt in the tokenizer's chat template if it has one.
        confidence: confidence level of the Wilson interval, in (0, 1).
        timeout: endpoint: seconds to wait for each reply.
        retries: endpoint: retries after a connection error, timeout, 429 or 5xx reply.
        max_tokens: endpoint: most tokens of each reply.
        dtype: local: float32 | bfloat16 | float16.
        device: local: torch device (cpu, cuda, auto).

    Returns:
        {"settings", "summary", "pairs"}, as written to `out`.
    """
    # -- every check before any work -------------------------------------------------------
    if judge not in ("local", "endpoint"):
        raise LsMergeError(f"unknown judge {judge!r}; use --judge local or --judge endpoint.")
    if not model:
        what = "a checkpoint folder" if judge == "local" else "the model name the server serves"
        raise LsMergeError(f"the {judge} judge needs --model ({what}).")
    if not 0 < confidence < 1:
        raise LsMergeError(f"confidence={confidence} must be between 0 and 1, e.g. 0.95.")
    if batch_size < 1 or retries < 0 or timeout <= 0 or max_tokens < 1 or tie_margin < 0:
        raise LsMergeError("batch_size and max_tokens must be at least 1, retries and tie_margin at least 0, timeout positive.")
    if out is not None and Path(out).exists() and not Path(out).is_file():
        raise LsMergeError(f"output {out} exists and is not a file; choose another --out.")
    if judge == "endpoint":
        url, key = resolve_endpoint(base_url)
    name_a, name_b = Path(responses_a).stem, Path(responses_b).stem
    if name_a == name_b:
        name_a, name_b = str(responses_a), str(responses_b)
    pairs = pair_responses(read_responses(responses_a), read_responses(responses_b), name_a, name_b)
    settings = {"responses_a": str(responses_a), "responses_b": str(responses_b), "judge": judge, "model": model,
                "rule": "a win must survive the position swap; otherwise tie"}  # fmt: skip
    if judge == "endpoint":
        if url.startswith("http://") and not re.match(r"^http://(127\.0\.0\.1|localhost|\[::1\])[:/]", url + "/"):
            print(f"warning: {url} is plain http to another host; the API key and prompts travel unencrypted.", file=sys.stderr)
        judge_impl: Judge = EndpointJudge(url, key, model, timeout=timeout, retries=retries, max_tokens=max_tokens)
        settings.update(base_url=url, max_tokens=max_tokens, temperature=0)
    else:
        from lsmerge.io.hf import load_causal_lm, load_tokenizer

        if not Path(model).is_dir():
            raise LsMergeError(f"judge model folder {model} does not exist; run `lsmerge fetch` or give a checkpoint folder.")
        tokenizer = load_tokenizer(model)
        judge_impl = LocalJudge(load_causal_lm(model, dtype, device), tokenizer, batch_size=batch_size,
                                tie_margin=tie_margin, chat_template=chat_template, name=f"local {Path(model).name}")  # fmt: skip
        settings.update(tie_margin=tie_margin, chat_template=judge_impl.use_chat, dtype=dtype)

    # -- run ---------------------------------------------------------------------------------
    result = {"settings": settings, **run_judge(pairs, judge_impl, confidence)}
    print(format_summary(result["summary"], name_a, name_b, judge_impl.name))
    if out is not None:
        write_text_atomic(Path(out), json.dumps(result, indent=2) + "\n")  # ASCII: locale-proof
        print(f"wrote {out}")
    return result
