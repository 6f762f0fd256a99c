"""Perplexity of causal language models on text, with a sliding window (`lsmerge evaluate`).

Perplexity of a token sequence x_0 .. x_{n-1} under a model p:

    PPL = exp( -1/(n-1) * sum_{t=1}^{n-1} log p(x_t | x_{max(0,t-c)} .. x_{t-1}) )

where the context c is bounded by the window length. Texts longer than `max_length` tokens are
cut into overlapping windows as in the Hugging Face perplexity guide: each window is
`max_length` tokens long and starts `stride` tokens after the previous one; inside a window the
labels of tokens already scored by an earlier window are set to -100, so every token x_1 ..
x_{n-1} is scored exactly once and, after the first window, with at least
`max_length - stride` tokens of context. (x_0 has no context and is never scored; tokenizers that
add a BOS token make it the unscored one.) When `stride == max_length` the windows overlap by one
token so that the first token of each window is still scored.

The window construction (`sliding_windows`, `collate_windows`) is pure; `perplexity_of_ids`
scores one token sequence with one model; `evaluate` is the command that loads checkpoints and
texts, runs every model on every text, prints a table and writes JSON / CSV.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import write_text_atomic
from lsmerge.torch_options import resolve_device, resolve_dtype

IGNORE_INDEX = -100
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


# -- pure part: windows ----------------------------------------------------------------------


def sliding_windows(token_ids: torch.Tensor, max_length: int, stride: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut one token sequence into overlapping windows with labels masked to score each token once.

    Window k covers token_ids[begin_k : end_k] with end_k = min(begin_k + max_length, n),
    begin_0 = 0 and begin_{k+1} = min(begin_k + stride, end_k - 1). Labels equal the input ids
    except for positions already scored by window k-1 (absolute index < end_{k-1}), which are
    IGNORE_INDEX. Labels are aligned with the inputs (the model's logits at position i predict
    label i+1), so the first position of a window is never scored.

    Args:
        token_ids: (n,) integer token ids, n >= 2.
        max_length: window length in tokens, >= 2.
        stride: shift between window starts, 1 <= stride <= max_length.

    Returns:
        list of (input_ids, labels), each (w,) with w <= max_length; together the unmasked labels
        after each window's first position are exactly token_ids[1:], each once.
    """
    if token_ids.dim() != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {tuple(token_ids.shape)}")
    check_window(max_length, stride)
    n = token_ids.numel()
    if n < 2:
        raise ValueError("need at least 2 tokens to score one")
    windows = []
    begin, prev_end = 0, 0
    while prev_end < n:
        end = min(begin + max_length, n)
        input_ids = token_ids[begin:end].clone()
        labels = input_ids.clone()
        labels[: max(prev_end - begin, 0)] = IGNORE_INDEX
        windows.append((input_ids, labels))
        prev_end = end
        begin = min(begin + stride, end - 1)
    return windows


def collate_windows(
    windows: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad windows into a batch.

    Returns:
        input_ids (b, w_max) padded with `pad_id`, attention_mask (b, w_max) with 0 on padding,
        labels (b, w_max) padded with IGNORE_INDEX.
    """
    width = max(ids.numel() for ids, _ in windows)
    input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(windows):
        input_ids[i, : ids.numel()] = ids
        labels[i, : lab.numel()] = lab
        attention_mask[i, : ids.numel()] = 1
    return input_ids, attention_mask, labels


def check_window(max_length: int, stride: int) -> None:
    """Raise LsMergeError unless 2 <= max_length and 1 <= stride <= max_length."""
    if max_length < 2:
        raise LsMergeError(f"max_length={max_length} is too short; a window needs at least 2 tokens. Use e.g. --max_length 512.")
    if stride <= 0 or stride > max_length:
        raise LsMergeError(
            f"stride={stride} must satisfy 1 <= stride <= max_length ({max_length}); with a larger stride "
            f"tokens would be skipped. Use e.g. --stride {max(1, max_length // 2)}."
        )


# -- scoring ---------------------------------------------------------------------------------


@dataclass
class PerplexityResult:
    """Perplexity of one model on one text."""

    model: str
    text: str
    perplexity: float
    mean_nll: float  # nats per scored token: log(perplexity)
    tokens_scored: int
    windows: int
    model_path: str
    text_path: str


@torch.no_grad()
def perplexity_of_ids(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    max_length: int,
    stride: int,
    batch_size: int = 4,
    pad_id: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[float, float, int, int]:
    """Score a token sequence with a causal LM through sliding windows.

    The model's logits at position i of a window, (b, w, vocab), are compared with the label at
    i+1 by torchmetrics' `Perplexity(ignore_index=-100)`; only labelled positions are passed
    on, so the (tokens, vocab) softmax covers just the tokens being scored.

    Args:
        model: a causal LM returning `.logits` of shape (b, w, vocab).
        token_ids: (n,) token ids.

    Returns:
        (perplexity, mean negative log-likelihood in nats, tokens scored, windows).
    """
    from torchmetrics.text import Perplexity

    windows = sliding_windows(token_ids, max_length, stride)
    metric = Perplexity(ignore_index=IGNORE_INDEX).to(device)
    batches = range(0, len(windows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="windows", unit="batch", leave=False)
    for start in batches:
        input_ids, attention_mask, labels = collate_windows(windows[start : start + batch_size], pad_id)
        input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (b, w, vocab)
        target = labels[:, 1:]  # (b, w-1): label i+1 is predicted at position i
        scored = target != IGNORE_INDEX
        preds = logits[:, :-1][scored].float().unsqueeze(0)  # (1, k, vocab)
        metric.update(preds, target[scored].unsqueeze(0))
    count = int(metric.count.item())
    mean_nll = (metric.total_log_probs / metric.count).item()
    return metric.compute().item(), mean_nll, count, len(windows)


# -- inputs ----------------------------------------------------------------------------------


def resolve_corpus(root: str | os.PathLike, name: str, split: str) -> Path:
    """Path of a prepared corpus split: `<root>/corpora/<name>/<split>.txt`."""
    try:
        from lsmerge.data.corpora import corpus_path
    except ImportError:  # the corpora module is not there yet: use its documented layout
        return Path(root) / "corpora" / name / f"{split}.txt"
    return Path(corpus_path(root, name, split))


def _check_model_dir(path: Path) -> None:
    from lsmerge.io.store import open_checkpoint

    if not path.is_dir():
        raise LsMergeError(
            f"model folder {path} does not exist. Check the path, or run `lsmerge fetch` to get the base models."
        )
    open_checkpoint(path)  # raises on missing or broken weights
    if not (path / "config.json").exists():
        raise LsMergeError(f"{path} has no config.json; evaluate needs a Hugging Face checkpoint folder with its config.")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise LsMergeError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); each model is evaluated with its own "
            "tokenizer. Copy them from the model it was derived from."
        )


def _check_text(path: Path, what: str) -> None:
    if not path.is_file():
        raise LsMergeError(f"{what} {path} does not exist. Check the path.")
    if not path.read_bytes().strip():
        raise LsMergeError(f"{what} {path} is empty; give a file with text in it.")


def _unique_labels(paths: list[Path], names: list[str]) -> list[str]:
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def output_paths(out: str | os.PathLike) -> tuple[Path, Path]:
    """`out` as a folder (existing, or written with a trailing slash) -> `<out>/perplexity.{json,csv}`;
    otherwise a file stem -> `<out>.json` and `<out>.csv` (a `.json` / `.csv` suffix is dropped)."""
    text = str(out)
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / "perplexity.json", path / "perplexity.csv"
    if path.suffix in (".json", ".csv"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".csv")


def _tokenize(tokenizer, text: str, max_tokens: int | None) -> torch.Tensor:
    """Token ids (n,) of `text` with the tokenizer's own special tokens; at most max_tokens + 1.

    With `max_tokens`, only a prefix of the text is tokenized when that prefix already gives more
    tokens than needed (the last, possibly cut, token is dropped with the rest of the surplus).
    """
    def encode(s: str) -> list[int]:
        return tokenizer(s, add_special_tokens=True, return_attention_mask=False)["input_ids"]

    if max_tokens is None:
        return torch.tensor(encode(text), dtype=torch.long)
    need = max_tokens + 1
    chars = need * 8
    while chars < len(text):
        ids = encode(text[:chars])
        if len(ids) > need + 1:
            return torch.tensor(ids[:need], dtype=torch.long)
        chars *= 4
    return torch.tensor(encode(text)[:need], dtype=torch.long)


def _tokenizer_key(path: Path) -> str:
    h = hashlib.sha256()
    for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (path / f).exists():
            h.update(f.encode() + b"\0" + (path / f).read_bytes())
    return h.hexdigest()


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


def write_results(results: list[PerplexityResult], settings: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write `<json>` ({"settings": ..., "results": [...]}) and `<csv>` (one row per model x text)."""
    json_path, csv_path = output_paths(out)
    rows = [asdict(r) for r in results]
    write_text_atomic(json_path, json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, buf.getvalue())
    return json_path, csv_path


# -- the command -----------------------------------------------------------------------------


def evaluate(
    *,
    models: list[str],
    texts: list[str] | None = None,
    corpora: list[str] | None = None,
    split: str = "validation",
    root: str = "checkpoints",
    max_length: int = 512,
    stride: int = 256,
    batch_size: int = 4,
    max_tokens: int | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    out: str | None = None,
) -> list[PerplexityResult]:
    """Perplexity of one or more checkpoints on text files and/or prepared corpora.

    Each model is scored with its own tokenizer (loaded from its folder) on every text, through
    sliding windows of `max_length` tokens moved by `stride` (each token scored once, with at
    least max_length - stride tokens of context after the first window). Prints a model x text
    table of perplexities.

    Args:
        models: Hugging Face checkpoint folders (weights, config.json and tokenizer files).
        texts: plain-text files (UTF-8).
        corpora: prepared corpus names (e.g. shakespeare, python), read from
            <root>/corpora/<name>/<split>.txt (made by `lsmerge fetch`).
        split: corpus split: train, validation or test.
        root: the checkpoints root holding `corpora/`.
        max_length: window length in tokens (>= 2).
        stride: tokens between window starts (1 <= stride <= max_length); smaller is slower and
            gives each token more context.
        batch_size: windows per forward pass.
        max_tokens: score at most this many tokens of each text (its beginning), for quick runs.
        device: torch device, e.g. cpu or cuda.
        dtype: model dtype: float32, bfloat16, float16 (log-probabilities are always float32).
        out: where to write results: a file stem (writes STEM.json and STEM.csv) or a folder
            (existing, or given with a trailing slash: writes perplexity.json / perplexity.csv in it).

    Returns:
        one PerplexityResult per (model, text), models outer.
    """
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
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    model_paths = [Path(m).expanduser().resolve() for m in models]
    for p in model_paths:
        _check_model_dir(p)
    text_paths: list[Path] = []
    text_names: list[str] = []
    for t in texts or []:
        p = Path(t).expanduser().resolve()
        _check_text(p, "text file")
        text_paths.append(p)
        text_names.append(p.name)
    for name in corpora or []:
        p = resolve_corpus(root, name, split)
        if not p.is_file():
            raise LsMergeError(
                f"corpus {name!r} ({split} split) is not prepared: {p} does not exist. Run `lsmerge fetch` "
                f"(with the same root, {root!r}) or pass the file with --texts."
            )
        _check_text(p.resolve(), f"corpus {name!r} file")
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
        "dtype": str(torch_dtype).removeprefix("torch."),
        "split": split,
    }

    # -- run ---------------------------------------------------------------------------------
    from transformers import AutoModelForCausalLM, AutoTokenizer

    contents = [p.read_text(encoding="utf-8", errors="replace") for p in text_paths]
    token_cache: dict[tuple[str, int], torch.Tensor] = {}
    results: list[PerplexityResult] = []
    for model_path, model_label in zip(model_paths, model_labels):
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        tokenizer.model_max_length = int(1e12)  # we window ourselves; silence the length warning
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        key = _tokenizer_key(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(torch_device).eval()
        for i, (text_path, text_label) in enumerate(zip(text_paths, text_labels)):
            if (key, i) not in token_cache:
                token_cache[(key, i)] = _tokenize(tokenizer, contents[i], max_tokens)
            ids = token_cache[(key, i)]
            if ids.numel() < 2:
                raise LsMergeError(
                    f"{text_path} gives {ids.numel()} token(s) with the tokenizer of {model_path}; at least 2 are "
                    "needed to score one. Use a longer text."
                )
            ppl, nll, count, n_windows = perplexity_of_ids(
                model,
                ids,
                max_length=max_length,
                stride=stride,
                batch_size=batch_size,
                pad_id=pad_id,
                device=torch_device,
                progress=True,
            )
            results.append(
                PerplexityResult(model_label, text_label, ppl, nll, count, n_windows, str(model_path), str(text_path))
            )
        del model
    print(format_table(results))
    if out is not None:
        json_path, csv_path = write_results(results, settings, out)
        print(f"wrote {json_path} and {csv_path}")
    if any(not math.isfinite(r.perplexity) for r in results):
        print("warning: some perplexities are not finite (NaN or inf weights, or float16 overflow?)")
    return results
