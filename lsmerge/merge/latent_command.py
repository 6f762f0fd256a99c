"""`lsmerge merge`: LS-Merge -- encode, combine in latent space, decode, write a Hugging Face checkpoint.

Streams one output tensor at a time: the inputs' copies of that tensor are read, encoded by
the codec, combined (lsmerge.merge.latent), decoded and written by `CheckpointWriter`;
peak memory is a few tensors, independent of depth. Tensors the codec does not cover (or
that are outside `kinds`) are merged in weight space by `fallback_method`, so the output
is always a complete model. Heterogeneous merges (method `hetero`) map source layers to
target layers by relative depth, project each latent set to the target's shape
(lsmerge.merge.depth), align it with Gaussian OT (lsmerge.merge.ot) and decode with the
target's codec into the target architecture; uncovered target tensors are copied.

Codecs: `pca` fits a PCA codec (lsmerge.codecs.pca) on the inputs' selected tensors; a path
is a saved PCA codec or a trained weight-VAE checkpoint (`VAECodec.from_checkpoint`).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from lsmerge.codecs.base import Codec, TensorLatent
from lsmerge.codecs.pca import BASIS_PER, CODEC_JSON, PCACodec
from lsmerge.errors import LsMergeError
from lsmerge.memory import return_freed_tensors_to_the_os
from lsmerge.torch_options import resolve_dtype
from lsmerge.io.archmap import ArchitectureMap, expand_kinds
from lsmerge.io.hf import auto_name, resolve_model
from lsmerge.io.store import CheckpointStore, open_checkpoint
from lsmerge.io.writer import CheckpointWriter, check_output_dir
from lsmerge.merge import latent as L
from lsmerge.merge.depth import DIM_MATCH, depth_map, project_latent_set
from lsmerge.merge.ot import OTShrinkageWarning, ot_interpolate

DELTA_MODES = ("none", "weight", "latent")
DEFAULT_LAM = {"lerp": 0.5, "hetero": 0.1, "self": 0.0}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")
# weight-space analogue of each latent method, for `fallback_method: auto`
AUTO_FALLBACK = {"lerp": "lerp", "soup": "soup", "task_arithmetic": "task_arithmetic", "ties": "ties",
                 "dare": "dare", "self": "copy", "hetero": "copy"}


# -- small pure helpers ---------------------------------------------------------------------
def _family(config: dict) -> str | None:
    text = config.get("text_config") or {}
    return config.get("model_type") or text.get("model_type")


def _same_family(a: str | None, b: str | None) -> bool:
    canon = lambda f: (f or "").removesuffix("_text")  # noqa: E731 - gemma3 == gemma3_text
    return canon(a) == canon(b)


def _seed_for(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _tokenizer_digest(path: Path) -> dict[str, str]:
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in TOKENIZER_FILES if (path / f).exists()}


def check_tokenizers(stores: Sequence[CheckpointStore]) -> None:
    """Homogeneous merges need one vocabulary: tokenizer files present in several inputs must be equal."""
    digests = [_tokenizer_digest(s.path) for s in stores]
    vocab = {s.path: (s.config.get("vocab_size") or (s.config.get("text_config") or {}).get("vocab_size")) for s in stores}
    if len({v for v in vocab.values() if v is not None}) > 1:
        raise LsMergeError(f"the models have different vocabularies ({ {str(k): v for k, v in vocab.items()} }); "
                           "a homogeneous latent merge needs one tokenizer. Use method: hetero, or merge models of one tokenizer.")
    for f in TOKENIZER_FILES:
        seen = {str(s.path): d[f] for s, d in zip(stores, digests) if f in d}
        if len(set(seen.values())) > 1:
            raise LsMergeError(f"{f} differs between {', '.join(seen)}: the models use different tokenizers, so their "
                               "embeddings do not line up. Merge models that share a tokenizer (or use method: hetero).")


def check_same_architecture(stores: Sequence[CheckpointStore]) -> None:
    ref = stores[0]
    for s in stores[1:]:
        if not _same_family(_family(s.config), _family(ref.config)):
            raise LsMergeError(f"{s.path} is a {_family(s.config)} model and {ref.path} a {_family(ref.config)} model; "
                               "use method: hetero (with a codec per family) to merge different architectures.")
        if set(s.names) != set(ref.names):
            missing = sorted(set(ref.names) ^ set(s.names))[:3]
            raise LsMergeError(f"{s.path} and {ref.path} hold different tensors (e.g. {missing}); "
                               "use method: hetero for different depths or architectures.")
        for n in ref.names:
            if s.shape(n) != ref.shape(n):
                raise LsMergeError(f"tensor {n} has shape {ref.shape(n)} in {ref.path} but {s.shape(n)} in {s.path}; "
                                   "use method: hetero for different widths.")


def check_codec(codec: Codec, store: CheckpointStore, selected: Sequence[str], kinds: Sequence[str]) -> list[str]:
    """The selected tensors of `store` the codec covers; LsMergeError for another family or no overlap."""
    fam = getattr(codec, "family", None)
    model_fam = _family(store.config)
    if fam and model_fam and not _same_family(fam, model_fam):
        raise LsMergeError(f"the codec was trained on {fam} weights but {store.path} is a {model_fam} model. "
                           f"Use a codec trained on {model_fam} (or codec: pca).")
    covered = [n for n in selected if codec.covers(n)]
    if not covered:
        trained = getattr(codec, "kinds", None)
        raise LsMergeError(f"the codec covers none of the selected tensors (kinds {list(kinds)}) of {store.path}"
                           + (f"; it was trained on kinds {list(trained)}" if trained else "")
                           + ". Select the kinds it was trained on (--kinds) or use a codec trained on this model.")
    return covered


def _check_finite(t: torch.Tensor, name: str, store: CheckpointStore) -> torch.Tensor:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise LsMergeError(f"tensor {name!r} of {store.path} holds NaN or Inf values. Repair or re-export that checkpoint.")
    return t


def _selected(store: CheckpointStore, amap: ArchitectureMap, kind_set: frozenset[str]) -> list[str]:
    return [n for n in store.names if amap.role(n).kind in kind_set and store.dtype(n).is_floating_point]


# -- codecs ---------------------------------------------------------------------------------
def load_codec(spec: str) -> Codec:
    """A saved PCA codec folder, or a weight-VAE checkpoint (the one place the VAE plugs in)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise LsMergeError(f"codec {spec!r} not found: give `pca`, a saved PCA codec folder, or a trained VAE checkpoint.")
    if (path / CODEC_JSON).exists():
        return PCACodec.load(path)
    try:
        from lsmerge.codecs.vae import VAECodec
    except ImportError as e:
        raise LsMergeError(f"{path} is not a PCA codec and the VAE codec is unavailable ({e}). Use codec: pca.") from None
    return VAECodec.from_checkpoint(path)


def _fit_pca(stores: Sequence[CheckpointStore], names: Sequence[str], *, chunk_size: int, rank: int | None,
             per: str, layout: str, family: str | None, delta_base: CheckpointStore | None, desc: str,
             progress: bool = True) -> PCACodec:
    """Fit on each name's copies in `stores` (on W_i - W_base when `delta_base`), streamed."""

    def copies():
        for n in tqdm(names, desc=desc, unit="tensor", leave=False, disable=not progress):
            ts = [_check_finite(s.get(n), n, s) for s in stores]
            if delta_base is not None:
                b = delta_base.get(n).float()
                ts = [t.float() - b for t in ts]
            yield n, ts

    return PCACodec.fit(copies(), chunk_size=chunk_size, rank=rank, per=per, family=family, layout=layout)


# -- the command ----------------------------------------------------------------------------
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
    delta: str = "none",
    kinds: list[str] | None = None,
    fallback_method: str = "auto",
    ot: bool = True,
    dim_match: str = "pca",
    shrinkage: str | float = "auto",
    chunk_size: int = 64,
    rank: int | None = None,
    pca_basis: str = "tensor",
    layout: str = "flat",
    save_codec: str | None = None,
    seed: int = 0,
    out: str | None = None,
    out_root: str = "checkpoints/merged",
    overwrite: bool = False,
    dtype: str | None = None,
    max_shard_size: str = "2GB",
    progress: bool = True,
    layer_pattern: str | None = None,
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
        codec: `pca` (fit a PCA codec on the inputs), a saved PCA codec folder or a trained
            VAE checkpoint; hetero takes one per side, [target codec, source codec] (`pca`
            alone fits one per side).
        weights: soup: convex weights (>= 0, sum 1; default uniform); task_arithmetic / ties /
            dare: one weight per model (default 1), scaled by lam.
        lam: lerp and hetero: position in [0, 1] (0 = the first model / the target); self:
            posterior/prior mix in [0, 1]; task_arithmetic / ties / dare: task-vector scale.
            Default per method: lerp 0.5, hetero 0.1 (the paper's), self 0, others 1.
        lam_schedule: lerp / hetero: lam per layer, anchors spread over depth (overrides lam).
        density: ties: fraction of each latent task vector kept; dare: keep probability.
        sign_election: dare: TIES sign election after the drop (DARE-TIES).
        samples: self: number K of posterior samples merged.
        temperature: self: posterior sampling temperature (0 = the posterior mean).
        delta: delta coding: none | weight (encode W_i - W_base, output W_base + D(merged)) |
            latent (output W_base + D(z_merged) - D(z_base); hetero: W_target + D_t(Z) - D_t(Z_target),
            so the target codec's reconstruction error cancels and lam 0 gives the target).
        kinds: module kinds or groups encoded by the codec (default [mlp, attn]).
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
        pca_basis: pca codec: one basis per tensor or per kind.
        layout: pca codec: chunk layout, flat or rows.
        save_codec: save the fitted PCA codec(s) to this folder (hetero: target/ and source/).
        seed: seed of DARE masks and self-merge samples (per tensor, from the tensor name).
        out: output folder (default: auto-named under out_root).
        out_root: where auto-named outputs go.
        overwrite: replace a non-empty output folder.
        dtype: output dtype float32 | bfloat16 | float16 (default: the reference's dtypes).
        max_shard_size: output shard size, e.g. 2GB.
        progress: show progress bars.
        layer_pattern: regex with a (?P<layer>\\d+) group for architectures lsmerge does not know.
    Returns: the output folder.
    """
    given = dict(locals())
    if isinstance(lam, bool) or (lam is not None and not isinstance(lam, (int, float))):
        raise LsMergeError(f"lam must be a number, got {lam!r}.")
    kinds = list(kinds or ["mlp", "attn"])
    kind_set = expand_kinds(kinds)
    if method not in L.METHODS:
        raise LsMergeError(f"unknown method {method!r}; use one of {', '.join(L.METHODS)}.")
    needs_base, count = L.METHODS[method]
    if delta not in DELTA_MODES:
        raise LsMergeError(f"delta must be one of {DELTA_MODES}, got {delta!r}.")
    out_dtype = resolve_dtype(dtype)
    if pca_basis not in BASIS_PER:
        raise LsMergeError(f"pca_basis must be one of {BASIS_PER}, got {pca_basis!r}.")
    if dim_match not in DIM_MATCH:
        raise LsMergeError(f"dim_match must be one of {DIM_MATCH}, got {dim_match!r}.")
    if not models:
        raise LsMergeError("no models given: set models: [A, B, ...].")
    model_paths = [resolve_model(m) for m in models]
    base_path = resolve_model(base) if base else None
    if len(set(model_paths)) != len(model_paths):
        raise LsMergeError(f"a model is listed twice in models ({[str(p) for p in model_paths]}); list each once.")
    n = len(model_paths)
    if (count == "1" and n != 1) or (count == "2" and n != 2) or (count == "N" and n < 1):
        want = {"1": "exactly one model", "2": "exactly two models", "N": "at least one model"}[count]
        raise LsMergeError(f"{method} takes {want}; got {n}.")
    if needs_base and base_path is None:
        raise LsMergeError(f"{method} takes latent task vectors against a base: set base.")
    if base_path is not None and base_path in model_paths:
        raise LsMergeError(f"base {base_path} is also listed in models; its task vector would be zero. Remove it from models.")
    if delta != "none":
        if method == "hetero":
            if delta == "weight":
                raise LsMergeError("delta: weight needs one architecture (W_i - W_base); with method: hetero use "
                                   "delta: latent (W_target + D(z_merged) - D(z_target)) or none.")
        elif method == "self":
            if delta == "weight":
                raise LsMergeError("self-merge has no expert-minus-base difference; use delta: latent (W + D(z_merged) - D(z)) or none.")
        elif base_path is None:
            raise LsMergeError(f"delta: {delta} needs a base model: set base.")

    # -- parameters --------------------------------------------------------------------------
    if lam is None:
        lam = DEFAULT_LAM.get(method, 1.0)
    if method in ("lerp", "hetero", "self"):
        L.check_lambda(lam)
        for v in lam_schedule or []:
            L.check_lambda(v, "lam_schedule")
    elif not math.isfinite(lam):
        raise LsMergeError(f"lam must be a finite number, got {lam}.")
    if method == "soup":
        weights = L.check_convex_weights(weights if weights is not None else [1.0 / n] * n, n)
    elif method in ("task_arithmetic", "ties", "dare"):
        weights = [1.0] * n if weights is None else [float(w) for w in weights]
        if len(weights) != n or not all(math.isfinite(w) for w in weights):
            raise LsMergeError(f"give one finite weight per model ({n}), got {weights}.")
        if method != "task_arithmetic" and any(w < 0 for w in weights):
            raise LsMergeError(f"{method} weights must be non-negative, got {weights}.")
    elif weights is not None and method in ("lerp", "hetero", "self"):
        raise LsMergeError(f"{method} takes lam (and lam_schedule), not weights; remove weights.")
    if method in ("ties", "dare"):
        L.check_density(density)
    if method == "self" and (samples < 1 or temperature < 0 or not math.isfinite(temperature)):
        raise LsMergeError(f"self-merge needs samples >= 1 and temperature >= 0, got {samples} and {temperature}.")

    # -- inputs --------------------------------------------------------------------------------
    stores = {p: open_checkpoint(p) for p in ([base_path] if base_path else []) + model_paths}
    model_stores = [stores[p] for p in model_paths]
    base_store = stores[base_path] if base_path else None
    ref = base_store if (base_store is not None and method in ("task_arithmetic", "ties", "dare")) else model_stores[0]
    codecs = [codec] if isinstance(codec, str) else list(codec)
    if method == "hetero":
        if len(codecs) == 1 and codecs[0] != "pca":
            raise LsMergeError("a heterogeneous merge needs a codec for each side: codec: [TARGET_CODEC, SOURCE_CODEC] "
                               "(one per family), or codec: pca to fit one per side.")
        if len(codecs) not in (1, 2):
            raise LsMergeError(f"hetero takes two codecs [target, source], got {len(codecs)}.")
    elif len(codecs) != 1:
        raise LsMergeError(f"{method} merges one architecture: give one codec, got {len(codecs)}.")
    if method != "hetero":
        check_same_architecture(list(stores.values()))
        check_tokenizers(list(stores.values()))
    if out is None:
        label = {"soup": "", "self": f"k{samples}t{temperature:g}"}.get(method, f"{lam:.2f}")
        if lam_schedule:
            label = "sched"
        if method == "hetero":
            label += ("" if ot else "_noOT") + ("" if dim_match == "pca" else f"_{dim_match}")
        named = ([base_path] if base_path else []) + model_paths
        out = str(Path(out_root) / auto_name(named, f"ls-{method}", label + ("" if delta == "none" else f"_delta-{delta}"),
                                             None, kinds))
    out_path = check_output_dir(out, list(stores), overwrite)

    return_freed_tensors_to_the_os()
    common = dict(kind_set=kind_set, kinds=kinds, chunk_size=chunk_size, rank=rank, pca_basis=pca_basis, layout=layout,
                  save_codec=save_codec, progress=progress, layer_pattern=layer_pattern)
    if method == "hetero":
        job = _HeteroJob(model_stores[0], model_stores[1], codecs, lam, lam_schedule, ot, dim_match, shrinkage, delta, **common)
    else:
        job = _HomogeneousJob(method, model_stores, base_store, ref, codecs[0], lam, lam_schedule, weights, density,
                              sign_election, samples, temperature, delta, fallback_method, seed, **common)
    for line in job.report:
        print(f"merge: {line}")

    provenance = {"command": "merge", **given, "lam": lam, "kinds": kinds, "weights": weights,
                  "codecs": job.codec_descriptions(), "inputs": [str(p) for p in stores]}
    with CheckpointWriter(out_path, source=ref.path, inputs=list(stores), max_shard_size=max_shard_size,
                          overwrite=overwrite, config=provenance, dtype=out_dtype) as writer:
        for name in tqdm(ref.names, desc=f"merge ({method})", unit="tensor", disable=not progress):
            tensor = job.merge_tensor(name)
            if out_dtype is None and tensor.is_floating_point():
                tensor = tensor.to(ref.dtype(name))
            writer.add(name, tensor)
    for line in job.summary():
        print(f"merge: {line}")
    print(f"merge: wrote {out_path}")
    return str(out_path)


class _HomogeneousJob:
    """Everything about a same-architecture merge that is fixed before streaming."""

    def __init__(self, method, model_stores, base_store, ref, codec_spec, lam, lam_schedule, weights, density,
                 sign_election, samples, temperature, delta, fallback_method, seed, *, kind_set, kinds, chunk_size,
                 rank, pca_basis, layout, save_codec, progress, layer_pattern):
        self.method, self.models, self.base, self.ref = method, model_stores, base_store, ref
        self.lam, self.lam_schedule, self.weights = lam, lam_schedule, weights or []
        self.samples, self.temperature, self.delta, self.seed = samples, temperature, delta, seed
        self.amap = ArchitectureMap.from_config(ref.config, layer_pattern=layer_pattern)
        self.num_layers = self.amap.num_layers(ref.names)
        selected = _selected(ref, self.amap, kind_set)
        if not selected:
            raise LsMergeError(f"no tensor of {ref.path} matches kinds {kinds}; check --kinds.")
        if method == "self":
            fit_stores = model_stores
        else:
            fit_stores = ([base_store] if base_store is not None and delta != "weight" else []) + model_stores
        if codec_spec == "pca":
            self.codec = _fit_pca(fit_stores, selected, chunk_size=chunk_size, rank=rank, per=pca_basis, layout=layout,
                                  family=_family(ref.config), delta_base=base_store if delta == "weight" else None,
                                  desc="fit PCA codec", progress=progress)
            if save_codec:
                self.codec.save(save_codec)
        else:
            self.codec = load_codec(codec_spec)
        self.coded = set(check_codec(self.codec, ref, selected, kinds))
        self.report = [f"{len(self.coded)} tensors through the codec ({self.codec!r}), "
                       f"{len(ref.names) - len(self.coded)} by fallback {fallback_method!r}"]
        if method == "self" and not hasattr(self.codec, "sample"):
            raise LsMergeError("this codec cannot draw posterior samples (no `sample` method); self-merge needs one.")
        self.fallback = self._fallback(fallback_method, density, sign_election)
        self.density, self.sign_election = density, sign_election

    def codec_descriptions(self) -> list:
        return [self.codec.describe() if hasattr(self.codec, "describe") else repr(self.codec)]

    def summary(self) -> list[str]:
        return []

    def _lam(self, name: str) -> float:
        if not self.lam_schedule:
            return self.lam
        return L.layer_lambda(self.lam_schedule, self.amap.role(name).layer, self.num_layers)

    def _operator(self, name: str):
        return L.homogeneous_operator(self.method, lam=self._lam(name), weights=self.weights, density=self.density,
                                      sign_election=self.sign_election, seed=self.seed)

    def _fallback(self, fallback_method: str, density: float, sign_election: bool):
        """tensors, base, name -> merged tensor, for tensors outside the codec."""
        choice = AUTO_FALLBACK[self.method] if fallback_method == "auto" else fallback_method
        if choice == "copy":
            return None
        if choice in ("lerp", "soup", "task_arithmetic", "ties", "dare") and fallback_method == "auto":
            return lambda ts, b, name: self._operator(name)(ts, b, name)
        import lsmerge.merge.weight as wm

        meth = wm.get_method(choice)
        if meth.needs_calibration:
            raise LsMergeError(f"fallback_method {choice!r} needs calibration text; use auto, copy or linear.")
        if meth.base == "required" and self.base is None:
            raise LsMergeError(f"fallback_method {choice!r} takes task vectors against a base: set base.")
        n = len(self.models)
        if n < meth.min_models or (meth.max_models is not None and n > meth.max_models):
            raise LsMergeError(f"fallback_method {choice!r} cannot merge {n} models; use auto, copy or linear.")
        w = self.weights if self.weights else ([1 - self.lam, self.lam] if self.method == "lerp" and n == 2 else [1.0 / n] * n)

        def run(ts, b, name):
            values = {p.name: p.default for p in meth.params}
            values.update({"weight": list(w), "t": self._lam(name), "density": [density] * n, "lambda": self._lam(name)
                           if self.method in ("ties", "dare", "task_arithmetic") else 1.0})
            values = {k: v for k, v in values.items() if any(p.name == k for p in meth.params)}
            meth.check_params(values, f"fallback for {name}")
            return meth.merge(ts, b, values, wm.TensorContext(name, self.seed))

        return run

    def merge_tensor(self, name: str) -> torch.Tensor:
        ts = [_check_finite(s.get(name), name, s) for s in self.models]
        b = _check_finite(self.base.get(name), name, self.base) if self.base is not None else None
        if name not in self.coded:
            if self.fallback is None or not ts[0].is_floating_point():
                return (b if b is not None and self.ref is self.base else ts[0]).clone()
            return self.fallback(ts, b, name)
        codec = self.codec
        if self.method == "self":
            return self._self_merge(name, ts[0])
        op = self._operator(name)
        if self.delta == "weight":
            latents = L.delta_encode(codec, name, b, ts)
            return L.delta_decode(codec, name, b, op(latents, L.zero_latent(latents[0]), name))
        latents = [codec.encode(name, t) for t in ts]
        uses_base = L.METHODS[self.method][0] or self.delta == "latent"
        base_latent = codec.encode(name, b) if b is not None and uses_base else None
        merged = op(latents, base_latent, name)
        if self.delta == "latent":
            return L.residual_decode(codec, name, b, base_latent, merged)
        return codec.decode(name, merged)

    def _self_merge(self, name: str, w: torch.Tensor) -> torch.Tensor:
        codec = self.codec
        torch.manual_seed(_seed_for(self.seed, name))
        draws: list[TensorLatent] = codec.sample(name, w, self.samples, self.temperature)
        if self.lam > 0:
            std = codec.prior_std(name) if hasattr(codec, "prior_std") else torch.ones(draws[0].z.shape[1])
            draws = [L.posterior_prior_mix(d, torch.randn(d.z.shape) * std, self.lam) for d in draws]
        merged = L.self_merge(draws)
        if self.delta == "latent":
            return L.residual_decode(codec, name, w, codec.encode(name, w), merged)
        return codec.decode(name, merged)


class _HeteroJob:
    """Target <- source merge across architectures: depth map, projection, OT, target decoder."""

    def __init__(self, target, source, codec_specs, lam, lam_schedule, use_ot, dim_match, shrinkage, delta, *, kind_set,
                 kinds, chunk_size, rank, pca_basis, layout, save_codec, progress, layer_pattern):
        self.target, self.source, self.delta = target, source, delta
        self.lam, self.lam_schedule, self.use_ot, self.dim_match, self.shrinkage = lam, lam_schedule, use_ot, dim_match, shrinkage
        self.tmap = ArchitectureMap.from_config(target.config, layer_pattern=layer_pattern)
        self.smap = ArchitectureMap.from_config(source.config, layer_pattern=layer_pattern)
        self.n_t, self.n_s = self.tmap.num_layers(target.names), self.smap.num_layers(source.names)
        t_sel = [n for n in _selected(target, self.tmap, kind_set) if self.tmap.role(n).layer is not None]
        s_sel = [n for n in _selected(source, self.smap, kind_set) if self.smap.role(n).layer is not None]
        if not t_sel or not s_sel:
            side = target if not t_sel else source
            raise LsMergeError(f"no decoder-layer tensor of {side.path} matches kinds {kinds}; check --kinds.")
        specs = codec_specs if len(codec_specs) == 2 else ["pca", "pca"]
        self.codecs = []
        for side, store, sel, spec in (("target", target, t_sel, specs[0]), ("source", source, s_sel, specs[1])):
            if spec == "pca":
                c = _fit_pca([store], sel, chunk_size=chunk_size, rank=rank, per=pca_basis, layout=layout,
                             family=_family(store.config), delta_base=None, desc=f"fit PCA codec ({side})",
                             progress=progress)
                if save_codec:
                    c.save(Path(save_codec) / side)
            else:
                c = load_codec(spec)
            self.codecs.append(c)
        self.t_codec, self.s_codec = self.codecs
        t_cov = check_codec(self.t_codec, target, t_sel, kinds)
        s_cov = set(check_codec(self.s_codec, source, s_sel, kinds))
        groups = depth_map(self.n_s, self.n_t)
        self.plan: dict[str, list[str]] = {}
        unmatched = []
        by_layer: dict[int, list[str]] = {}
        for n in s_cov:
            by_layer.setdefault(self.smap.role(n).layer, []).append(n)
        for n in t_cov:
            role = self.tmap.role(n)
            suffix = n.rsplit(".", 1)[-1]
            srcs = []
            for s_layer in groups[role.layer]:
                cands = [m for m in by_layer.get(s_layer, []) if m.rsplit(".", 1)[-1] == suffix]
                same_module = [m for m in cands if self.smap.role(m).module == role.module]
                same_kind = [m for m in cands if self.smap.role(m).kind == role.kind]
                pick = same_module or (same_kind if len(same_kind) == 1 else [])
                srcs += pick[:1]
            if srcs:
                self.plan[n] = srcs
            else:
                unmatched.append(n)
        self.report = [
            f"hetero: target {target.path.name} ({self.n_t} layers) <- source {source.path.name} ({self.n_s} layers), "
            f"lam={lam}, ot={use_ot}, dim_match={dim_match}, delta={delta}",
            f"depth map (target layer <- source layers): {dict(enumerate(groups))}",
            f"{len(self.plan)} target tensors merged in latent space, {len(target.names) - len(self.plan)} copied from the target"
            + (f" ({len(unmatched)} selected ones without a matching source tensor, e.g. {unmatched[0]})" if unmatched else ""),
        ]
        self.shrunk = 0
        self.first_warning: str | None = None

    def codec_descriptions(self) -> list:
        return [c.describe() if hasattr(c, "describe") else repr(c) for c in self.codecs]

    def summary(self) -> list[str]:
        if not self.shrunk:
            return []
        msg = (f"OT: {self.shrunk} of {len(self.plan)} latent clouds had fewer samples than dimensions "
               f"(covariance shrinkage applied); first: {self.first_warning}")
        warnings.warn(msg, OTShrinkageWarning, stacklevel=2)
        return [msg]

    def merge_tensor(self, name: str) -> torch.Tensor:
        t = _check_finite(self.target.get(name), name, self.target)
        if name not in self.plan:
            return t.clone()
        layer = self.tmap.role(name).layer
        lam = L.layer_lambda(self.lam_schedule, layer, self.n_t) if self.lam_schedule else self.lam
        z_t = self.t_codec.encode(name, t)
        codes = [self.s_codec.encode(s, _check_finite(self.source.get(s), s, self.source)).z for s in self.plan[name]]
        z_s = project_latent_set(codes, z_t.z.shape[0], z_t.z.shape[1], self.dim_match)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OTShrinkageWarning)
            z = ot_interpolate(z_t.z, z_s, lam, use_ot=self.use_ot, shrinkage=self.shrinkage)
        shrink = [w for w in caught if issubclass(w.category, OTShrinkageWarning)]
        if shrink:
            self.shrunk += 1
            self.first_warning = self.first_warning or f"{name}: {shrink[0].message}"
        for w in caught:
            if not issubclass(w.category, OTShrinkageWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        merged = self.t_codec.decode(name, z_t.with_z(z.to(z_t.z.dtype)))
        if self.delta == "latent":  # W_t + D(Z) - D(Z_t): only the change passes through the codec
            return merged.float().sub_(self.t_codec.decode(name, z_t).float()).add_(t.float()).to(t.dtype)
        return merged
