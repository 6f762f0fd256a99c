"""A same-architecture LS-Merge, tensor by tensor: encode, apply the method, decode.

Tensors the codec covers go through it (with delta coding when asked); the others are merged
in weight space by the fallback: the method's own formula on plain tensors (`auto`), a copy,
or a weight-space method of `lsmerge merge-weights`. With a side channel (`side_channel` q > 0,
a linear method, no delta coding) each input's exact correction is added with the method's
coefficients: W = D(z_merged) + sum_i c_i R_i (`lsmerge.codecs.side_channel.merge_side_channels`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

import lsmerge.merge.weight as wm
from lsmerge.codecs.base import SamplingCodec, describe_codec
from lsmerge.codecs.load import check_codec, fit_pca, load_codec
from lsmerge.codecs.side_channel import SideChannelCodec
from lsmerge.data.importance import ImportanceStats
from lsmerge.codecs.task_code_vae import TaskCodeVAECodec
from lsmerge.codecs.task_vector import TaskVectorCodec
from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import ArchitectureMap
from lsmerge.io.compat import check_finite, model_family
from lsmerge.io.store import CheckpointStore
from lsmerge.merge.latent.base import LatentMethod, MergeParams, apply, layer_lambda
from lsmerge.merge.latent.delta import delta_decode, delta_encode, residual_decode, zero_latent


@dataclass(frozen=True)
class CodecSettings:
    """How the command gets its codec(s) and which tensors they see."""

    kind_set: frozenset[str]
    kinds: Sequence[str]
    chunk_size: int
    rank: int | None
    pca_basis: str
    layout: str
    save_codec: str | None
    progress: bool
    layer_pattern: str | None
    allow_partial_codec: bool = False
    rank_fraction: float | None = None
    device: str = "cpu"
    side_channel: float = 0.0
    side_select: str = "error"
    importance: str | None = None


TASK_VECTOR = "task_vector"  # codec spec: fit a task-vector codec (joint SVD) on the base and the experts


def selected_names(store: CheckpointStore, amap: ArchitectureMap, kind_set: frozenset[str]) -> list[str]:
    """Floating-point tensors of `store` whose kind is in `kind_set`, in the store's order."""
    return [n for n in store.names if amap.role(n).kind in kind_set and store.dtype(n).is_floating_point]


class HomogeneousJob:
    """Everything about a same-architecture merge that is fixed before streaming."""

    def __init__(self, method: LatentMethod, models: list[CheckpointStore], base: CheckpointStore | None,
                 ref: CheckpointStore, codec_spec: str, params: MergeParams, lam_schedule: list[float] | None,
                 delta: str, fallback_method: str, cs: CodecSettings):
        self.method, self.models, self.base, self.ref = method, models, base, ref
        self.params, self.lam_schedule, self.delta = params, lam_schedule, delta
        self.amap = ArchitectureMap.from_config(ref.config, layer_pattern=cs.layer_pattern, where=ref.path)
        self.num_layers = self.amap.num_layers(ref.names)
        selected = selected_names(ref, self.amap, cs.kind_set)
        if not selected:
            raise LsMergeError(f"no tensor of {ref.path} matches kinds {cs.kinds}; check --kinds.")
        if method.draw is not None:
            fit_stores = models
        else:
            fit_stores = ([base] if base is not None and delta != "weight" else []) + models
        if codec_spec == "pca":
            self.codec = fit_pca(fit_stores, selected, chunk_size=cs.chunk_size, rank=cs.rank, per=cs.pca_basis,
                                 layout=cs.layout, family=model_family(ref.config),
                                 delta_base=base if delta == "weight" else None, desc="fit PCA codec",
                                 progress=cs.progress)
        elif codec_spec == TASK_VECTOR:
            self._task_vector_checks(delta)
            self.codec = TaskVectorCodec.fit(base, models, selected, rank_fraction=cs.rank_fraction, rank=cs.rank,
                                             family=model_family(ref.config), device=cs.device)
        else:
            self.codec = load_codec(codec_spec, device=cs.device, importance=cs.importance, side_channel=cs.side_channel,
                                    side_select=cs.side_select)
            if isinstance(self.codec, TaskVectorCodec):
                self._task_vector_checks(delta)
                self.codec = self.codec.bind(base, models).truncated(cs.rank_fraction, cs.rank)
            elif isinstance(self.codec, TaskCodeVAECodec):
                self._task_code_vae_checks(method, delta, cs)
                self.codec = self.codec.bind(base, models)
            elif cs.rank_fraction is not None:
                raise LsMergeError("rank_fraction truncates a task-vector codec; this codec is not one. Remove rank_fraction.")
        if cs.save_codec and codec_spec in ("pca", TASK_VECTOR):
            self.codec.save(cs.save_codec)
        if codec_spec == "pca" and cs.side_channel:
            stats = ImportanceStats.load(cs.importance) if cs.importance else None
            self.codec = SideChannelCodec(self.codec, cs.side_channel, stats, cs.side_select)
        # inputs' exact corrections combined with the method's coefficients (`decode_merged`): the side channel,
        # or delta: latent through a VAE over task-vector codes (lsmerge.codecs.task_code_vae)
        self.side = isinstance(self.codec, SideChannelCodec) or (isinstance(self.codec, TaskCodeVAECodec) and delta == "latent")
        self.coded = set(check_codec(self.codec, ref, selected, cs.kinds, cs.allow_partial_codec))
        self.report = [f"{len(self.coded)} tensors through the codec ({self.codec!r}), "
                       f"{len(ref.names) - len(self.coded)} by fallback {fallback_method!r}"]
        if method.draw is not None and not isinstance(self.codec, SamplingCodec):
            raise LsMergeError("this codec cannot draw posterior samples (no `sample` method); self-merge needs one.")
        self.fallback = self._fallback(fallback_method)

    def _task_vector_checks(self, delta: str) -> None:
        """A task-vector codec needs a base, and codes differences to it itself (no delta mode on top)."""
        if self.base is None:
            raise LsMergeError("the task-vector codec codes each expert as W_i - W_base in a joint basis: set base "
                               "(the model the experts were fine-tuned from).")
        if delta != "none":
            raise LsMergeError(f"the task-vector codec already codes the difference to the base (decode = W_base + U z); "
                               f"delta: {delta} would apply it twice. Use delta: none.")

    def _task_code_vae_checks(self, method: LatentMethod, delta: str, cs: CodecSettings) -> None:
        """A VAE over task-vector codes: delta: latent only for a linear method, never delta: weight, no rank_fraction."""
        if delta == "weight":
            raise LsMergeError("the task-code VAE already codes the difference to the base (decode = W_base + U D(z)); "
                               "delta: weight would apply it twice. Use delta: none or latent.")
        if delta == "latent" and method.linear is None:
            raise LsMergeError(f"with the task-code VAE, delta: latent corrects each input's reconstruction error with the "
                               f"method's linear coefficients; {method.name} is not linear in its inputs. Use delta: none, or "
                               "lerp, soup or task_arithmetic.")
        if cs.rank_fraction is not None:
            raise LsMergeError("the task-code VAE keeps the rank_fraction it was fitted at (data.rank_fraction); remove "
                               "rank_fraction, or fit a VAE at another rank.")

    def codec_descriptions(self) -> list:
        return [describe_codec(self.codec)]

    def summary(self) -> list[str]:
        return []

    def params_for(self, name: str) -> MergeParams:
        """The parameters of one tensor: lam from the schedule at its layer, name for seeds."""
        lam = self.params.lam
        if self.lam_schedule:
            lam = layer_lambda(self.lam_schedule, self.amap.role(name).layer, self.num_layers)
        return replace(self.params, lam=lam, name=name)

    def _fallback(self, fallback_method: str) -> Callable | None:
        """tensors, base, name -> merged tensor, for tensors outside the codec (None: copy)."""
        m = self.method
        if fallback_method == "copy" or (fallback_method == "auto" and m.fallback == "copy"):
            return None
        if fallback_method == "auto":
            return lambda ts, b, name: apply(m, ts, b, self.params_for(name))
        meth = wm.get_method(fallback_method)
        if meth.needs_calibration:
            raise LsMergeError(f"fallback_method {fallback_method!r} needs calibration text; use auto, copy or linear.")
        if meth.base == "required" and self.base is None:
            raise LsMergeError(f"fallback_method {fallback_method!r} takes task vectors against a base: set base.")
        n = len(self.models)
        if n < meth.min_models or (meth.max_models is not None and n > meth.max_models):
            raise LsMergeError(f"fallback_method {fallback_method!r} cannot merge {n} models; use auto, copy or linear.")
        w = m.coefficients(self.params, n)
        known = {p.name for p in meth.params}

        def run(ts, b, name):
            lam = self.params_for(name).lam
            values = {p.name: p.default for p in meth.params}
            values.update({"weight": list(w), "t": lam, "density": [self.params.density] * n,
                           "lambda": lam if m.needs_base else 1.0})
            values = {k: v for k, v in values.items() if k in known}
            meth.check_params(values, f"fallback for {name}")
            return meth.merge(ts, b, values, wm.TensorContext(name, self.params.seed, kind=self.amap.role(name).kind))

        return run

    def merge_tensor(self, name: str) -> torch.Tensor:
        ts = [check_finite(s.get(name), name, s) for s in self.models]
        b = check_finite(self.base.get(name), name, self.base) if self.base is not None else None
        if name not in self.coded:
            if self.fallback is None or not ts[0].is_floating_point():
                return (b if b is not None and self.ref is self.base else ts[0]).clone()
            return self.fallback(ts, b, name)
        codec, m, p = self.codec, self.method, self.params_for(name)
        if m.draw is not None:
            merged = apply(m, m.draw(codec, name, ts[0], p), None, p)
            if self.side:  # the draws are of one model: its side channel, with its coefficient
                return codec.decode_merged(name, merged, [codec.encode(name, ts[0])], m.linear_coefficients(p, 1))
            if self.delta == "latent":
                return residual_decode(codec, name, ts[0], codec.encode(name, ts[0]), merged)
            return codec.decode(name, merged)
        if self.delta == "weight":
            latents = delta_encode(codec, name, b, ts)
            return delta_decode(codec, name, b, apply(m, latents, zero_latent(latents[0]), p))
        latents = [codec.encode(name, t) for t in ts]
        base_latent = codec.encode(name, b) if b is not None and (m.needs_base or self.delta == "latent") else None
        merged = apply(m, latents, base_latent, p)
        if self.side:  # inputs, then the base when the method takes one
            inputs = latents + ([base_latent] if m.needs_base else [])
            return codec.decode_merged(name, merged, inputs, m.linear_coefficients(p, len(latents)))
        if self.delta == "latent":
            return residual_decode(codec, name, b, base_latent, merged)
        return codec.decode(name, merged)
