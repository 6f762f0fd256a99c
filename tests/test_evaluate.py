"""`lsmerge evaluate`: sliding windows, perplexity, the command end to end on tiny Llamas."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.evaluate.perplexity import (
    IGNORE_INDEX,
    collate_windows,
    evaluate,
    output_paths,
    perplexity_of_ids,
    resolve_corpus,
    sliding_windows,
)

WORDS = (
    "to be or not to be that is the question whether tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune or to take arms against a sea of troubles"
).split()
TRAIN_TEXT = " ".join(WORDS)


def _text(n_words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx.tolist()) + "\n"


def _tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def _tokenizer():
    """A WordLevel tokenizer trained here on TRAIN_TEXT, wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([TRAIN_TEXT], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny Llamas (different seeds) saved with the same tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tok = _tokenizer()
    paths = []
    for seed, name in ((0, "llama-a"), (1, "llama-b")):
        path = root / name
        _tiny_llama(seed).save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return paths


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sample.txt"
    path.write_text(_text(150, seed=3))
    return path


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
    model = _tiny_llama(0)
    ids = torch.randint(3, 128, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _direct_perplexity(model, ids)
    for max_length in (40, 64):
        ppl, nll, count, n_windows = perplexity_of_ids(model, ids, max_length=max_length, stride=20)
        assert n_windows == 1 and count == 39
        assert ppl == pytest.approx(expected, rel=1e-5)
        assert nll == pytest.approx(math.log(expected), rel=1e-5)


def test_batching_and_padding_do_not_change_the_result():
    model = _tiny_llama(1)
    ids = torch.randint(3, 128, (45,), generator=torch.Generator().manual_seed(2))
    one = perplexity_of_ids(model, ids, max_length=12, stride=5, batch_size=1)
    three = perplexity_of_ids(model, ids, max_length=12, stride=5, batch_size=3, pad_id=7)
    assert one[2] == three[2] == 44
    assert one[0] == pytest.approx(three[0], rel=1e-5)


def test_short_windows_lose_context():
    model = _tiny_llama(2)
    ids = torch.randint(3, 128, (60,), generator=torch.Generator().manual_seed(3))
    full = perplexity_of_ids(model, ids, max_length=64, stride=32)
    windowed = perplexity_of_ids(model, ids, max_length=6, stride=3)
    assert full[2] == windowed[2] == 59
    assert full[0] != pytest.approx(windowed[0], rel=1e-6)  # different contexts give a different score


# -- the command ------------------------------------------------------------------------------


def test_evaluate_end_to_end(tiny_models, text_file, tmp_path, capsys):
    root = tmp_path / "ckpt"
    corpus = resolve_corpus(root, "shakespeare", "validation")
    corpus.parent.mkdir(parents=True)
    corpus.write_text(_text(120, seed=4))
    out = tmp_path / "results" / "ppl"
    results = evaluate(
        models=[str(p) for p in tiny_models],
        texts=[str(text_file)],
        corpora=["shakespeare"],
        root=str(root),
        max_length=16,
        stride=8,
        batch_size=3,
        out=str(out),
    )
    assert [(r.model, r.text) for r in results] == [
        ("llama-a", "sample.txt"),
        ("llama-a", "shakespeare/validation"),
        ("llama-b", "sample.txt"),
        ("llama-b", "shakespeare/validation"),
    ]
    printed = capsys.readouterr().out
    assert "llama-a" in printed and "shakespeare/validation" in printed

    # the same numbers as scoring the tokenized text directly
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models[1])
    ids = torch.tensor(tok(text_file.read_text())["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[1]).eval()
    ppl, _, count, _ = perplexity_of_ids(model, ids, max_length=16, stride=8)
    assert results[2].perplexity == pytest.approx(ppl, rel=1e-6)
    assert results[2].tokens_scored == count == ids.numel() - 1
    assert results[0].perplexity != pytest.approx(results[2].perplexity)  # two different models

    data = json.loads(out.with_name("ppl.json").read_text())
    assert data["settings"]["stride"] == 8 and len(data["results"]) == 4
    assert data["results"][3]["perplexity"] == pytest.approx(results[3].perplexity)
    rows = list(csv.DictReader(out.with_name("ppl.csv").open()))
    assert [r["model"] for r in rows] == ["llama-a", "llama-a", "llama-b", "llama-b"]
    assert float(rows[1]["perplexity"]) == pytest.approx(results[1].perplexity)


def test_max_tokens_caps_scored_tokens(tiny_models, text_file):
    (result,) = evaluate(models=[str(tiny_models[0])], texts=[str(text_file)], max_length=16, stride=8, max_tokens=25)
    assert result.tokens_scored == 25


def test_cli_writes_into_a_folder(tiny_models, text_file, tmp_path, capsys):
    from lsmerge.cli import main

    out = tmp_path / "res"
    out.mkdir()
    main(
        [
            "evaluate",
            "--models", json.dumps([str(tiny_models[0])]),
            "--texts", json.dumps([str(text_file)]),
            "--max_length", "32",
            "--stride", "16",
            "--max_tokens", "40",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert "llama-a" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "perplexity.csv").open()))
    assert len(rows) == 1 and int(rows[0]["tokens_scored"]) == 40
    assert json.loads((out / "perplexity.json").read_text())["results"][0]["tokens_scored"] == 40


def test_output_paths(tmp_path):
    assert output_paths(tmp_path) == (tmp_path / "perplexity.json", tmp_path / "perplexity.csv")
    assert output_paths(str(tmp_path / "new") + "/") == (tmp_path / "new/perplexity.json", tmp_path / "new/perplexity.csv")
    assert output_paths(tmp_path / "a.json") == (tmp_path / "a.json", tmp_path / "a.csv")
    assert output_paths(tmp_path / "run.1") == (tmp_path / "run.1.json", tmp_path / "run.1.csv")


# -- bad input: one clear error, nothing written ----------------------------------------------


def _bad_cases(tiny_models, text_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    no_tok = tmp_path / "no-tokenizer"
    _tiny_llama(0).save_pretrained(no_tok)
    model, text = str(tiny_models[0]), str(text_file)
    return [
        (dict(models=[str(tmp_path / "missing")], texts=[text]), "does not exist"),
        (dict(models=[model], texts=[str(tmp_path / "nope.txt")]), "does not exist"),
        (dict(models=[model], texts=[str(empty)]), "empty"),
        (dict(models=[model], corpora=["python"], root=str(tmp_path / "r")), "lsmerge fetch"),
        (dict(models=[model], texts=[text], max_length=8, stride=9), "stride"),
        (dict(models=[model], texts=[text], stride=0), "stride"),
        (dict(models=[model]), "nothing to evaluate"),
        (dict(models=[str(no_tok)], texts=[text]), "tokenizer"),
        (dict(models=[model], texts=[text], dtype="float8"), "dtype"),
        (dict(models=[model], texts=[text], max_tokens=0), "max_tokens"),
    ]


def test_bad_input_raises_before_writing(tiny_models, text_file, tmp_path):
    out = tmp_path / "out" / "ppl"
    for kwargs, match in _bad_cases(tiny_models, text_file, tmp_path):
        with pytest.raises(LsMergeError, match=match):
            evaluate(out=str(out), **kwargs)
    assert not out.parent.exists()


def test_cli_reports_error(tiny_models, tmp_path, capsys):
    from lsmerge.cli import main

    with pytest.raises(SystemExit) as e:
        main(["evaluate", "--models", json.dumps([str(tiny_models[0])]), "--texts", json.dumps([str(tmp_path / "x.txt")])])
    assert e.value.code == 1
    assert "does not exist" in capsys.readouterr().err
