"""Gram matrices of linear-layer inputs over calibration text, for RegMean.

Loads a model with transformers (float32, eval), hooks every selected `nn.Linear` with a
forward pre-hook, runs the calibration batches and accumulates G = sum_t x_t x_t^T over real
(non-padding) tokens in float64, returning the average G / n_tokens per weight name. Hooks
are always removed (try/finally) and the model is dropped before the next one loads.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.hf import load_causal_lm, load_tokenizer
from lsmerge.io.text import EncodingErrors, read_text


@dataclass
class Calibration:
    """Calibration text for RegMean.

    Args:
        files: plain-text files; each is split into documents at blank lines.
        texts: inline documents.
        tokenizer: a folder with a tokenizer used for every model (default: each model's own).
        max_tokens: stop adding documents once this many tokens are gathered.
        seq_len: documents are truncated to this many tokens.
        batch_size: documents per forward pass (right-padded; padding is masked out of the Grams).
        encoding_errors: strict (a calibration file that is not UTF-8 is an error) or replace (bad bytes become U+FFFD).
    """

    files: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    max_tokens: int = 2048
    seq_len: int = 128
    batch_size: int = 4
    encoding_errors: EncodingErrors = "strict"

    def documents(self) -> list[str]:
        docs = [t for t in self.texts if t.strip()]
        for f in self.files:
            p = Path(f)
            if not p.is_file():
                raise LsMergeError(f"calibration file {p} does not exist. Check calibration.files.")
            found = [d.strip() for d in read_text(p, "calibration file", self.encoding_errors).split("\n\n") if d.strip()]
            if not found:
                raise LsMergeError(f"calibration file {p} is empty (no text in it); give a file of documents separated "
                                   "by blank lines.")
            docs += found
        if not docs:
            raise LsMergeError("regmean needs calibration text: set calibration.files or calibration.texts.")
        return docs


def calibration_batches(tokenizer, calib: Calibration) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Tokenise documents into right-padded batches: [(input_ids (B, L), attention_mask (B, L))]."""
    seqs, total = [], 0
    for doc in calib.documents():
        ids = tokenizer(doc, truncation=True, max_length=calib.seq_len)["input_ids"]
        if not ids:
            continue
        seqs.append(ids)
        total += len(ids)
        if total >= calib.max_tokens:
            break
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = []
    for i in range(0, len(seqs), calib.batch_size):
        group = seqs[i : i + calib.batch_size]
        width = max(len(s) for s in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for r, s in enumerate(group):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        batches.append((ids, mask))
    return batches


def calibration_tokenizer(path: str | Path):
    """The tokenizer that reads the calibration text; a RegMean-specific message when there is none."""
    try:
        return load_tokenizer(path)
    except LsMergeError:
        raise LsMergeError(
            f"regmean needs a tokenizer to read the calibration text, and none loads from {path}. "
            "Copy tokenizer files into the checkpoint or set calibration.tokenizer to a folder with one."
        ) from None


def collect_grams(model_path: str | Path, weight_names: set[str], calib: Calibration, device: str = "cpu",
                  diagonal: bool = False) -> dict[str, torch.Tensor]:
    """Average input Gram (in, in) float64 of each nn.Linear whose `<module>.weight` is in `weight_names`;
    with `diagonal`, only its diagonal (in,): the mean of x_j^2 (memory O(in); lsmerge.data.importance)."""
    tokenizer = calibration_tokenizer(calib.tokenizer or model_path)
    batches = calibration_batches(tokenizer, calib)
    model = load_causal_lm(model_path, "float32", device)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    state: dict[str, torch.Tensor] = {}

    def make_hook(key: str):
        def hook(module, args):
            x = args[0]
            x = x[state["mask"]] if x.dim() == 3 else x.reshape(-1, x.shape[-1])
            x = x.to(torch.float64)
            if key not in sums:
                size = (x.shape[-1],) if diagonal else (x.shape[-1], x.shape[-1])
                sums[key] = torch.zeros(size, dtype=torch.float64, device=x.device)
                counts[key] = 0
            sums[key] += x.pow(2).sum(0) if diagonal else x.T @ x
            counts[key] += x.shape[0]

        return hook

    handles = []
    try:
        for mod_name, module in model.named_modules():
            key = f"{mod_name}.weight"
            if isinstance(module, torch.nn.Linear) and key in weight_names:
                handles.append(module.register_forward_pre_hook(make_hook(key)))
        with torch.no_grad():
            for ids, mask in batches:
                state["mask"] = mask.to(device).bool()
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        del model
        gc.collect()
    return {k: (sums[k] / max(counts[k], 1)).cpu() for k in sums}
