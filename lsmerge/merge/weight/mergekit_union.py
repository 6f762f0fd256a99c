"""mergekit's `union` tokenizer source: one vocabulary built from every model's tokenizer.

mergekit 0.1.5 (`tokenizer/build.py`, `build_union_tokenizer`) builds it from the base's
tokenizer (the first model's without a base) and the tokenizers of the other models, base first,
then in the recipe's order (a model without tokenizer files is left out and read as the base's):

    size_m  = model m's config vocab_size, else its tokenizer's vocab_size (without added tokens)
    plain   = every token t with id_m(t) < size_m of every model, in first-seen order
    added   = every added token (content and flags: special, normalized, lstrip, ...) with id < size_m,
              the first model's settings kept when models disagree
    output  = the base tokenizer, saved and reloaded, then
              add_tokens(t) for each t of plain that is neither in the base's vocabulary nor added,
              add_tokens(token) for each added token (one already in the vocabulary keeps its id)

so the base's tokens keep their ids, the new plain tokens follow (ids len(base)..), then the
new added tokens. mergekit visits one tokenizer's tokens in its `get_vocab()` order, a hash order
that changes from run to run, and the models other than the base in the order of a Python set
(`referenced_models()`, string hashes: it changes too, and without a `base_model` so does which
model is the base); so the ids it gives new tokens differ from run to run. lsmerge visits the
models base first, then in the recipe's order (the first model is the base when there is no
`base_model`), each tokenizer's tokens by ascending id: one of mergekit's possible outcomes.
Every token's row, the vocabulary as a set, the base's tokens' ids, the added tokens' settings,
the vocab size and the written tokenizer (transformers' `save_pretrained` of the result, so files
as mergekit writes them) are mergekit's; `scripts/compare_mergekit.py` compares them token by token.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lsmerge.errors import LsMergeError


def load_tokenizer_at(path: Path, fast: bool = False) -> Any | None:
    """The tokenizer saved in `path` as mergekit loads it (`AutoTokenizer`), or None when the folder has none."""
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), **({"use_fast": True} if fast else {}))
    except (OSError, ValueError) as e:
        raise LsMergeError(f"the tokenizer of {path} does not load ({e}). Fix its files or choose another tokenizer_source.") from None


def union_tokenizer(tokenizers: list[tuple[Any, int | None]]) -> Any:
    """The union of `tokenizers`, (tokenizer, config vocab_size or None) with the base's first,
    as a new transformers tokenizer (module docstring); the inputs are left unchanged."""
    from transformers import AutoTokenizer

    plain: dict[str, None] = {}
    added: dict[str, Any] = {}
    for tok, size in tokenizers:
        size = size or tok.vocab_size
        for token, idx in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if idx < size:
                plain.setdefault(token)
        for idx, info in tok.added_tokens_decoder.items():
            if idx < size:
                added.setdefault(info.content, info)
    base = tokenizers[0][0]
    with tempfile.TemporaryDirectory(prefix="lsmerge-union-") as d:  # a copy: the base stays as it is
        base.save_pretrained(d, legacy_format=False, safe_serialization=True)
        out = AutoTokenizer.from_pretrained(d, use_fast=True)
    base_vocab = base.get_vocab()
    # one call per group (in order, as mergekit's one-at-a-time calls number them): a call per token
    # rebuilds the tokenizer's added-token trie each time, quadratic in the new tokens
    new_plain = [token for token in plain if token not in added and token not in base_vocab]
    if new_plain:
        out.add_tokens(new_plain)
    for info in added.values():
        out.add_tokens(info)
    return out


def saved_files(tokenizer: Any) -> dict[str, bytes]:
    """The files transformers' `save_pretrained` writes for `tokenizer`, by name."""
    with tempfile.TemporaryDirectory(prefix="lsmerge-union-") as d:
        tokenizer.save_pretrained(d, safe_serialization=True)
        return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}
