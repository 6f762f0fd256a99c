"""The `lsmerge judge` command: every check before any work, then ask both orders, print, write.

`run_judge` asks a judge about every pair with A shown first and with B shown first (one batch
of 2n asks), combines the two verdicts of each pair (`verdicts.combine`) and summarises
(`stats.summarize`); `judge` is the command around it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.judge.endpoint import EndpointJudge, resolve_endpoint, warn_plain_http
from lsmerge.evaluate.judge.local import LocalJudge
from lsmerge.evaluate.judge.responses import Pair, pair_responses, read_responses, swapped_asks
from lsmerge.evaluate.judge.stats import format_summary, summarize
from lsmerge.evaluate.judge.verdicts import Judge, combine, winner_in_order
from lsmerge.io.atomic import write_text_atomic
from lsmerge.io.hf import load_causal_lm, load_tokenizer, resolve_model
from lsmerge.io.provenance import redact_url
from lsmerge.io.text import EncodingErrors
from lsmerge.torch_options import DtypeName

JudgeKind = Literal["local", "endpoint"]


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
    judge: JudgeKind = "local",
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
    dtype: DtypeName = "float32",
    device: str = "cpu",
    encoding_errors: EncodingErrors = "strict",
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
        model: local: the judge checkpoint folder or a name under checkpoints/base/ (e.g.
            smollm2-135m-instruct); endpoint: the model name sent to the server.
        base_url: endpoint API root, e.g. http://127.0.0.1:8000/v1; default: the
            LSMERGE_JUDGE_BASE_URL environment variable. There is no built-in URL. The API key is
            read only from LSMERGE_JUDGE_API_KEY and never written; a URL with user:password@ is
            refused, and secret-looking query values (key, token, ...) are redacted in outputs.
        out: JSON file for the per-pair verdicts and the summary (written atomically).
        batch_size: local: judging prompts per forward pass.
        tie_margin: local: log-probability gap (nats) of "A" over "B" within which an ask is a tie.
        chat_template: local: wrap the judging prompt in the tokenizer's chat template if it has one.
        confidence: confidence level of the Wilson interval, in (0, 1).
        timeout: endpoint: seconds to wait for each reply.
        retries: endpoint: retries after a connection error, timeout, 429 or 5xx reply.
        max_tokens: endpoint: most tokens of each reply.
        dtype: local: model dtype (fp32, bf16, fp16 are aliases).
        device: local: torch device (cpu, cuda, auto).
        encoding_errors: strict (a response file that is not UTF-8 is an error) or replace (bad bytes become U+FFFD).

    Returns:
        {"settings", "summary", "pairs"}, as written to `out`.
    """
    # -- every check before any work -------------------------------------------------------
    if judge not in get_args(JudgeKind):  # for Python callers: the command line refuses others itself
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
    pairs = pair_responses(read_responses(responses_a, encoding_errors), read_responses(responses_b, encoding_errors),
                           name_a, name_b)
    settings = {"responses_a": str(responses_a), "responses_b": str(responses_b), "judge": judge, "model": model,
                "rule": "a win must survive the position swap; otherwise tie"}  # fmt: skip
    if judge == "endpoint":
        warn_plain_http(url)
        judge_impl: Judge = EndpointJudge(url, key, model, timeout=timeout, retries=retries, max_tokens=max_tokens)
        settings.update(base_url=redact_url(url), max_tokens=max_tokens, temperature=0)
    else:
        model_path = resolve_model(model)  # a folder or a name under checkpoints/base/ (lsmerge fetch)
        tokenizer = load_tokenizer(model_path)
        judge_impl = LocalJudge(load_causal_lm(model_path, dtype, device), tokenizer, batch_size=batch_size,
                                tie_margin=tie_margin, chat_template=chat_template, name=f"local {Path(model).name}")  # fmt: skip
        settings.update(tie_margin=tie_margin, chat_template=judge_impl.use_chat, dtype=dtype)

    # -- run ---------------------------------------------------------------------------------
    result = {"settings": settings, **run_judge(pairs, judge_impl, confidence)}
    print(format_summary(result["summary"], name_a, name_b, judge_impl.name))
    if out is not None:
        write_text_atomic(Path(out), json.dumps(result, indent=2) + "\n")  # ASCII: locale-proof
        print(f"wrote {out}")
    return result
