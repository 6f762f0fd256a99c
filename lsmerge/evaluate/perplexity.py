"""Perplexity of causal language models on text, with a sliding window: the one definition
behind `lsmerge evaluate`, the expert and baseline evaluations and the results pipeline.

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

The window construction (`sliding_windows`, `collate_windows`) is pure; `encode_text` turns a
text into the token ids to score; `window_nlls` scores one token sequence with one model, window
by window (the unit of the paired bootstrap in `intervals`), and `perplexity_of_ids` sums them.
The `evaluate` command (checkpoints x texts, table, JSON / CSV) is `perplexity_command`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from lsmerge.errors import LsMergeError

IGNORE_INDEX = -100


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
def window_nlls(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    max_length: int,
    stride: int,
    batch_size: int = 4,
    pad_id: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window scores of a token sequence under a causal LM (the windows of `sliding_windows`).

    The model's logits at position i of a window, (b, w, vocab), are compared with the label at
    i+1; only labelled positions go through the (tokens, vocab) float32 log-softmax. The sums are
    the unit of the paired bootstrap (`lsmerge.evaluate.intervals`).

    Args:
        model: a causal LM returning `.logits` of shape (b, w, vocab).
        token_ids: (n,) token ids.

    Returns:
        nll_sum (W,) float64: sum over window k's scored tokens of -log p(x_t | context), in nats;
        tokens (W,) int64: how many tokens window k scores (together n - 1).
    """
    windows = sliding_windows(token_ids, max_length, stride)
    batches = range(0, len(windows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="windows", unit="batch", leave=False, file=sys.stderr)
    sums, counts = [], []
    for start in batches:
        input_ids, attention_mask, labels = collate_windows(windows[start : start + batch_size], pad_id)
        input_ids, attention_mask, labels = input_ids.to(device), attention_mask.to(device), labels.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (b, w, vocab)
        target = labels[:, 1:]  # (b, w-1): label i+1 is predicted at position i
        scored = target != IGNORE_INDEX
        logp = torch.log_softmax(logits[:, :-1][scored].float(), dim=-1)  # (k, vocab)
        nll = -logp.gather(-1, target[scored].unsqueeze(-1)).squeeze(-1).double()  # (k,)
        row = scored.nonzero()[:, 0]  # window of each scored token within the batch
        sums.append(torch.zeros(scored.shape[0], dtype=torch.float64, device=nll.device).index_add_(0, row, nll).cpu())
        counts.append(scored.sum(-1).cpu())
    return torch.cat(sums), torch.cat(counts).long()


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
    """Score a token sequence with a causal LM through sliding windows (`window_nlls`, summed).

    Returns:
        (perplexity, mean negative log-likelihood in nats, tokens scored, windows).
    """
    nll_sum, tokens = window_nlls(model, token_ids, max_length=max_length, stride=stride, batch_size=batch_size,
                                  pad_id=pad_id, device=device, progress=progress)  # fmt: skip
    count = int(tokens.sum())
    mean_nll = float(nll_sum.sum() / count)
    return math.exp(mean_nll), mean_nll, count, int(nll_sum.numel())


# -- text to token ids -----------------------------------------------------------------------


def encode_text(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids (n,) of `text` with the tokenizer's own special tokens (e.g. BOS).

    With `max_tokens`, the ids of the text's beginning, n <= max_tokens + 1 (so that at most
    `max_tokens` are scored: the first is never). Only a prefix of the text is tokenized when
    that prefix already gives more tokens than needed (the last, possibly cut, token is dropped
    with the rest of the surplus).
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
