"""`lsmerge importance`: input second moments of a model's linear layers over calibration text.

Runs the model on the calibration text with forward pre-hooks on every selected linear layer
(`lsmerge.merge.weight.gram.collect_grams`, diagonal only: memory O(in) per layer) and writes
h_j = mean_t x_tj^2 per weight name as safetensors with the calibration text's digest
(`lsmerge.data.importance.ImportanceStats`). A codec fitted with output weighting
(`PCACodec.fit(importance=...)`, `lsmerge fit` with `data.importance` and
`model.output_weighting: true`) and the exact side channel (`--side_channel`) read it.
"""

from __future__ import annotations

import json

from lsmerge.errors import LsMergeError
from lsmerge.merge.weight.gram import Calibration


def importance(
    *,
    model: str,
    out: str,
    calibration: Calibration | None = None,
    kinds: list[str] | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> str:
    """Collect per-column input second moments (diag of X^T X / n) of a model's linear layers.

    Args:
        model: Hugging Face checkpoint folder (or a name under checkpoints/base/).
        out: the safetensors file to write (e.g. checkpoints/vae/smollm2/importance.safetensors).
        calibration: calibration text: {files: [...], texts: [...], max_tokens: 2048, seq_len: 128,
            batch_size: 4, tokenizer: null, encoding_errors: strict} (as for regmean).
        kinds: module kinds whose linear weights are measured (default [mlp]).
        device: where the model runs (cpu, cuda).
        overwrite: replace an existing output file.

    Returns:
        The output file.
    """
    from pathlib import Path

    from lsmerge.data.importance import ImportanceStats, text_digest
    from lsmerge.data.weight_datamodule import select_tensors
    from lsmerge.io.archmap import ArchitectureMap
    from lsmerge.io.hf import resolve_model
    from lsmerge.io.store import open_checkpoint
    from lsmerge.merge.weight.gram import collect_grams

    calib = _calibration(calibration)
    docs = calib.documents()  # missing, empty or undecodable files: one LsMergeError each
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise LsMergeError(f"{out_path} exists; pass --overwrite true to replace it.")
    if out_path.is_dir():
        raise LsMergeError(f"{out_path} is a folder; give the path of a .safetensors file.")
    path = resolve_model(model)
    store = open_checkpoint(path)
    arch = ArchitectureMap.from_config(store.config, where=store.path)
    names = [n for n in select_tensors(store, arch, kinds or ["mlp"]) if len(store.shape(n)) == 2]
    if not names:
        raise LsMergeError(f"no 2-d linear weights of kinds {kinds or ['mlp']} in {store.path}; widen --kinds.")
    h = collect_grams(path, set(names), calib, device, diagonal=True)
    missing = [n for n in names if n not in h]
    if missing:
        raise LsMergeError(f"no nn.Linear input was seen for {len(missing)} weights, e.g. {missing[0]}; narrow --kinds.")
    settings = {"max_tokens": calib.max_tokens, "seq_len": calib.seq_len, "tokenizer": calib.tokenizer}
    digest = text_digest([json.dumps(settings, sort_keys=True), *docs])
    tokens = _tokens(path, calib)
    stats = ImportanceStats({n: h[n] for n in names}, digest, tokens, str(model))
    stats.save(out_path)
    print(f"importance: wrote {out_path} ({len(names)} tensors, {tokens} calibration tokens, digest {digest[:12]})")
    return str(out_path)


def _calibration(calibration) -> Calibration:
    if calibration is None:
        raise LsMergeError("lsmerge importance needs calibration text: set --calibration '{files: [FILE]}' (or texts).")
    if isinstance(calibration, Calibration):
        return calibration
    if not isinstance(calibration, dict):
        raise LsMergeError(f"--calibration must be a mapping such as {{files: [FILE]}}, got {calibration!r}.")
    unknown = set(calibration) - set(Calibration.__dataclass_fields__)
    if unknown:
        raise LsMergeError(f"unknown calibration keys {sorted(unknown)}; use {sorted(Calibration.__dataclass_fields__)}.")
    calib = Calibration(**calibration)
    if not calib.files and not any(t.strip() for t in calib.texts):
        raise LsMergeError("lsmerge importance needs calibration text: calibration.files and calibration.texts are empty.")
    return calib


def _tokens(path, calib) -> int:
    """Calibration tokens the batches hold (real tokens, padding excluded)."""
    from lsmerge.merge.weight.gram import calibration_batches, calibration_tokenizer

    return int(sum(int(mask.sum()) for _, mask in calibration_batches(calibration_tokenizer(calib.tokenizer or path), calib)))
