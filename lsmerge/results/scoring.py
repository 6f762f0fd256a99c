"""Scoring a results row: perplexity of a checkpoint or a hidden-state mix on every corpus of the
plan's eval, one tokenisation and one set of windows for every row, with the per-window scores
the paired intervals resample (`lsmerge.results.comparisons`)."""

from __future__ import annotations

import contextlib
import math

import torch

from lsmerge.errors import LsMergeError


def _corpus_ids(tokenizer, settings: dict, corpus: str, who: str) -> torch.Tensor:
    """Token ids of a corpus's split (at most max_tokens scored); too few for min_tokens is an error."""
    from lsmerge.data.corpora import corpus_path
    from lsmerge.evaluate.perplexity import encode_text

    path = corpus_path(settings["root"], corpus, settings["split"])
    if not path.is_file():
        raise LsMergeError(f"corpus {corpus} ({path}) is missing; run `lsmerge fetch` first.")
    ids = encode_text(tokenizer, path.read_text(encoding="utf-8"), settings["max_tokens"])
    need = max(1, settings.get("min_tokens") or 0)
    if ids.numel() - 1 < need:
        raise LsMergeError(f"corpus {corpus} ({path}) gives {ids.numel() - 1} tokens to score with the tokenizer of {who}; "
                           f"the plan's eval asks for at least {need} (min_tokens). Lower min_tokens or use a larger split.")  # fmt: skip
    return ids


def count_tokens(model_path: str, settings: dict, who: str) -> dict[str, int]:
    """Tokens each corpus gives to score with a checkpoint's tokenizer (checks min_tokens)."""
    from lsmerge.io.hf import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    return {c: _corpus_ids(tokenizer, settings, c, who).numel() - 1 for c in settings["corpora"]}


def score_model(built: dict, settings: dict) -> dict:
    """Perplexity of a checkpoint (`built["path"]`) or of a hidden-state mix (`built["hidden"]`)
    on every corpus, with one tokenisation and one set of windows for both kinds of row, and the
    per-window scores the paired intervals of the report resample."""
    from lsmerge.evaluate.perplexity import window_nlls
    from lsmerge.io.hf import load_causal_lm, load_tokenizer
    from lsmerge.merge.hidden import HiddenStateMixer, MixedForward, MixSpec

    hidden = built.get("hidden")
    first = hidden["base"] if hidden else built["path"]
    tokenizer = load_tokenizer(first)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = load_causal_lm(first, settings["dtype"], "cpu")
    with contextlib.ExitStack() as stack:
        if hidden:
            expert = load_causal_lm(hidden["source"], settings["dtype"], "cpu")
            mixer = stack.enter_context(HiddenStateMixer(model, MixSpec(hidden["operator"], int(hidden["mix_layer"]), float(hidden["beta"]), "all")))
            model = MixedForward(model, [expert], mixer)
        out = {}
        for corpus in settings["corpora"]:
            ids = _corpus_ids(tokenizer, settings, corpus, first)
            with torch.inference_mode():
                sums, counts = window_nlls(model, ids, max_length=settings["max_length"], stride=settings["stride"],
                                           batch_size=settings["batch_size"], pad_id=pad_id)  # fmt: skip
            nll = float(sums.sum()) / int(counts.sum())
            out[corpus] = {"perplexity": math.inf if nll > 709 else math.exp(nll), "nll": nll, "tokens": int(counts.sum()),
                           "window_nll": sums.tolist(), "window_tokens": counts.tolist()}  # fmt: skip
    return out
