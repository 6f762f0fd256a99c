"""A mergekit recipe's tokenizer: `tokenizer_source` (base, union or one of the models) and `chat_template`.

With a tokenizer source, mergekit 0.1.5 gives the output that tokenizer and remaps the rows of
every vocabulary-indexed tensor (embeddings, lm_head) of every input to its vocabulary before
the merge (`PermutedVocabulary`); `VocabRemap` does the same, row for row:

    out vocabulary V: the source's token -> id (for `base`: the base's tokens with id < its
        config's vocab_size; for `union`: the tokenizer `mergekit_union` builds from every
        model's); rows R = |V| rounded up to `pad_to_multiple_of`
    p_m[v] = model m's id of token v, or -1 where m lacks it
    row v of model m's remapped tensor = x_m[p_m[v]] where p_m[v] >= 0, else a default:
        the one model that has the token: its row; no model has it: zeros; the base has it: the
        base's row; otherwise the mean of the rows of the models that have it (summed in the
        slice's source order, then divided)
    rows |V|..R-1 = the mean of rows 0..|V|-1 of that model's remapped tensor

The output's config says vocab_size = R; the tokenizer files are the source's (for `union`: the
built tokenizer as transformers' `save_pretrained` writes it, as mergekit writes it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.store import CheckpointStore
from lsmerge.merge.weight.mergekit_union import load_tokenizer_at, saved_files, union_tokenizer

#: the side files that make up a tokenizer (copied together from one model)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def config_vocab_size(config: dict) -> int | None:
    v = config.get("vocab_size", (config.get("text_config") or {}).get("vocab_size"))
    return int(v) if isinstance(v, int) else None


@dataclass
class Vocabulary:
    """The output vocabulary and each model's permutation into it."""

    vocab_len: int  # |V|
    rows: int  # R
    perms: dict[str, torch.Tensor]  # model -> (|V|,) long, -1 where the model lacks the token
    source: Path  # folder whose tokenizer files the output gets
    base: str | None
    built: Any = None  # the output's tokenizer when built here (union; transformers), not copied

    def is_identity(self, model: str, rows: int) -> bool:
        p = self.perms[model]
        return rows == self.rows == self.vocab_len and bool(torch.equal(p, torch.arange(self.vocab_len)))


def build_vocabulary(source: str, pad_to: int | None, base: str | None, models: list[str], paths: dict[str, Path],
                     stores: dict[str, CheckpointStore]) -> Vocabulary:
    """The output vocabulary of `tokenizer_source` `source` ('base', 'union' or a model of `models`)."""
    base_name = base or models[0]
    sizes = {m: config_vocab_size(stores[m].config) for m in models}
    toks = {m: load_tokenizer_at(paths[m], fast=m == base_name) for m in models}
    if toks[base_name] is None:
        raise LsMergeError(f"tokenizer_source needs the base model's tokenizer, but {paths[base_name]} has none. "
                           "Add its tokenizer files.")
    base_vocab = dict(toks[base_name].get_vocab())
    limit = sizes[base_name] or len(base_vocab)
    vocabs = {base_name: {t: i for t, i in base_vocab.items() if i < limit}}
    for m in models:
        if m not in vocabs:  # as mergekit: a model without a tokenizer is assumed to have the base's
            vocabs[m] = dict(toks[m].get_vocab()) if toks[m] is not None else vocabs[base_name]
    built = None
    if source in ("base", "union"):
        if len(vocabs[base_name]) != len(base_vocab):
            raise LsMergeError(f"the base tokenizer of {paths[base_name]} has tokens past its vocab_size {limit}; "
                               f"tokenizer_source {source} would rebuild it without them, which lsmerge does not do.")
        out, folder = vocabs[base_name], paths[base_name]
        if source == "union":
            others = [(toks[m], sizes[m]) for m in models if m != base_name and toks[m] is not None]
            built = union_tokenizer([(toks[base_name], sizes[base_name]), *others])
            out = dict(built.get_vocab())
    else:
        out, folder = (dict(toks[source].get_vocab()) if toks[source] is not None else None), paths[source]
        if out is None:
            raise LsMergeError(f"tokenizer_source {source!r} has no tokenizer files in {paths[source]}.")
    ids = sorted(out.values())
    if ids != list(range(len(out))):
        raise LsMergeError(f"the tokenizer of {folder} does not number its tokens 0..{len(out) - 1}; lsmerge cannot remap to it.")
    by_id = sorted(out, key=out.get)
    perms = {}
    for m in models:
        size = sizes[m] or len(vocabs[m])
        p = [vocabs[m].get(tok, -1) for tok in by_id]
        past = [tok for tok, i in zip(by_id, p) if i >= size]
        if past:
            raise LsMergeError(f"token {past[0]!r} has an id past the vocab_size {size} of {paths[m]} (padding?); "
                               "mergekit fails on it too. Use a tokenizer that matches the model.")
        perms[m] = torch.tensor(p, dtype=torch.long)
    rows = len(out)
    if pad_to and rows % pad_to:
        rows += pad_to - rows % pad_to
    return Vocabulary(len(out), rows, perms, folder, base, built)


@dataclass
class VocabRemap:
    """One task's remapping: `keys` name the models of the method's inputs, `base_key` the base's,
    `group` the models of mergekit's group in its order (for the defaults)."""

    vocab: Vocabulary
    keys: list[str]
    base_key: str | None
    group: list[str]

    def apply(self, xs: list[torch.Tensor], base: torch.Tensor | None) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        given = dict(zip(self.keys, xs))
        if self.base_key is not None:
            given[self.base_key] = base
        out = remap_rows({m: given[m] for m in self.group}, self.vocab)
        return [out[k] for k in self.keys], (out[self.base_key] if self.base_key is not None else None)


def remap_rows(tensors: dict[str, torch.Tensor], vocab: Vocabulary) -> dict[str, torch.Tensor]:
    """Each model's (rows_m, *D) tensor as (R, *D) rows of the output vocabulary (module docstring)."""
    models = list(tensors)
    dtype = tensors[models[0]].dtype
    for t in tensors.values():
        dtype = torch.promote_types(dtype, t.dtype)
    shape = tensors[models[0]].shape[1:]
    perms = [vocab.perms[m] for m in models]
    present = torch.stack([p >= 0 for p in perms])  # (M, |V|)
    count = present.sum(dim=0)
    missing = (~present).any(dim=0).nonzero().flatten()  # tokens some model lacks: they need a default
    default = torch.zeros((missing.numel(), *shape), dtype=dtype)
    if missing.numel():
        cnt = count[missing]
        if vocab.base in tensors:
            base_has = vocab.perms[vocab.base][missing] >= 0
        else:
            base_has = torch.zeros_like(cnt, dtype=torch.bool)
        single = cnt == 1
        averaged = (cnt > 1) & ~base_has
        for m, p in zip(models, perms):
            rows = p[missing]
            has = rows >= 0
            take = has & single
            default[take] = tensors[m][rows[take]].to(dtype)
            if m == vocab.base:
                pick = has & (cnt > 1)
                default[pick] = tensors[m][rows[pick]].to(dtype)
            add = has & averaged
            default[add] = default[add] + tensors[m][rows[add]].to(dtype)
        if bool(averaged.any()):
            default[averaged] /= cnt[averaged].to(dtype).view(-1, *([1] * len(shape)))
    result = {}
    for m, p in zip(models, perms):
        new = torch.zeros((vocab.rows, *shape), dtype=dtype)
        has = p >= 0
        new[: vocab.vocab_len][has] = tensors[m][p[has]].to(dtype)
        lacks = ~has[missing]
        new[missing[lacks]] = default[lacks]
        if vocab.rows > vocab.vocab_len:
            new[vocab.vocab_len :] = torch.mean(new[: vocab.vocab_len], dim=0)
        result[m] = new
    return result


# -- side files ---------------------------------------------------------------------------------


def _template_of(path: Path) -> str | None:
    """A model's chat template as transformers reads it (chat_template.jinja, else tokenizer_config.json's)."""
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text(encoding="utf-8")
    for fname, key in (("tokenizer_config.json", "chat_template"), ("chat_template.json", "chat_template")):
        if (path / fname).exists():
            t = json.loads((path / fname).read_text(encoding="utf-8")).get(key)
            if isinstance(t, list):
                t = next((e.get("template") for e in t if isinstance(e, dict) and e.get("name") == "default"), None)
            if t:
                return t
    return None


def tokenizer_side_files(folder: Path, chat_template: str | None, models: list[Path], built: Any = None) -> dict[str, Any]:
    """CheckpointWriter side_files giving the output the tokenizer of `folder` (or the tokenizer
    `built` here, saved by transformers as mergekit saves it) with `chat_template` ('auto': the
    most common template of `models`, the first on a tie; None: unchanged)."""
    if chat_template == "auto":
        found = [t.strip() for t in (_template_of(p) for p in models) if t]
        chat_template = max(found, key=found.count) if found else None
    if built is not None:
        if chat_template is not None:
            built.chat_template = chat_template
        return {f: None for f in TOKENIZER_FILES} | saved_files(built)
    files: dict[str, Any] = {f: (folder / f if (folder / f).exists() else None) for f in TOKENIZER_FILES}
    if chat_template is None:
        return files
    cfg_path = folder / "tokenizer_config.json"
    if not cfg_path.exists():
        raise LsMergeError(f"chat_template needs a tokenizer, but {folder} has no tokenizer_config.json. Add its tokenizer files.")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg["chat_template"] = chat_template
    files["tokenizer_config.json"] = (json.dumps(cfg, indent=2, ensure_ascii=False) + "\n").encode()
    files["chat_template.jinja"] = chat_template.encode()
    files["chat_template.json"] = None
    return files
