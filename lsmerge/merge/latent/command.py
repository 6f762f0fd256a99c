"""`lsmerge merge`: LS-Merge -- encode, combine in latent space, decode, write a Hugging Face checkpoint.

Streams one output tensor at a time: the inputs' copies of that tensor are read, encoded by
the codec, combined by the registered method (`lsmerge.merge.latent.METHODS`), decoded and
written by `CheckpointWriter`; peak memory is a few tensors, independent of depth. Tensors the
codec does not cover (or that are outside `kinds`) are merged in weight space by
`fallback_method`, so the output is always a complete model (`homogeneous.HomogeneousJob`).
Methods across architectures (`hetero`) run as `hetero.HeteroJob`.

Codecs: `pca` fits a PCA codec (lsmerge.codecs.pca) on the inputs' selected tensors; `task_vector`
fits the joint-SVD task-vector codec (lsmerge.codecs.task_vector) on the base and the models; a path
is a saved PCA or task-vector codec or a trained weight-VAE checkpoint (`lsmerge.codecs.load.load_codec`; a VAE
fitted on task-vector codes is bound to its base and experts: `lsmerge.codecs.task_code_vae`).
`side_channel` q wraps a PCA or VAE codec in the exact sparse side channel
(`lsmerge.codecs.side_channel`) for methods linear in their inputs, without delta coding.
This module checks the arguments against the method's registered traits; it holds no
per-method branches.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, get_args

from tqdm.auto import tqdm

from lsmerge.codecs.pca import BASIS_PER, BasisPer
from lsmerge.codecs.side_channel import check_fraction, check_selection
from lsmerge.data.chunking import Layout
from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import expand_kinds
from lsmerge.io.compat import check_same_architecture, check_tokenizers
from lsmerge.io.hf import auto_name, resolve_model, resolve_models
from lsmerge.io.store import open_checkpoint
from lsmerge.io.writer import CheckpointWriter, check_output_dir
from lsmerge.memory import return_freed_tensors_to_the_os
from lsmerge.merge.latent.base import LatentMethod, MergeParams, check_convex_weights, check_density, check_lambda, get_method
from lsmerge.merge.latent.depth import DIM_MATCH, DimMatch
from lsmerge.merge.latent.hetero import HeteroJob
from lsmerge.data.task_codes import check_rank_fraction
from lsmerge.merge.latent.homogeneous import TASK_VECTOR, CodecSettings, HomogeneousJob
from lsmerge.torch_options import resolve_device, resolve_dtype

DeltaMode = Literal["none", "weight", "latent"]
DELTA_MODES = get_args(DeltaMode)
# arguments that only say where or how the output is written, not what it holds: not provenance
OUTPUT_ONLY = ("out", "out_root", "overwrite", "save_codec", "progress")
HOMOGENEOUS_HINT = "Merge models that share an architecture and tokenizer, or use method: hetero (with a codec per family)."


def _check_delta(m: LatentMethod, delta: str, has_base: bool) -> None:
    if delta == "none":
        return
    if m.architectures == "two":
        if delta == "weight":
            raise LsMergeError(f"delta: weight needs one architecture (W_i - W_base); with method: {m.name} use "
                               "delta: latent (W_target + D(z_merged) - D(z_target)) or none.")
    elif m.draw is not None:
        if delta == "weight":
            raise LsMergeError("self-merge has no expert-minus-base difference; use delta: latent (W + D(z_merged) - D(z)) or none.")
    elif not has_base:
        raise LsMergeError(f"delta: {delta} needs a base model: set base.")


def _check_side_channel(m: LatentMethod, delta: str, codecs: list[str], side_channel: float, importance: str | None) -> None:
    """The side channel needs a method linear in its inputs, no delta coding, a PCA or VAE codec;
    --importance needs something that reads it."""
    if side_channel:
        check_fraction(side_channel)
        if m.linear is None:
            raise LsMergeError(f"method {m.name} is not linear in its inputs, so the side channel's exact corrections have no "
                               "coefficients to be combined with; use lerp, soup, self or task_arithmetic with --side_channel, "
                               "or drop --side_channel.")
        if delta != "none":
            raise LsMergeError(f"delta: {delta} already cancels the codec's error on the base (the output is W_base plus a "
                               "decoded difference), so the side channel has nothing to correct; use delta: none with "
                               "--side_channel, or drop --side_channel.")
        if TASK_VECTOR in codecs:
            raise LsMergeError("the side channel wraps a PCA or VAE codec; the task-vector codec codes W - W_base itself "
                               "(like delta coding). Use codec: pca or a VAE with --side_channel, or drop --side_channel.")
    elif importance and codecs[0] in ("pca", TASK_VECTOR):
        raise LsMergeError(f"--importance is read by the side channel (--side_channel q) or by a saved codec fitted with "
                           f"importance weighting; with codec: {codecs[0]} and no side channel it would be unused. Pass "
                           "--side_channel or drop --importance.")
    if importance and m.architectures == "two":
        raise LsMergeError(f"{m.name} does not read --importance; drop it.")


def _check_values(m: LatentMethod, n: int, lam: float, lam_schedule, weights, density, samples, temperature) -> list | None:
    """Check lam / weights / density / samples against the method's traits; the weights to use."""
    if m.lam_in_unit:
        check_lambda(lam)
        for v in lam_schedule or []:
            check_lambda(v, "lam_schedule")
    elif not math.isfinite(lam):
        raise LsMergeError(f"lam must be a finite number, got {lam}.")
    if m.weights == "convex":
        weights = check_convex_weights(weights if weights is not None else [1.0 / n] * n, n)
    elif m.weights is not None:
        weights = [1.0] * n if weights is None else [float(w) for w in weights]
        if len(weights) != n or not all(math.isfinite(w) for w in weights):
            raise LsMergeError(f"give one finite weight per model ({n}), got {weights}.")
        if m.weights == "non_negative" and any(w < 0 for w in weights):
            raise LsMergeError(f"{m.name} weights must be non-negative, got {weights}.")
    elif weights is not None:
        raise LsMergeError(f"{m.name} takes lam (and lam_schedule), not weights; remove weights.")
    if m.density:
        check_density(density)
    if m.draw is not None and (samples < 1 or temperature < 0 or not math.isfinite(temperature)):
        raise LsMergeError(f"self-merge needs samples >= 1 and temperature >= 0, got {samples} and {temperature}.")
    return weights


def merge(
    *,
    method: str = "lerp",
    models: list[str] | None = None,
    base: str | None = None,
    codec: str | list[str] = "pca",
    weights: list[float] | None = None,
    lam: float | None = None,
    lam_schedule: list[float] | None = None,
    density: float = 0.5,
    sign_election: bool = False,
    samples: int = 4,
    temperature: float = 1.0,
    delta: DeltaMode = "none",
    kinds: list[str] | None = None,
    fallback_method: str = "auto",
    ot: bool = True,
    dim_match: DimMatch = "pca",
    shrinkage: str | float = "auto",
    chunk_size: int = 64,
    rank: int | None = None,
    rank_fraction: float | None = None,
    pca_basis: BasisPer = "tensor",
    layout: Layout = "flat",
    save_codec: str | None = None,
    seed: int = 0,
    out: str | None = None,
    out_root: str = "checkpoints/merged",
    overwrite: bool = False,
    dtype: str | None = None,
    max_shard_size: str = "2GB",
    progress: bool = True,
    layer_pattern: str | None = None,
    allow_partial_codec: bool = False,
    device: str = "cpu",
    side_channel: float = 0.0,
    side_select: str = "error",
    importance: str | None = None,
) -> str:
    """LS-Merge: combine models in a codec's latent space (VAE or PCA), across architectures with OT.

    Methods: lerp, soup, task arithmetic, TIES and DARE on latent task vectors, self-merge of
    posterior samples, delta coding, and heterogeneous merges (depth map, dimension matching,
    Gaussian optimal transport, target decoder).

    Args:
        method: lerp | soup | task_arithmetic | ties | dare | self | hetero.
        models: checkpoint folders (or names under checkpoints/base/). lerp: [lam=0, lam=1];
            soup: N models; task_arithmetic / ties / dare: the fine-tuned models; self: one
            model; hetero: [target, source] (the output has the target's architecture).
        base: base model of task_arithmetic / ties / dare and of delta coding.
        codec: `pca` (fit a PCA codec on the inputs), `task_vector` (fit a task-vector codec on
            base and models: each expert coded by its coefficients U^T (W_i - W_base) in the joint
            SVD basis U of the experts' task matrices, output W_base + U z_merged; needs base), a
            saved PCA or task-vector codec folder (the latter only with the base and experts it
            was built from) or a trained VAE checkpoint (one fitted on task-vector codes, `data.source: task_codes`,
            codes W_base + U_r D(z) and takes only the base and experts it was fitted on: lsmerge.codecs.task_code_vae);
            hetero takes one per side, [target codec, source codec] (`pca` alone fits one per side).
        weights: soup: convex weights (>= 0, sum 1; default uniform); task_arithmetic / ties /
            dare: one weight per model (default 1), scaled by lam.
        lam: lerp and hetero: position in [0, 1] (0 = the first model / the target); self:
            posterior/prior mix in [0, 1]; task_arithmetic / ties / dare: task-vector scale.
            Default per method: lerp 0.5, hetero 0.1 (the paper's), self 0, others 1.
        lam_schedule: lam per layer, anchors spread over depth (overrides lam).
        density: ties: fraction of each latent task vector kept; dare: keep probability.
        sign_election: dare: TIES sign election after the drop (DARE-TIES).
        samples: self: number K of posterior samples merged.
        temperature: self: posterior sampling temperature (0 = the posterior mean).
        delta: delta coding: none | weight (encode W_i - W_base, output W_base + D(merged)) |
            latent (output W_base + D(z_merged) - D(z_base); hetero: W_target + D_t(Z) - D_t(Z_target),
            so the target codec's reconstruction error cancels and lam 0 gives the target). Through a VAE on
            task-vector codes, latent is W_base + U_r (D(z_merged) + sum_i c_i (C_i - D(z_i))) for lerp, soup and
            task_arithmetic (c_i: the method's coefficients), weight is refused.
        kinds: module kinds or groups encoded by the codec (default [mlp, attn]): the selection. A
            saved or VAE codec must cover every selected tensor (use kinds [mlp] with a VAE trained
            on the MLP) unless allow_partial_codec.
        fallback_method: for tensors the codec does not cover: auto (the same method in weight
            space; copy for self / hetero), copy (from the first model / base), or a
            weight-space method of `lsmerge merge-weights` (linear, slerp, task_arithmetic,
            ties, dare_linear, dare_ties).
        ot: hetero: align the source latent cloud to the target's with Gaussian OT (false =
            interpolation without OT, the ablation).
        dim_match: hetero: latent_dim matching, pca (principal axes of the source set) or
            truncate (truncate / zero-pad).
        shrinkage: hetero OT covariance shrinkage: auto (Ledoit-Wolf when samples <= dims),
            ledoit_wolf, none, or a number in [0, 1].
        chunk_size: pca codec: values per chunk.
        rank: pca codec: principal axes kept (latent_dim); default chunk_size (lossless).
            task_vector codec: singular directions kept per tensor (capped at the joint rank).
        rank_fraction: task_vector codec: fraction in (0, 1] of each tensor's joint rank
            min(out, N * in) kept (default: full rank, lossless); with a saved task-vector
            codec, a lower rank than it was saved at.
        pca_basis: pca codec: one basis per tensor or per kind.
        layout: pca codec: chunk layout, flat or rows.
        save_codec: save the fitted PCA or task-vector codec(s) to this folder (hetero: target/ and source/).
        seed: seed of DARE masks and self-merge samples (per tensor, from the tensor name).
        out: output folder (default: auto-named under out_root).
        out_root: where auto-named outputs go.
        overwrite: replace a non-empty output folder.
        dtype: output dtype float32 | bfloat16 | float16 (default: the reference's dtypes).
        max_shard_size: output shard size, e.g. 2GB.
        progress: show progress bars.
        layer_pattern: regex with a (?P<layer>\\d+) group for architectures lsmerge does not know.
        allow_partial_codec: accept a codec that covers only some of the selected tensors (`kinds`;
            hetero: of the target), e.g. a VAE trained on 4 layers applied to an 8-layer model or
            on [mlp] with kinds [mlp, attn]; the uncovered ones go to fallback_method. Without it
            that is an error naming how many are not covered.
        device: task_vector codec: where its SVDs and basis products run, cpu | cuda | auto.
        side_channel: keep this fraction (in (0, 0.5], e.g. 0.01) of each input tensor's entries
            exact beside its code (`lsmerge.codecs.side_channel`) and carry them into
            the merge with the method's coefficients: W = D(z_merged) + sum_i c_i R_i, R_i = W_i -
            D(z_i) on the kept entries. PCA or VAE codec; lerp, soup, self (c = 1 - lam) and
            task_arithmetic (the base too) only; delta: none. 0 = off.
        side_select: which entries the side channel keeps: error (default; largest (w - D(z))^2 h_j,
            the greedy optimum for the output-weighted error) or saliency (largest w^2 h_j).
        importance: statistics of `lsmerge importance` for the side channel's saliency, or of a saved
            codec fitted with importance weighting (default: the file beside it).
    Returns: the output folder.
    """
    given = dict(locals())
    if isinstance(lam, bool) or (lam is not None and not isinstance(lam, (int, float))):
        raise LsMergeError(f"lam must be a number, got {lam!r}.")
    kinds = list(kinds or ["mlp", "attn"])
    kind_set = expand_kinds(kinds)
    m = get_method(method)
    if delta not in DELTA_MODES:
        raise LsMergeError(f"delta must be one of {DELTA_MODES}, got {delta!r}.")
    out_dtype = resolve_dtype(dtype)
    if pca_basis not in BASIS_PER:
        raise LsMergeError(f"pca_basis must be one of {BASIS_PER}, got {pca_basis!r}.")
    if dim_match not in DIM_MATCH:
        raise LsMergeError(f"dim_match must be one of {DIM_MATCH}, got {dim_match!r}.")
    check_rank_fraction(rank_fraction)
    codecs = [codec] if isinstance(codec, str) else list(codec)
    if rank_fraction is not None and "pca" in codecs:
        raise LsMergeError("rank_fraction truncates a task-vector codec (codec: task_vector); the PCA codec takes rank.")
    if m.architectures == "two" and TASK_VECTOR in codecs:
        raise LsMergeError(f"codec: {TASK_VECTOR} codes experts of one base; {method} merges two architectures. Use codec: pca "
                           "or a codec per family.")
    dev = str(resolve_device(device))
    model_paths = resolve_models(models)
    base_path = resolve_model(base) if base else None
    n = len(model_paths)
    want = m.model_count_problem(n)
    if want:
        raise LsMergeError(f"{method} takes {want}; got {n}.")
    if m.needs_base and base_path is None:
        raise LsMergeError(f"{method} takes latent task vectors against a base: set base.")
    if base_path is not None and base_path in model_paths:
        raise LsMergeError(f"base {base_path} is also listed in models; its task vector would be zero. Remove it from models.")
    _check_delta(m, delta, base_path is not None)
    _check_side_channel(m, delta, codecs, side_channel, importance)
    check_selection(side_select)
    if lam is None:
        lam = m.default_lam
    weights = _check_values(m, n, lam, lam_schedule, weights, density, samples, temperature)

    # -- inputs --------------------------------------------------------------------------------
    stores = {p: open_checkpoint(p) for p in ([base_path] if base_path else []) + model_paths}
    model_stores = [stores[p] for p in model_paths]
    base_store = stores[base_path] if base_path else None
    ref = base_store if (base_store is not None and m.needs_base) else model_stores[0]
    if m.architectures == "two":
        if len(codecs) == 1 and codecs[0] != "pca":
            raise LsMergeError("a heterogeneous merge needs a codec for each side: codec: [TARGET_CODEC, SOURCE_CODEC] "
                               "(one per family), or codec: pca to fit one per side.")
        if len(codecs) not in (1, 2):
            raise LsMergeError(f"{method} takes two codecs [target, source], got {len(codecs)}.")
    else:
        if len(codecs) != 1:
            raise LsMergeError(f"{method} merges one architecture: give one codec, got {len(codecs)}.")
        check_same_architecture(list(stores.values()), HOMOGENEOUS_HINT)
        check_tokenizers(list(stores.values()), HOMOGENEOUS_HINT)
    params = MergeParams(lam=lam, weights=tuple(weights) if weights is not None else None, density=density,
                         sign_election=sign_election, seed=seed, samples=samples, temperature=temperature, ot=ot,
                         shrinkage=shrinkage)
    if out is None:
        label = "sched" if lam_schedule else m.output_label(params)
        if m.architectures == "two":
            label += ("" if ot else "_noOT") + ("" if dim_match == "pca" else f"_{dim_match}")
        named = ([base_path] if base_path else []) + model_paths
        out = str(Path(out_root) / auto_name(named, f"ls-{method}", label + ("" if delta == "none" else f"_delta-{delta}"),
                                             None, kinds))
    out_path = check_output_dir(out, list(stores), overwrite)

    return_freed_tensors_to_the_os()
    cs = CodecSettings(kind_set=kind_set, kinds=kinds, chunk_size=chunk_size, rank=rank, pca_basis=pca_basis,
                       layout=layout, save_codec=save_codec, progress=progress, layer_pattern=layer_pattern,
                       allow_partial_codec=allow_partial_codec, rank_fraction=rank_fraction, device=dev,
                       side_channel=side_channel, side_select=side_select, importance=importance)
    if m.architectures == "two":
        job = HeteroJob(m, model_stores[0], model_stores[1], codecs, params, lam_schedule, dim_match, delta, cs)
    else:
        job = HomogeneousJob(m, model_stores, base_store, ref, codecs[0], params, lam_schedule, delta, fallback_method, cs)
    for line in job.report:
        print(f"merge: {line}")

    # what decides the output's values; never the output path (same inputs, same bytes anywhere)
    given = {k: v for k, v in given.items() if k not in OUTPUT_ONLY}
    provenance = {"command": "merge", **given, "lam": lam, "kinds": kinds, "weights": weights,
                  "codecs": job.codec_descriptions(), "inputs": [str(p) for p in stores]}
    if importance:  # as export records it: what the statistics are, not where they lay
        stats = getattr(getattr(job, "codec", None), "importance", None)
        provenance["importance"] = stats.describe() if stats is not None else None
    hint = ("Lower lam / weights" if m.needs_base or m.weights else "Check the codec") + " or check the inputs (lsmerge inspect)."
    codec_files = [Path(c).expanduser() for c in codecs if c not in ("pca", TASK_VECTOR)]
    codec_files += [Path(importance).expanduser()] if importance else []
    with CheckpointWriter(out_path, source=ref.path, inputs=[*stores, *codec_files], max_shard_size=max_shard_size,
                          overwrite=overwrite, config=provenance, dtype=out_dtype, nonfinite_hint=hint) as writer:
        for name in tqdm(ref.names, desc=f"merge ({method})", unit="tensor", disable=not progress):
            tensor = job.merge_tensor(name)
            if out_dtype is None and tensor.is_floating_point():
                tensor = tensor.to(ref.dtype(name))
            writer.add(name, tensor)
    for line in job.summary():
        print(f"merge: {line}")
    print(f"merge: wrote {out_path}")
    return str(out_path)
