"""`lsmerge.evaluate.perplexity`: sliding windows, text to token ids, perplexity of token ids."""

from __future__ import annotations

import math

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.perplexity import IGNORE_INDEX, collate_windows, encode_text, perplexity_of_ids, sliding_windows, window_nlls
from conftest import tiny_causal_lm
from tests.evaluate_helpers import sample_text, word_tokenizer


def tiny_llama(seed: int):
    """A 2-layer `tiny_causal_lm` with Llama's own init and config (pad 1, bos = eos 2)."""
    return tiny_causal_lm(seed, layers=2, initializer_range=0.02, max_position_embeddings=2048, pad_token_id=1,
                          bos_token_id=2, eos_token_id=2)


# -- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,max_length,stride",
    [(50, 8, 4), (50, 8, 8), (50, 8, 1), (50, 8, 7), (7, 8, 4), (8, 8, 4), (9, 8, 4), (2, 2, 2), (33, 5, 3)],
)
def test_each_token_scored_exactly_once(n, max_length, stride):
    ids = torch.arange(n)  # token id == absolute position
    windows = sliding_windows(ids, max_length, stride)
    scored = []
    for k, (inp, lab) in enumerate(windows):
        assert 2 <= inp.numel() <= max_length
        assert torch.equal(inp, torch.arange(int(inp[0]), int(inp[0]) + inp.numel()))  # a contiguous slice
        visible = lab[1:][lab[1:] != IGNORE_INDEX]  # position 0's label is never predicted
        assert torch.equal(visible, inp[1:][lab[1:] != IGNORE_INDEX])
        if k > 0 and stride < max_length and windows[k - 1][0].numel() == max_length:
            # after the first window every scored token has at least max_length - stride of context
            first = int((lab != IGNORE_INDEX).nonzero()[0])
            assert first >= max_length - stride
        scored.append(visible)
    assert torch.equal(torch.cat(scored), torch.arange(1, n))


def _hf_guide_windows(ids, max_length, stride):
    """The loop of the Hugging Face perplexity guide, for comparison."""
    out, prev_end, n = [], 0, ids.numel()
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end
        inp = ids[begin:end]
        lab = inp.clone()
        lab[:-trg_len] = IGNORE_INDEX
        out.append((inp, lab))
        prev_end = end
        if end == n:
            break
    return out


@pytest.mark.parametrize("n,max_length,stride", [(50, 8, 4), (50, 8, 1), (9, 8, 4), (100, 16, 5)])
def test_windows_match_hf_guide_when_stride_below_max_length(n, max_length, stride):
    ids = torch.arange(100, 100 + n)
    ours = sliding_windows(ids, max_length, stride)
    guide = _hf_guide_windows(ids, max_length, stride)
    assert len(ours) == len(guide)
    for (a_in, a_lab), (b_in, b_lab) in zip(ours, guide):
        assert torch.equal(a_in, b_in) and torch.equal(a_lab, b_lab)


@pytest.mark.parametrize("max_length,stride", [(8, 9), (8, 0), (8, -1), (1, 1)])
def test_invalid_window_refused(max_length, stride):
    with pytest.raises(LsMergeError, match="stride|max_length"):
        sliding_windows(torch.arange(20), max_length, stride)


def test_collate_pads_right():
    windows = sliding_windows(torch.arange(3, 14), 8, 4)  # lengths 8, then 7 (tail)
    input_ids, attention_mask, labels = collate_windows(windows, pad_id=1)
    assert input_ids.shape == labels.shape == attention_mask.shape == (2, 8)
    assert attention_mask[1].tolist() == [1] * 7 + [0]
    assert input_ids[1, -1] == 1 and labels[1, -1] == IGNORE_INDEX
    assert torch.equal(input_ids[0], torch.arange(3, 11))


# -- scoring ---------------------------------------------------------------------------------


def _direct_perplexity(model, ids):
    logits = model(input_ids=ids[None]).logits[0]
    nll = torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:])
    return math.exp(nll.item())


def test_single_window_equals_full_sequence():
    model = tiny_llama(0)
    ids = torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _direct_perplexity(model, ids)
    for max_length in (40, 64):
        ppl, nll, count, n_windows = perplexity_of_ids(model, ids, max_length=max_length, stride=20)
        assert n_windows == 1 and count == 39
        assert ppl == pytest.approx(expected, rel=1e-5)
        assert nll == pytest.approx(math.log(expected), rel=1e-5)


def test_batching_and_padding_do_not_change_the_result():
    model = tiny_llama(1)
    ids = torch.randint(3, 128, (45,), generator=torch.Generator().manual_seed(2))
    one = perplexity_of_ids(model, ids, max_length=12, stride=5, batch_size=1)
    three = perplexity_of_ids(model, ids, max_length=12, stride=5, batch_size=3, pad_id=7)
    assert one[2] == three[2] == 44
    assert one[0] == pytest.approx(three[0], rel=1e-5)


def test_short_windows_lose_context():
    model = tiny_llama(2)
    ids = torch.randint(3, 128, (60,), generator=torch.Generator().manual_seed(3))
    full = perplexity_of_ids(model, ids, max_length=64, stride=32)
    windowed = perplexity_of_ids(model, ids, max_length=6, stride=3)
    assert full[2] == windowed[2] == 59
    assert full[0] != pytest.approx(windowed[0], rel=1e-6)  # different contexts give a different score


def test_window_nlls_score_each_window_by_hand_and_sum_to_the_perplexity():
    model = tiny_llama(3)
    ids = torch.randint(3, 128, (30,), generator=torch.Generator().manual_seed(4))
    sums, counts = window_nlls(model, ids, max_length=12, stride=8, batch_size=2, pad_id=5)
    windows = sliding_windows(ids, 12, 8)
    assert sums.dtype == torch.float64 and sums.shape == counts.shape == (len(windows),)
    with torch.no_grad():
        for k, (inp, lab) in enumerate(windows):  # one window at a time, no padding
            logits = model(input_ids=inp[None]).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, lab[1:], ignore_index=IGNORE_INDEX, reduction="sum")
            assert counts[k] == (lab[1:] != IGNORE_INDEX).sum() and sums[k].item() == pytest.approx(nll.item(), rel=1e-5)
    ppl, nll, count, n_windows = perplexity_of_ids(model, ids, max_length=12, stride=8)
    assert count == counts.sum() == 29 and n_windows == len(windows)
    assert nll == pytest.approx(sums.sum().item() / 29, rel=1e-6)


# -- text to token ids -----------------------------------------------------------------------


def test_encode_text_is_the_tokenizers_ids_capped_from_a_prefix():
    tok = word_tokenizer()
    text = sample_text(400, seed=5)
    full = encode_text(tok, text)
    assert torch.equal(full, torch.tensor(tok(text)["input_ids"])) and full.dtype == torch.long
    for max_tokens in (1, 25, 399, 400, 1000):  # at most max_tokens + 1 ids, the beginning of the full encoding
        capped = encode_text(tok, text, max_tokens)
        assert torch.equal(capped, full[: max_tokens + 1])
