"""Verdicts: the judging prompt every judge sees, reading a judge's reply, combining two orders.

Each ask returns a verdict about the positions, "first", "second" or "tie"; the verdicts with A
shown first and with B shown first are combined by position-swap debiasing:

    A first    B first    combined
    first      second     A      (A preferred in both orders)
    second     first      B      (B preferred in both orders)
    anything else         tie    (a win that does not survive the swap, or a tie in either order)

so a judge that always picks the first position yields only ties. Pairs whose two verdicts
name different winners are counted as position flips, a measure of the judge's position bias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from lsmerge.evaluate.judge.responses import Ask

CHOICES = ("first", "second", "tie")

JUDGE_INSTRUCTION = (
    "You are judging two responses to the same user prompt. Decide which response is better: "
    "more helpful, correct, relevant and clear. Ignore the order in which they are shown and their length."
)
JUDGE_QUESTION = "Which response is better? Answer with exactly one of: A, B, tie."


@dataclass
class Verdict:
    """A judge's answer to one ask: `choice` is "first", "second" or "tie"; `detail` what it was based on."""

    choice: str
    detail: dict = field(default_factory=dict)


class Judge(Protocol):
    """The interface: `judge(asks)` answers each ask with a Verdict, in order."""

    name: str

    def judge(self, asks: list[Ask]) -> list[Verdict]: ...


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
