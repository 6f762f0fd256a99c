"""Response sets for the judge: read JSONL, pair two sets by id or prompt, make the swapped asks.

A response set is what `lsmerge generate` writes: one JSON object per line with a "prompt" (a
string or a chat message list) and a string "response"; an "id" field is used for pairing when
every record of both sets has one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

from lsmerge.errors import LsMergeError
from lsmerge.io.text import read_text


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


def read_responses(path: str | os.PathLike, encoding_errors: str = "strict") -> list[dict]:
    """Records of a JSONL response set; each line an object with a "prompt" and a string "response"."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise LsMergeError(f"response set {path} does not exist; write it with `lsmerge generate --output {path}`.")
    records = []
    for line_no, line in enumerate(read_text(path, "response set", encoding_errors).splitlines(), 1):
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
