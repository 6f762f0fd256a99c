"""`lsmerge.merge.hidden.generation`: exactness at beta 0, batching, truncated source forward, EOS, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_causal_lm, word_tokenizer
from lsmerge.errors import LsMergeError
from lsmerge.merge.hidden import MixSpec, decoder_layers
from lsmerge.merge.hidden.generation import DualModelGenerator, sample_next_token
from lsmerge.merge.hidden.prompts import left_pad

PROMPTS = [[1, 5, 7, 9, 11], [3, 4], [8, 8, 8, 9, 10, 11, 12, 13], [20, 21, 22]]


def tiny(seed: int):
    """A `tiny_causal_lm` whose bos / eos / pad ids match the tokenizer of `_save_with_tokenizer`."""
    return tiny_causal_lm(seed, bos_token_id=1, eos_token_id=2, pad_token_id=0)


@pytest.fixture(scope="module")
def models():
    return tiny(0), tiny(1)


def ids_of(results):
    return [r.token_ids for r in results]


def test_plain_generation_matches_transformers_generate(models):
    base, _ = models
    ours = DualModelGenerator(base).generate_ids(PROMPTS[:1], max_new_tokens=8, eos_token_ids=[])
    ref = base.generate(torch.tensor(PROMPTS[:1]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert ours[0].token_ids == ref[0, len(PROMPTS[0]) :].tolist()


@pytest.mark.parametrize("operator", ["lerp", "slerp", "mean"])
def test_beta_zero_gives_base_generation(models, operator):
    base, ft = models
    ref = ids_of(DualModelGenerator(base).generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[]))
    for tokens in ("all", "last"):
        gen = DualModelGenerator(base, [ft], MixSpec(operator, 2, 0.0, tokens))
        assert ids_of(gen.generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[])) == ref
    mixed = DualModelGenerator(base, [ft], MixSpec(operator, 2, 0.8, "all"))
    assert ids_of(mixed.generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[])) != ref


@pytest.mark.parametrize("spec", [MixSpec("slerp", 2, 0.6, "last"), MixSpec("lerp", 4, 0.5, "all"),
                                  MixSpec("mean", 0, 0.7, "generated")])  # fmt: skip
def test_batched_equals_unbatched_greedy(models, spec):
    base, ft = models
    gen = DualModelGenerator(base, [ft], spec)
    one = ids_of(gen.generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[], batch_size=1))
    many = ids_of(gen.generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[], batch_size=4))
    assert one == many


def test_identical_models_give_base_generation(models):
    base, _ = models
    twin = tiny(0)
    ref = ids_of(DualModelGenerator(base).generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[]))
    for op in ("lerp", "slerp", "mean"):
        gen = DualModelGenerator(base, [twin], MixSpec(op, 3, 0.5, "all"))
        assert ids_of(gen.generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[])) == ref
    # the base model object itself as its own source (its mixer hook must not fire on the source pass)
    gen = DualModelGenerator(base, [base], MixSpec("slerp", 2, 0.5, "all"))
    assert ids_of(gen.generate_ids(PROMPTS, max_new_tokens=8, eos_token_ids=[])) == ref


def test_source_runs_only_layers_below_mix_layer(models):
    base, ft = models
    calls = {"ft": [0] * 4, "head": 0}
    handles = [layer.register_forward_hook(lambda *a, i=i: calls["ft"].__setitem__(i, calls["ft"][i] + 1))
               for i, layer in enumerate(decoder_layers(ft))]  # fmt: skip
    handles.append(ft.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1)))
    try:
        DualModelGenerator(base, [ft], MixSpec("slerp", 2, 0.5)).generate_ids(PROMPTS[:2], max_new_tokens=5, eos_token_ids=[])
    finally:
        for h in handles:
            h.remove()
    assert calls["ft"][0] == calls["ft"][1] == 5 and calls["ft"][2] == calls["ft"][3] == 0 and calls["head"] == 0


def test_eos_stops_rows_and_pads(models):
    base, _ = models
    gen = DualModelGenerator(base)
    free = gen.generate_ids(PROMPTS, max_new_tokens=6, eos_token_ids=[])
    eos = free[0].token_ids[2]
    res = gen.generate_ids(PROMPTS, max_new_tokens=6, eos_token_ids=[eos], pad_token_id=0)
    first = free[0].token_ids.index(eos)
    assert res[0].token_ids == free[0].token_ids[: first + 1] and res[0].finish_reason == "eos"
    for r, f in zip(res, free):
        if eos not in f.token_ids:
            assert r.token_ids == f.token_ids and r.finish_reason == "length"


def test_sampling_is_seeded_and_top_p_keeps_the_nucleus():
    logits = torch.tensor([[5.0, 4.0, -10.0, -10.0]]).repeat(64, 1)
    a = sample_next_token(logits, temperature=1.0, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert (a == 0).all()  # the top token alone has mass >= 0.5
    b = sample_next_token(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(3))
    c = sample_next_token(logits, temperature=1.0, top_p=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b, c) and set(b.tolist()) <= {0, 1, 2, 3} and (b == 1).any()


def test_left_pad_and_validation(models):
    ids, mask = left_pad([[5, 6], [7]], pad_token_id=0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    base, ft = models
    with pytest.raises(LsMergeError, match="has 4 decoder layers"):
        DualModelGenerator(base, [ft], MixSpec("lerp", 5, 0.5))
    with pytest.raises(LsMergeError, match="exactly one"):
        DualModelGenerator(base, [ft, ft], MixSpec("slerp", 1, 0.5))
    with pytest.raises(LsMergeError, match="hidden size"):
        other = tiny_causal_lm(None, hidden=16, initializer_range=0.02, max_position_embeddings=2048)
        DualModelGenerator(base, [other], MixSpec("lerp", 1, 0.5))


def _save_with_tokenizer(model, path):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 128)}}
    fast = word_tokenizer(vocab=vocab, unk="<pad>", chat_template="{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5",
                          bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    model.save_pretrained(path)
    fast.save_pretrained(path)


def test_cli_generate_and_steer_jsonl(models, tmp_path):
    from lsmerge.cli import main

    base, ft = models
    _save_with_tokenizer(base, tmp_path / "base")
    _save_with_tokenizer(ft, tmp_path / "ft")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w10 w11 w12\nw20 w21\n")
    out = tmp_path / "out.jsonl"
    main(["generate", "--base", str(tmp_path / "base"), "--fine_tuned", f"[{tmp_path / 'ft'}]", "--prompts", str(prompts),
          "--operator", "slerp", "--mix_layer", "2", "--beta", "0.5", "--max_new_tokens", "5",
          "--output", str(out)])  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and all(r["operator"] == "slerp" for r in rows)
    assert all(r["num_new_tokens"] >= 1 and r["response"] is not None for r in rows)
    deltas = tmp_path / "d.safetensors"
    main(["steer", "--base", str(tmp_path / "base"), "--fine_tuned", str(tmp_path / "ft"), "--prompts", str(prompts),
          "--layers", "[1, 2]", "--output", str(deltas)])  # fmt: skip
    out2 = tmp_path / "steer.jsonl"
    main(["generate", "--base", str(tmp_path / "base"), "--prompts", str(prompts), "--operator", "steer",
          "--mix_layer", "2", "--steering_deltas", str(deltas), "--alpha", "2.0", "--max_new_tokens", "4",
          "--output", str(out2)])  # fmt: skip
    assert len(out2.read_text().splitlines()) == 2
    text = tmp_path / "heldout.txt"
    text.write_text(" ".join(f"w{3 + (7 * i) % 120}" for i in range(200)))
    main(["sweep", "--base", str(tmp_path / "base"), "--fine_tuned", f"[{tmp_path / 'ft'}]", "--text", str(text),
          "--output_dir", str(tmp_path / "sweep"), "--layers", "[1, 3]", "--ratios", "[0.5]", "--seq_len", "32",
          "--max_chunks", "2"])  # fmt: skip
    assert (tmp_path / "sweep" / "sweep.csv").read_text().count("\n") == 1 + 2 + 2 * 2
    assert (tmp_path / "sweep" / "sweep_heatmap.png").exists()
    with pytest.raises(SystemExit):
        main(["generate", "--base", str(tmp_path / "base"), "--fine_tuned", f"[{tmp_path / 'ft'}]",
              "--prompts", str(prompts), "--mix_layer", "9", "--output", str(tmp_path / "x.jsonl")])  # fmt: skip
    assert not (tmp_path / "x.jsonl").exists()
