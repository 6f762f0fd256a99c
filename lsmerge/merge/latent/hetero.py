"""Heterogeneous LS-Merge: a target <- source merge across architectures.

Source layers map to target layers by relative depth (`depth.depth_map`); each target tensor's
source latent set is projected to the target's (n_tokens, latent_dim) (`depth.project_latent_set`),
aligned with the target's latent cloud by Gaussian OT (`ot`) and interpolated,

    Z = (1 - lam) Z_target + lam T(Z_source)

then decoded by the target's codec into the target architecture (with `delta: latent`,
W_target + D_t(Z) - D_t(Z_target), so the target codec's error cancels and lam = 0 gives the
target exactly). Target tensors without a matching source tensor are copied.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import torch

from lsmerge.codecs.base import describe_codec
from lsmerge.codecs.load import check_codec, fit_pca, load_codec
from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import ArchitectureMap
from lsmerge.io.compat import check_finite, model_family
from lsmerge.io.store import CheckpointStore
from lsmerge.merge.latent.base import LatentMethod, MergeParams, layer_lambda, register
from lsmerge.merge.latent.depth import depth_map, project_latent_set
from lsmerge.merge.latent.homogeneous import CodecSettings, selected_names
from lsmerge.merge.latent.ot import OTShrinkageWarning, ot_interpolate


@register("hetero", models="2", default_lam=0.1, lam_in_unit=True, fallback="copy", architectures="two")
def hetero(tensors, base, p: MergeParams):
    """Z = (1 - lam) Z_target + lam T(Z_source) for [Z_target, projected Z_source] (T: Gaussian OT, or identity)."""
    return ot_interpolate(tensors[0], tensors[1], p.lam, use_ot=p.ot, shrinkage=p.shrinkage)


class HeteroJob:
    """Target <- source merge across architectures: depth map, projection, OT, target decoder."""

    def __init__(self, method: LatentMethod, target: CheckpointStore, source: CheckpointStore, codec_specs: list[str],
                 params: MergeParams, lam_schedule: list[float] | None, dim_match: str, delta: str, cs: CodecSettings):
        self.method, self.target, self.source, self.delta = method, target, source, delta
        self.params, self.lam_schedule, self.dim_match = params, lam_schedule, dim_match
        self.tmap = ArchitectureMap.from_config(target.config, layer_pattern=cs.layer_pattern, where=target.path)
        self.smap = ArchitectureMap.from_config(source.config, layer_pattern=cs.layer_pattern, where=source.path)
        self.n_t, self.n_s = self.tmap.num_layers(target.names), self.smap.num_layers(source.names)
        t_sel = [n for n in selected_names(target, self.tmap, cs.kind_set) if self.tmap.role(n).layer is not None]
        s_sel = [n for n in selected_names(source, self.smap, cs.kind_set) if self.smap.role(n).layer is not None]
        if not t_sel or not s_sel:
            side = target if not t_sel else source
            raise LsMergeError(f"no decoder-layer tensor of {side.path} matches kinds {cs.kinds}; check --kinds.")
        specs = codec_specs if len(codec_specs) == 2 else ["pca", "pca"]
        self.codecs = []
        for side, store, sel, spec in (("target", target, t_sel, specs[0]), ("source", source, s_sel, specs[1])):
            if spec == "pca":
                c = fit_pca([store], sel, chunk_size=cs.chunk_size, rank=cs.rank, per=cs.pca_basis, layout=cs.layout,
                            family=model_family(store.config), delta_base=None, desc=f"fit PCA codec ({side})",
                            progress=cs.progress)
                if cs.save_codec:
                    c.save(Path(cs.save_codec) / side)
            else:
                c = load_codec(spec)
            self.codecs.append(c)
        self.t_codec, self.s_codec = self.codecs
        t_cov = check_codec(self.t_codec, target, t_sel, cs.kinds, cs.allow_partial_codec)  # the output's side
        s_cov = set(check_codec(self.s_codec, source, s_sel, cs.kinds, allow_partial=True))
        groups = depth_map(self.n_s, self.n_t)
        self.plan, unmatched = self._match(t_cov, s_cov, groups)
        self.report = [
            f"hetero: target {target.path.name} ({self.n_t} layers) <- source {source.path.name} ({self.n_s} layers), "
            f"lam={params.lam}, ot={params.ot}, dim_match={dim_match}, delta={delta}",
            f"depth map (target layer <- source layers): {dict(enumerate(groups))}",
            f"{len(self.plan)} target tensors merged in latent space, {len(target.names) - len(self.plan)} copied from the target"
            + (f" ({len(unmatched)} selected ones without a matching source tensor, e.g. {unmatched[0]})" if unmatched else ""),
        ]
        self.shrunk = 0
        self.first_warning: str | None = None

    def _match(self, t_cov: list[str], s_cov: set[str], groups: list[list[int]]) -> tuple[dict[str, list[str]], list[str]]:
        """Target tensor -> its source tensors (same module, else the one tensor of the same kind,
        with the same parameter suffix, in each source layer mapped to the target's layer)."""
        plan: dict[str, list[str]] = {}
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
                plan[n] = srcs
            else:
                unmatched.append(n)
        return plan, unmatched

    def codec_descriptions(self) -> list:
        return [describe_codec(c) for c in self.codecs]

    def summary(self) -> list[str]:
        if not self.shrunk:
            return []
        msg = (f"OT: {self.shrunk} of {len(self.plan)} latent clouds had fewer samples than dimensions "
               f"(covariance shrinkage applied); first: {self.first_warning}")
        warnings.warn(msg, OTShrinkageWarning, stacklevel=2)
        return [msg]

    def merge_tensor(self, name: str) -> torch.Tensor:
        t = check_finite(self.target.get(name), name, self.target)
        if name not in self.plan:
            return t.clone()
        layer = self.tmap.role(name).layer
        lam = layer_lambda(self.lam_schedule, layer, self.n_t) if self.lam_schedule else self.params.lam
        z_t = self.t_codec.encode(name, t)
        codes = [self.s_codec.encode(s, check_finite(self.source.get(s), s, self.source)).z for s in self.plan[name]]
        z_s = project_latent_set(codes, z_t.z.shape[0], z_t.z.shape[1], self.dim_match)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OTShrinkageWarning)
            z = self.method.formula([z_t.z, z_s], None, replace(self.params, lam=lam, name=name))
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
