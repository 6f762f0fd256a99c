"""`lsmerge.merge.weight.mergekit_union`: mergekit 0.1.5's union tokenizer built from several tokenizers."""

from conftest import word_tokenizer

from lsmerge.merge.weight.mergekit_union import saved_files, union_tokenizer


def union_inputs():
    """Three word-level tokenizers that share some tokens, each with some the others lack, and added tokens.

    P (the base, config vocab_size 10): [UNK] [PAD] a b c d, added <s1> (special), <n> (not special).
    Q (vocab_size 9): [UNK] [PAD] d e a f, added <s1> (special, lstrip: other settings than P's),
      <q> (special), c (not special; a plain token of P), <late> (id 9, past Q's vocab_size).
    R (no vocab_size: its tokenizer's 4 tokens without the added ones): [UNK] [PAD] h e, added <r> (id 4).
    """
    from tokenizers import AddedToken

    def tok(words, added=()):
        t = word_tokenizer(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]", pad_token="[PAD]")
        for content, special, lstrip in added:
            t.add_tokens([AddedToken(content, special=special, normalized=not special, lstrip=lstrip)], special_tokens=special)
        return t

    p = tok(["[UNK]", "[PAD]", "a", "b", "c", "d"], [("<s1>", True, False), ("<n>", False, False)])
    q = tok(["[UNK]", "[PAD]", "d", "e", "a", "f"], [("<s1>", True, True), ("<q>", True, False), ("c", False, False),
                                                     ("<late>", True, False)])
    r = tok(["[UNK]", "[PAD]", "h", "e"], [("<r>", True, False)])
    return [(p, 10), (q, 9), (r, None)]


def test_union_vocabulary_order_added_tokens_and_sizes():
    inputs = union_inputs()
    before = [dict(t.get_vocab()) for t, _ in inputs]
    out = union_tokenizer(inputs)
    # the base's ids; new plain tokens by model (Q, then R), each by its ids: e, f, h; then new added <q>
    assert out.get_vocab() == {"[UNK]": 0, "[PAD]": 1, "a": 2, "b": 3, "c": 4, "d": 5, "<s1>": 6, "<n>": 7,
                               "e": 8, "f": 9, "h": 10, "<q>": 11}
    added = {t.content: t for t in out.added_tokens_decoder.values()}
    assert not added["<s1>"].lstrip and added["<s1>"].special  # the first model's settings
    assert not added["c"].special and out.get_vocab()["c"] == 4  # Q's added c keeps P's id
    assert "<late>" not in added and "<r>" not in added  # past Q's vocab_size; past R's tokenizer vocab_size
    assert [dict(t.get_vocab()) for t, _ in inputs] == before  # the inputs are left as they were
    assert out.tokenize("a e <q> h c") == ["a", "e", "<q>", "h", "c"]


def test_union_of_one_tokenizer_is_that_tokenizer_and_saves_its_files():
    p, size = union_inputs()[0]
    out = union_tokenizer([(p, size)])
    assert out.get_vocab() == p.get_vocab()
    files = saved_files(out)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files["tokenizer.json"] == saved_files(p)["tokenizer.json"]
