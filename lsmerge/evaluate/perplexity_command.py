"""The `lsmerge evaluate` command: perplexity of checkpoints x texts, a table, JSON and CSV.

Every check (models, texts, corpora, windows, token counts, output paths) runs before any model
is loaded. Each model is scored with its own tokenizer; token ids are shared between models
whose tokenizer files are equal. The scoring itself is `perplexity.window_nlls`, window by
window; with `--reference` every other model gets, per text, the paired-bootstrap interval of
its perplexity ratio to the reference on the same windows (`intervals.paired_difference`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from lsmerge.data.corpora import Split, corpus_path
from lsmerge.errors import LsMergeError
from lsmerge.evaluate.intervals import WindowScores, check_bootstrap, paired_difference
from lsmerge.evaluate.harness import HiddenMix
from lsmerge.evaluate.inputs import check_model_dir as _check_model_dir
from lsmerge.evaluate.inputs import output_paths
from lsmerge.evaluate.inputs import tokenizer_key as _tokenizer_key
from lsmerge.evaluate.perplexity import PerplexityResult, check_window, encode_text, window_nlls
from lsmerge.io.atomic import atomic_paths
from lsmerge.io.hf import load_causal_lm, load_tokenizer, resolve_model
from lsmerge.io.text import EncodingErrors, read_text
from lsmerge.torch_options import DtypeName, resolve_device, resolve_dtype


# -- checks and paths ------------------------------------------------------------------------


def _check_text(path: Path, what: str) -> None:
    if not path.is_file():
        raise LsMergeError(f"{what} {path} does not exist. Check the path.")
    if not path.read_bytes().strip():
        raise LsMergeError(f"{what} {path} is empty; give a file with text in it.")


def _unique_labels(paths: list[Path], names: list[str]) -> list[str]:
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def format_table(results: list[PerplexityResult]) -> str:
    """Perplexity table: one row per model, one column per text."""
    models = list(dict.fromkeys(r.model for r in results))
    texts = list(dict.fromkeys(r.text for r in results))
    cell = {(r.model, r.text): r.perplexity for r in results}
    width0 = max(len("model"), *(len(m) for m in models))
    widths = [max(10, len(t)) for t in texts]
    lines = ["  ".join([f"{'model':<{width0}}", *(f"{t:>{w}}" for t, w in zip(texts, widths))])]
    lines.append("  ".join(["-" * width0, *("-" * w for w in widths)]))
    for m in models:
        lines.append("  ".join([f"{m:<{width0}}", *(f"{cell[(m, t)]:>{w}.3f}" for t, w in zip(texts, widths))]))
    return "\n".join(lines)


def compare_to_reference(results: list[PerplexityResult], windows: dict[tuple[str, str], WindowScores], reference: str,
                         *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> list[dict]:  # fmt: skip
    """Per (model != reference, text): the paired interval of log(PPL_model / PPL_reference) on the
    same windows, as ratios, and its verdict (better / level / worse)."""
    rows = []
    for r in results:
        if r.model == reference:
            continue
        iv = paired_difference(windows[(r.model, r.text)], windows[(reference, r.text)], resamples=resamples, seed=seed,
                               confidence=confidence)  # fmt: skip
        rows.append({"model": r.model, "text": r.text, "reference": reference, "log_ratio": iv.estimate,
                     "log_ratio_low": iv.low, "log_ratio_high": iv.high, "ratio": math.exp(iv.estimate),
                     "ratio_low": math.exp(iv.low), "ratio_high": math.exp(iv.high), "verdict": iv.verdict(),
                     "confidence": confidence, "resamples": resamples, "seed": seed})  # fmt: skip
    return rows


def format_intervals(rows: list[dict]) -> str:
    """One line per model and text: perplexity ratio to the reference, its interval, the verdict."""
    if not rows:
        return ""
    lines = [f"against {rows[0]['reference']} ({rows[0]['confidence']:.0%} paired bootstrap over windows, "
             f"{rows[0]['resamples']} resamples): perplexity ratio [interval] verdict"]  # fmt: skip
    width = max(len(f"{r['model']} on {r['text']}") for r in rows)
    for r in rows:
        lines.append(f"  {r['model'] + ' on ' + r['text']:<{width}}  {r['ratio']:.4f} [{r['ratio_low']:.4f}, "
                     f"{r['ratio_high']:.4f}]  {r['verdict']}")  # fmt: skip
    return "\n".join(lines)


def write_results(results: list[PerplexityResult], settings: dict, out: str | os.PathLike,
                  windows: dict[tuple[str, str], WindowScores] | None = None, intervals: list[dict] | None = None,
                  ) -> tuple[Path, Path]:  # fmt: skip
    """Write `<json>` ({"settings", "results", "windows": per-window scores, "intervals"}) and `<csv>`
    (one row per model x text, with the interval columns when there is a reference), both or neither."""
    json_path, csv_path = output_paths(out)
    rows = [asdict(r) for r in results]
    by_key = {(i["model"], i["text"]): i for i in intervals or []}
    if intervals:
        for row in rows:
            i = by_key.get((row["model"], row["text"]), {})
            row.update({k: i.get(k, "") for k in ("reference", "ratio", "ratio_low", "ratio_high", "verdict")})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    data = {"settings": settings, "results": [asdict(r) for r in results]}
    if windows is not None:
        data["windows"] = [{"model": m, "text": t, "nll_sum": w.nll_sum.tolist(), "tokens": w.tokens.long().tolist()}
                           for (m, t), w in windows.items()]  # fmt: skip
    if intervals is not None:
        data["intervals"] = intervals
    with atomic_paths(json_path, csv_path) as (json_tmp, csv_tmp):  # both files or neither
        json_tmp.write_text(json.dumps(data, indent=2) + "\n")
        csv_tmp.write_text(buf.getvalue())
    return json_path, csv_path


# -- the command -----------------------------------------------------------------------------


def evaluate(
    *,
    models: list[str] | None = None,
    texts: list[str] | None = None,
    corpora: list[str] | None = None,
    split: Split = "validation",
    root: str = "checkpoints",
    max_length: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = None,
    min_tokens: int | None = None,
    reference: str | None = None,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    device: str = "cpu",
    dtype: DtypeName = "float32",
    out: str | None = None,
    encoding_errors: EncodingErrors = "strict",
    progress: bool = True,
    tasks: list[str] | None = None,
    task_dir: str | None = None,
    mixes: list[HiddenMix] | None = None,
    task_items: int = 100,
    task_choices: int = 4,
    task_limit: int | None = None,
    task_cache: str | None = None,
) -> list:
    """Perplexity of one or more checkpoints on text files and/or prepared corpora, or, with --tasks,
    lm-evaluation-harness tasks on checkpoints and hidden-state mixes.

    Each model is scored with its own tokenizer (loaded from its folder) on every text, through
    sliding windows of `max_length` tokens moved by `stride` (each token scored once, with at
    least max_length - stride tokens of context after the first window). Prints a model x text
    table of perplexities.

    Args:
        models: Hugging Face checkpoint folders (weights, config.json and tokenizer files) or names under
            checkpoints/base/ or checkpoints/merged/ (e.g. smollm2-135m-instruct), as merge takes them.
        texts: plain-text files (UTF-8).
        corpora: prepared corpus names (e.g. shakespeare, python), read from
            <root>/corpora/<name>/<split>.txt (made by `lsmerge fetch`).
        split: corpus split.
        root: the checkpoints root holding `corpora/`.
        max_length: window length in tokens (>= 2).
        stride: tokens between window starts (1 <= stride <= max_length); smaller is slower and
            gives each token more context.
        batch_size: windows per forward pass.
        max_tokens: score at most this many tokens of each text (its beginning), for quick runs.
        min_tokens: each text must give at least this many scored tokens (with every model's
            tokenizer); a shorter text is an error, raised before any model is loaded.
        reference: a model (as in models; added to them when missing) that every other model is
            compared with on each text: the perplexity ratio on the same windows and its paired
            bootstrap interval over windows, printed and written to `out` (with the per-window
            scores). The reference must share the others' tokenizer.
        resamples: bootstrap resamples of the windows (with reference).
        seed: seed of the resampling (with reference), and of the distractors and lm-eval (with tasks).
        confidence: level of the percentile interval, in (0, 1) (with reference).
        device: torch device, e.g. cpu or cuda.
        dtype: model dtype (fp32, bf16, fp16 are aliases); log-probabilities are always float32.
        out: where to write results: a file stem (writes STEM.json and STEM.csv) or a folder
            (existing, or given with a trailing slash: writes perplexity.json / perplexity.csv in it).
        encoding_errors: strict (a text that is not UTF-8 is an error) or replace (bad bytes
            become U+FFFD, and the text scored is not the file's).
        progress: a bar over each text's batches of windows on stderr.
        tasks: lm-eval task names (needs `pip install 'lsmerge[eval]'`); replaces texts / corpora:
            continuation_<corpus> (multiple choice "which continuation comes next", built from the
            corpus's `split` under <root>/corpora with no download), the tasks of --task_dir, or
            lm-eval's own tasks. Writes OUT.json / OUT.csv (a folder: lm_eval.json / lm_eval.csv).
        task_dir: a folder of lm-eval task YAML files (local json datasets are checked row by row).
        mixes: hidden-state mixes scored like checkpoints, e.g.
            '[{base: B, fine_tuned: [F], operator: lerp, mix_layer: 15, beta: 0.5}]'
            (every position of the base's residual stream at mix_layer mixed; beta 0 = the base).
        task_items: items of each continuation task.
        task_choices: choices per item (the true continuation and task_choices - 1 distractors).
        task_limit: score only the first task_limit items of each task, for quick runs.
        task_cache: folder for built continuation tasks (default <root>/cache/lm_eval_tasks).

    Returns:
        one PerplexityResult per (model, text), models outer; with --tasks one TaskScore per
        (model or mix, task, metric).
    """
    if tasks:
        if texts or corpora:
            raise LsMergeError("pass --tasks (lm-eval) or --texts / --corpora (perplexity), not both in one run.")
        from lsmerge.evaluate.harness_command import evaluate_tasks
        from lsmerge.evaluate.harness_tasks import ContinuationSpec

        return evaluate_tasks(models=list(models or []), mixes=list(mixes or []), tasks=tasks, task_dir=task_dir, root=root,
                              split=split, spec=ContinuationSpec(items=task_items, choices=task_choices, seed=seed),
                              task_cache=task_cache, limit=task_limit, batch_size=batch_size, device=device, dtype=dtype,
                              out=out, seed=seed)  # fmt: skip
    if mixes:
        raise LsMergeError("--mixes are scored on lm-eval tasks; pass --tasks (e.g. continuation_shakespeare).")
    # -- every check before any work -------------------------------------------------------
    if not models:
        raise LsMergeError("no models given; pass --models DIR [DIR ...] (Hugging Face checkpoint folders).")
    if not texts and not corpora:
        raise LsMergeError("nothing to evaluate on; pass --texts FILE ... and/or --corpora shakespeare python.")
    check_window(max_length, stride)
    if batch_size < 1:
        raise LsMergeError(f"batch_size={batch_size} must be at least 1.")
    if max_tokens is not None and max_tokens < 1:
        raise LsMergeError(f"max_tokens={max_tokens} must be at least 1 (or left unset to score whole texts).")
    if min_tokens is not None and (min_tokens < 1 or (max_tokens is not None and min_tokens > max_tokens)):
        raise LsMergeError(f"min_tokens={min_tokens} must be at least 1 and at most max_tokens ({max_tokens}).")
    if reference is not None:
        check_bootstrap(1, resamples, confidence)
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    model_paths = [resolve_model(m) for m in models]  # folders, names under checkpoints/, tiny:DIR
    if reference is not None and resolve_model(reference) not in model_paths:
        model_paths.append(resolve_model(reference))
    for p in model_paths:
        _check_model_dir(p)
    text_paths: list[Path] = []
    text_names: list[str] = []
    contents: list[str] = []
    for t in texts or []:
        p = Path(t).expanduser().resolve()
        _check_text(p, "text file")
        contents.append(read_text(p, "text file", encoding_errors))
        text_paths.append(p)
        text_names.append(p.name)
    for name in corpora or []:
        p = corpus_path(root, name, split)
        if not p.is_file():
            raise LsMergeError(
                f"corpus {name!r} ({split} split) is not prepared: {p} does not exist. Run `lsmerge fetch` "
                f"(with the same root, {root!r}) or pass the file with --texts."
            )
        _check_text(p.resolve(), f"corpus {name!r} file")
        contents.append(read_text(p.resolve(), f"corpus {name!r} file", encoding_errors))
        text_paths.append(p.resolve())
        text_names.append(f"{name}/{split}")
    model_labels = _unique_labels(model_paths, [p.name for p in model_paths])
    text_labels = _unique_labels(text_paths, text_names)
    if out is not None:
        json_path, csv_path = output_paths(out)
        for p in (json_path, csv_path):
            if p.exists() and not p.is_file():
                raise LsMergeError(f"output {p} exists and is not a file. Choose another --out.")
    settings = {
        "max_length": max_length,
        "stride": stride,
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "min_tokens": min_tokens,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "split": split,
    }

    # -- token ids for every tokenizer and text, checked before any model is loaded ----------------
    tokenizers, keys, token_cache = {}, {}, {}
    for model_path in model_paths:
        tokenizer = tokenizers[model_path] = load_tokenizer(model_path)
        tokenizer.model_max_length = int(1e12)  # we window ourselves; silence the length warning
        key = keys[model_path] = _tokenizer_key(model_path)
        for i, text_path in enumerate(text_paths):
            if (key, i) in token_cache:
                continue
            ids = token_cache[(key, i)] = encode_text(tokenizer, contents[i], max_tokens)
            need = max(2, (min_tokens or 0) + 1)
            if ids.numel() < need:
                raise LsMergeError(
                    f"{text_path} gives {ids.numel() - 1} token(s) to score with the tokenizer of {model_path}; "
                    f"{need - 1} are needed" + (" (--min_tokens)" if min_tokens else "") + ". Use a longer text"
                    + (" or a smaller --min_tokens." if min_tokens else ".")
                )
    ref_label = None
    if reference is not None:
        ref_path = resolve_model(reference)
        ref_label = model_labels[model_paths.index(ref_path)]
        others = [p for p in model_paths if keys[p] != keys[ref_path]]
        if others:
            raise LsMergeError(f"paired intervals need the same windows: {others[0]} has another tokenizer than the reference "
                               f"{ref_path}. Compare models that share a tokenizer.")  # fmt: skip

    # -- run ---------------------------------------------------------------------------------
    results: list[PerplexityResult] = []
    windows: dict[tuple[str, str], WindowScores] = {}
    for model_path, model_label in zip(model_paths, model_labels):
        tokenizer = tokenizers[model_path]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # evaluate also takes the pytorch_model*.bin checkpoints open_checkpoint accepts
        model = load_causal_lm(model_path, str(torch_dtype).removeprefix("torch."), str(torch_device), safetensors_only=False)
        for i, (text_path, text_label) in enumerate(zip(text_paths, text_labels)):
            nll_sum, tokens = window_nlls(model, token_cache[(keys[model_path], i)], max_length=max_length, stride=stride,
                                          batch_size=batch_size, pad_id=pad_id, device=torch_device, progress=progress)  # fmt: skip
            count = int(tokens.sum())
            nll = float(nll_sum.sum()) / count
            windows[(model_label, text_label)] = WindowScores.of(nll_sum, tokens)
            ppl = math.inf if nll > 709 else math.exp(nll)  # NaN stays NaN
            results.append(
                PerplexityResult(model_label, text_label, ppl, nll, count, len(nll_sum), str(model_path), str(text_path))
            )
        del model
    intervals = None
    if ref_label is not None:
        settings.update(reference=ref_label, resamples=resamples, seed=seed, confidence=confidence)
        intervals = compare_to_reference(results, windows, ref_label, resamples=resamples, seed=seed, confidence=confidence)
    print(format_table(results))
    if intervals:
        print(format_intervals(intervals))
    if out is not None:
        json_path, csv_path = write_results(results, settings, out, windows, intervals)
        print(f"wrote {json_path} and {csv_path}")
    if any(not math.isfinite(r.perplexity) for r in results):
        print("warning: some perplexities are not finite (NaN or inf weights, or float16 overflow?)")
    return results
