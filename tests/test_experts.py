"""LoRA experts (`lsmerge.experts`, `scripts/make_experts.py`) on a tiny random Llama with a word tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_llama, word_tokenizer

from lsmerge.experts import (
    ExpertConfig,
    batch_indices,
    evaluate_expert,
    format_table,
    read_state,
    token_blocks,
    train_expert,
)

WORDS = "to be or not that is the question whether tis nobler in mind suffer slings and arrows of outrageous fortune".split()
CODE = "def f ( x ) : return x + 1 class A : pass import os for i in range ( 10 ) : print ( i )".split()


def _text(words, n_lines, seed):
    g = torch.Generator().manual_seed(seed)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (12,), generator=g).tolist()) for _ in range(n_lines)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama base with a WordLevel tokenizer, and train / validation texts of two domains."""
    root = tmp_path_factory.mktemp("experts")
    texts = {}
    for name, words, seed in (("words", WORDS, 0), ("code", CODE, 1)):
        for split, n in (("train", 60), ("validation", 10)):
            texts[f"{name}/{split}"] = root / f"{name}-{split}.txt"
            texts[f"{name}/{split}"].write_text(_text(words, n, seed if split == "train" else seed + 10))
    base = root / "base"
    make_tiny_llama(base, tokenizer=word_tokenizer(WORDS + CODE, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>"))
    return root, base, texts


def _config(root, base, texts, name, **kw):
    kw = {"seq_len": 16, "batch_size": 2, "lr": 1e-2, "r": 4, "alpha": 8, "dropout": 0.1, "minutes": None,
          "save_every": 2, "log_every": 1, "threads": 1, "warmup_steps": 2} | kw
    return ExpertConfig(base=str(base), train_text=str(texts["words/train"]), adapter_dir=str(root / f"{name}-lora"),
                        merged_dir=str(root / name), state_dir=str(root / f"{name}-state"), **kw)


def _lora_weights(adapter_dir):
    from safetensors.torch import load_file

    return load_file(f"{adapter_dir}/adapter_model.safetensors")


def test_token_blocks_and_batch_order():
    ids = torch.arange(10)
    assert token_blocks(ids, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # two epochs of 5 blocks in batches of 5: each epoch is a permutation, and the order is reproducible
    first, second = batch_indices(0, 5, 5, seed=3), batch_indices(1, 5, 5, seed=3)
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(5))
    assert torch.equal(batch_indices(1, 5, 5, seed=3), second)


def test_train_writes_adapter_and_merged_checkpoint_then_skips(setup):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, base, texts = setup
    lines = []
    cfg = _config(root, base, texts, "expert-a", max_steps=3)
    summary = train_expert(cfg, print_fn=lines.append)
    assert summary["step"] == 3 and summary["tokens_seen"] == 3 * 2 * 16 and not summary["skipped"]
    assert any("loss" in line and "tok/s" in line for line in lines)
    assert read_state(cfg.state_dir)["step"] == 3

    merged = AutoModelForCausalLM.from_pretrained(cfg.merged_dir).eval()
    AutoTokenizer.from_pretrained(cfg.merged_dir)
    with_lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), cfg.adapter_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, before = merged(ids).logits, with_lora(ids).logits, plain(ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, before, atol=1e-4)  # the adapter changed something
    with open(f"{cfg.merged_dir}/config.json") as f:
        assert json.load(f)["model_type"] == "llama"

    mtime = (root / "expert-a" / "model.safetensors").stat().st_mtime_ns
    lines = []
    again = train_expert(cfg, print_fn=lines.append)
    assert again["skipped"] and again["step"] == 3
    assert "skipped" in lines[-1]
    assert (root / "expert-a" / "model.safetensors").stat().st_mtime_ns == mtime


def test_resume_continues_from_saved_step_and_matches_one_run(setup):
    root, base, texts = setup
    straight = train_expert(_config(root, base, texts, "straight", max_steps=4), print_fn=lambda *a: None)
    train_expert(_config(root, base, texts, "split", max_steps=2), print_fn=lambda *a: None)
    lines = []
    resumed = train_expert(_config(root, base, texts, "split", max_steps=4), print_fn=lines.append)
    assert any("resuming at step 2" in line for line in lines)
    assert not any(line.startswith("step     1 ") or line.startswith("step     2 ") for line in lines)
    assert resumed["step"] == straight["step"] == 4 and resumed["tokens_seen"] == straight["tokens_seen"]
    a, b = _lora_weights(root / "straight-lora"), _lora_weights(root / "split-lora")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-6)


def test_evaluate_expert_on_both_domains(setup):
    root, base, texts = setup
    cfg = _config(root, base, texts, "expert-eval", max_steps=8, dropout=0.0)
    train_expert(cfg, print_fn=lambda *a: None)
    eval_texts = {"words": str(texts["words/validation"]), "code": str(texts["code/validation"])}
    out = root / "expert-eval-perplexity.json"
    record = evaluate_expert("expert-eval", "words", cfg.merged_dir, str(base), eval_texts, out, max_length=16,
                             max_tokens=64, training={"step": 8})
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(record))
    ppl = saved["perplexity"]
    assert set(ppl["base"]) == set(ppl["expert"]) == {"words", "code"}
    assert ppl["expert"]["words"] < ppl["base"]["words"]  # learnt its own domain
    assert saved["own_domain_reduction"] == pytest.approx(1 - ppl["expert"]["words"] / ppl["base"]["words"])
    table = format_table([saved])
    assert "expert-eval" in table and "% lower" in table


def test_cache_key_refuses_another_recipe_and_rewrites_outputs_of_another_run(setup):
    """A state of another recipe is refused; outputs written by a shorter run under the same
    merged folder never stand in for the requested run: they are rewritten from its state."""
    from lsmerge.errors import LsMergeError
    from lsmerge.experts import expert_recipe, recipe_key
    from lsmerge.io.store import checkpoint_metadata

    root, base, texts = setup
    cfg = _config(root, base, texts, "keyed", max_steps=2)
    done = train_expert(cfg, print_fn=lambda *a: None)
    key = recipe_key(expert_recipe(cfg))
    assert done["recipe_key"] == key
    prov = json.loads(checkpoint_metadata(cfg.merged_dir)["lsmerge_config"])
    assert prov["recipe_key"] == key and prov["step"] == 2 and prov["recipe"]["train_text_sha256"]

    # same state folder, another learning rate: refused, naming the difference
    with pytest.raises(LsMergeError, match="another expert recipe.*lr"):
        train_expert(_config(root, base, texts, "keyed", max_steps=2, lr=5e-3), print_fn=lambda *a: None)
    # another train text changes the key too
    other = _config(root, base, texts, "keyed", max_steps=2)
    other.train_text = str(texts["code/train"])
    assert recipe_key(expert_recipe(other)) != key

    # a longer run trained in its own state folder, writing the same merged folder
    long = _config(root, base, texts, "keyed", max_steps=4)
    long.state_dir = str(root / "keyed-long-state")
    train_expert(long, print_fn=lambda *a: None)
    assert json.loads(checkpoint_metadata(cfg.merged_dir)["lsmerge_config"])["step"] == 4
    # the 2-step request is not skipped on the 4-step outputs: they are rewritten from its own state
    again = train_expert(cfg, print_fn=lambda *a: None)
    assert not again["skipped"] and again["step"] == 2
    assert json.loads(checkpoint_metadata(cfg.merged_dir)["lsmerge_config"])["step"] == 2
    assert train_expert(cfg, print_fn=lambda *a: None)["skipped"]
