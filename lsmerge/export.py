"""`lsmerge export`: a checkpoint with the VAE's tensors replaced by their reconstructions.

For every tensor of `model`: when the VAE was trained on it (and `only` does not exclude
it), write ``decode(encode(W))`` cast to W's dtype; otherwise copy W unchanged. Streams one
tensor at a time through `CheckpointWriter` (atomic, sharded, config and tokenizer copied),
so the output loads with `AutoModelForCausalLM.from_pretrained(out)`.
"""

from __future__ import annotations

import re
from pathlib import Path

from lsmerge.errors import LsMergeError


def export(
    *,
    vae: str,
    model: str,
    out: str,
    only: str | None = None,
    device: str = "cpu",
    max_shard_size: str = "2GB",
    overwrite: bool = False,
    allow_partial_codec: bool = False,
    side_channel: float = 0.0,
    side_select: str = "error",
    importance: str | None = None,
) -> str:
    """Write MODEL with the tensors the VAE was trained on replaced by VAE reconstructions.

    Args:
        vae: the weight-VAE checkpoint (`.ckpt` written by `lsmerge fit`, e.g. checkpoints/vae/tiny/last.ckpt).
        model: Hugging Face checkpoint folder (or a name under checkpoints/base/ or checkpoints/merged/)
            whose tensors are reconstructed.
        out: output folder (must not exist or be empty unless --overwrite true).
        only: optional regex; reconstruct only trained tensors whose name matches it.
        device: where the VAE runs (cpu, cuda).
        max_shard_size: shard size of the output.
        overwrite: replace a non-empty output folder.
        allow_partial_codec: accept a VAE that covers only some of the model's tensors of the kinds
            it was trained on (e.g. trained on 4 of 8 layers); the rest are copied. Without it that
            is an error. A narrowed export (--only) is never partial.
        side_channel: keep this fraction (in (0, 0.5], e.g. 0.01) of each tensor's entries exact
            beside the latent (`lsmerge.codecs.side_channel`); 0 = off.
        side_select: which entries the side channel keeps: error (default; largest (w - decoded)^2 h_j,
            the greedy optimum for the output-weighted error) or saliency (largest w^2 h_j).
        importance: input statistics of `lsmerge importance` for the saliency (default: none, or
            the file beside a VAE trained with output weighting, which needs its own).

    Returns:
        The output folder.
    """
    from lsmerge.codecs.load import vae_statistics
    from lsmerge.codecs.side_channel import SideChannelCodec, check_fraction, check_selection
    from lsmerge.codecs.task_code_vae import task_code_data
    from lsmerge.codecs.vae import VAECodec, read_vae_checkpoint, weight_vae_from
    from lsmerge.io.archmap import ArchitectureMap
    from lsmerge.io.store import open_checkpoint
    from lsmerge.io.writer import CheckpointWriter, check_output_dir

    from lsmerge.io.hf import resolve_model

    check_selection(side_select)
    if side_channel:
        check_fraction(side_channel)
    store = open_checkpoint(resolve_model(model))
    check_output_dir(out, [store.path], overwrite)
    ckpt = read_vae_checkpoint(vae)
    if task_code_data(ckpt) is not None:
        raise LsMergeError(f"the VAE {vae} was fitted on task-vector codes (data.source: task_codes), not on weights; export "
                           "reconstructs weights. Merge through it with lsmerge merge --codec (base and experts of its fit).")
    codec = VAECodec(weight_vae_from(ckpt), device=device)
    stats = vae_statistics(Path(vae), codec, importance)
    if side_channel:
        codec = SideChannelCodec(codec, side_channel, stats, side_select)
    model_type = ArchitectureMap.from_config(store.config).family.name if store.config else None
    codec.check_model(model_type, {n: store.shape(n) for n in store.names})
    try:
        rx = re.compile(only) if only else None
    except re.error as e:
        raise LsMergeError(f"--only {only!r} is not a valid regex ({e}).") from None
    if rx is None and not allow_partial_codec:
        amap = ArchitectureMap.from_config(store.config, where=store.path)
        trained_kinds = {spec["kind"] for spec in codec.specs.values()}
        missing = [n for n in store.names if amap.role(n).kind in trained_kinds and store.dtype(n).is_floating_point
                   and not codec.covers(n)]
        if missing:
            raise LsMergeError(f"the VAE covers only some of {store.path}'s {sorted(trained_kinds)} tensors: {len(missing)} are "
                               f"not covered, e.g. {missing[0]} (it was trained on {len(codec.names)}). Use a VAE trained on "
                               "the whole model, narrow the export with --only, or pass --allow_partial_codec true to copy them.")
    selected = {n for n in codec.names if rx is None or rx.search(n)}
    if not selected:
        raise LsMergeError(f"--only {only!r} matches none of the VAE's {len(codec.names)} tensors; widen it.")
    config = {"command": "export", "vae": str(vae), "model": str(model), "only": only}
    if side_channel:
        config["side_channel"] = side_channel
        config["side_select"] = side_select
        config["importance"] = stats.describe() if stats else None
    if allow_partial_codec:
        config["allow_partial_codec"] = True
    replaced = 0
    hint = "The VAE's reconstruction overflowed; use another VAE checkpoint or narrow --only."
    with CheckpointWriter(out, source=store.path, inputs=[store.path, vae], max_shard_size=max_shard_size, overwrite=overwrite,
                          config=config, nonfinite_hint=hint) as w:
        for name, t in store.items():
            if name in selected:
                t = codec.reconstruct(name, t)
                replaced += 1
            w.add(name, t)
    print(f"wrote {w.out} ({replaced} tensors reconstructed by the VAE, {len(store) - replaced} copied)")
    return str(w.out)
