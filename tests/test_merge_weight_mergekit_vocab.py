"""`lsmerge.merge.weight.mergekit_vocab`: rows remapped to a tokenizer source's vocabulary, as mergekit does."""

import pytest
import torch

from lsmerge.merge.weight.mergekit_vocab import Vocabulary, remap_rows


def test_remap_rows_defaults_single_donor_base_average_zero_and_padding():
    # output tokens 0..4; P has tokens 0, 1, 2, 4 (at rows 3, 2, 1, 0); Q has 0, 1, 3 (rows 0, 1, 2);
    # R has 1, 2 (rows 1, 0). Token 4 only in P, token 3 only in Q; token 2 in P and R (base P):
    # base row; token 0 in P and Q, not R, base P: base row. Without a base: averages.
    perms = {"P": torch.tensor([3, 2, 1, -1, 0]), "Q": torch.tensor([0, 1, -1, 2, -1]), "R": torch.tensor([-1, 1, 0, -1, -1])}
    x = {"P": torch.tensor([[40.0], [20.0], [10.0], [0.0]]), "Q": torch.tensor([[1.0], [11.0], [31.0]]),
         "R": torch.tensor([[22.0], [12.0]])}
    out = remap_rows(x, Vocabulary(5, 6, perms, None, "P"))
    assert out["P"].flatten().tolist() == pytest.approx([0.0, 10.0, 20.0, 31.0, 40.0, 20.2])  # own rows, Q's token 3, pad = mean
    assert out["Q"].flatten().tolist()[:5] == [1.0, 11.0, 20.0, 31.0, 40.0]  # token 2 from the base P
    assert out["R"].flatten().tolist()[:5] == [0.0, 12.0, 22.0, 31.0, 40.0]  # token 0 from the base P
    no_base = remap_rows(x, Vocabulary(5, 5, perms, None, None))
    assert no_base["R"].flatten().tolist() == [0.5, 12.0, 22.0, 31.0, 40.0]  # token 0: mean of P and Q
    assert no_base["Q"].flatten().tolist()[2] == 21.0  # token 2: mean of P and R


@pytest.fixture(scope="module")
def union_llamas(tmp_path_factory):
    """Tiny Llamas P (config vocab_size 10) and Q (9) with the tokenizers of `union_inputs`: shared
    tokens at other ids, tokens only one of them has, added tokens."""
    from conftest import make_tiny_llama
    from test_merge_weight_mergekit_union import union_inputs

    root = tmp_path_factory.mktemp("union_llamas")
    (p, p_size), (q, q_size), _ = union_inputs()
    make_tiny_llama(root / "P", seed=0, vocab=p_size, tokenizer=p)
    make_tiny_llama(root / "Q", seed=1, vocab=q_size, tokenizer=q)
    return root / "P", root / "Q"


@pytest.mark.parametrize("tokenizer, rows", [
    ("tokenizer_source: union", 11),
    ("tokenizer:\n  source: union\n  pad_to_multiple_of: 8", 16),
    ("tokenizer:\n  pad_to_multiple_of: 8", 16),  # mergekit's default source is union
])
def test_union_merge_remaps_rows_token_by_token(union_llamas, tmp_path, tokenizer, rows):
    import json

    from transformers import AutoTokenizer

    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.command import merge_weights

    P, Q = union_llamas
    yml = tmp_path / "u.yml"
    yml.write_text(f"merge_method: linear\nbase_model: {P}\nmodels:\n  - model: {P}\n  - model: {Q}\n"
                   f"parameters: {{weight: 1}}\n{tokenizer}\n")
    out = merge_weights(mergekit_config=str(yml), out=str(tmp_path / "out"), progress=False)
    vocab = AutoTokenizer.from_pretrained(out).get_vocab()
    assert vocab == {"[UNK]": 0, "[PAD]": 1, "a": 2, "b": 3, "c": 4, "d": 5, "<s1>": 6, "<n>": 7, "e": 8, "f": 9, "<q>": 10}  # not Q's <late>: past its vocab_size
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == rows
    m, p, q = (dict(open_checkpoint(x).items()) for x in (out, P, Q))
    q_ids = {"[UNK]": 0, "[PAD]": 1, "d": 2, "e": 3, "a": 4, "f": 5, "<s1>": 6, "<q>": 7, "c": 8}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert m[name].shape == (rows, 32)
        for token, i in vocab.items():
            if token in q_ids and i < 8:  # both have it: the mean of their rows
                want = (p[name][i] + q[name][q_ids[token]]) / 2
            elif token in q_ids:  # only Q has it: Q's row in both remapped inputs
                want = q[name][q_ids[token]]
            else:  # only P
                want = p[name][i]
            assert torch.allclose(m[name][i], want, atol=1e-6), (name, token)
        assert torch.allclose(m[name][11:], m[name][:11].mean(dim=0).expand(rows - 11, -1), atol=1e-6)  # padding


def test_union_reads_a_model_without_tokenizer_as_the_base(union_llamas, tmp_path):
    """As mergekit: a model with no tokenizer files adds no tokens and is read with the base's vocabulary."""
    import shutil

    from transformers import AutoTokenizer

    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.command import merge_weights

    P, Q = union_llamas
    bare = tmp_path / "Q_bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(Q / f, bare / f)
    yml = tmp_path / "u.yml"
    yml.write_text(f"merge_method: linear\nbase_model: {P}\nmodels:\n  - model: {P}\n  - model: {bare}\n"
                   "parameters: {weight: 1}\ntokenizer_source: union\n")
    out = merge_weights(mergekit_config=str(yml), out=str(tmp_path / "out"), progress=False)
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(P).get_vocab()
    m, p, q = (open_checkpoint(x).get("model.embed_tokens.weight") for x in (out, P, bare))
    assert m.shape == (8, 32) and torch.allclose(m, (p[:8] + q[:8]) / 2, atol=1e-6)
