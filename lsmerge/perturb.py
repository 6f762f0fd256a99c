"""`lsmerge perturb`: a checkpoint with some tensors perturbed in a known way.

The reference a codec is measured against (issue 13): a model whose codec-covered tensors
carry iid noise of a given relative error, noise proportional to |w|, or int8 / int4 rounding
(`lsmerge.evaluate.noise_reference`). Scored beside a codec's export, it shows how far above
plain noise of the same size the codec's error sits. Streams tensor by tensor through
`CheckpointWriter` (atomic; config and tokenizer copied); the input is never modified.
"""

from __future__ import annotations

from lsmerge.errors import LsMergeError


def perturb(
    *,
    model: str,
    out: str,
    perturbation: str,
    level: float | None = None,
    kinds: list[str] | None = None,
    layers: list[int] | None = None,
    keep_top: float = 0.0,
    group: int = 64,
    seed: int = 0,
    max_shard_size: str = "2GB",
    overwrite: bool = False,
) -> str:
    """Write MODEL with the selected tensors perturbed.

    Args:
        model: Hugging Face checkpoint folder (or a name under checkpoints/base/).
        out: output folder (must not exist or be empty unless --overwrite true).
        perturbation: iid (Gaussian, ||E|| = level ||W|| per tensor), prop (noise proportional to
            |w|, same scaling), int8 (round-to-nearest per row) or int4 (per group of `group` values).
        level: relative error per tensor for iid / prop (e.g. 0.024); none for the roundings.
        kinds: module kinds perturbed (default [mlp], the codecs' default selection).
        layers: only these layers (default all).
        keep_top: iid only: leave this fraction of the largest |w| of each tensor exact.
        group: int4 group size.
        seed: noise seed (each tensor's generator is seeded from it and the tensor's name).
        max_shard_size: shard size of the output.
        overwrite: replace a non-empty output folder.

    Returns:
        The output folder.
    """
    from lsmerge.data.weight_datamodule import select_tensors
    from lsmerge.evaluate.noise_reference import perturbation as make, relative_errors
    from lsmerge.io.archmap import ArchitectureMap
    from lsmerge.io.hf import resolve_model
    from lsmerge.io.store import open_checkpoint
    from lsmerge.io.writer import CheckpointWriter, check_output_dir

    fn = make(perturbation, level, seed=seed, group=group, keep_top=keep_top)  # bad parameters: one error each
    store = open_checkpoint(resolve_model(model))
    check_output_dir(out, [store.path], overwrite)
    arch = ArchitectureMap.from_config(store.config, where=store.path)
    selected = set(select_tensors(store, arch, kinds or ["mlp"], layers))
    if not selected:
        raise LsMergeError(f"no floating-point tensors of kinds {kinds or ['mlp']} (layers {layers}) in {store.path}; widen --kinds.")
    config = {"command": "perturb", "model": str(model), "perturbation": perturbation, "level": level,
              "kinds": kinds or ["mlp"], "layers": layers, "keep_top": keep_top, "group": group, "seed": seed}  # fmt: skip
    with CheckpointWriter(out, source=store.path, inputs=[store.path], max_shard_size=max_shard_size, overwrite=overwrite,
                          config=config) as w:

        def written():  # streams: each tensor is written as it comes; the perturbed ones feed the error sums
            for name, t in store.items():
                new = fn(name, t) if name in selected else t
                w.add(name, new)
                if name in selected:
                    yield name, t, new, None

        err = relative_errors(written())["relative_error"]
    print(f"wrote {w.out} ({len(selected)} tensors perturbed by {perturbation}"
          f"{f' {level:g}' if level is not None else ''}, relative error {err:.4g}; {len(store) - len(selected)} copied)")
    return str(w.out)
