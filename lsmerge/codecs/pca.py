"""PCA codec: the linear baseline of the LS-Merge paper (its Table 8), behind the `Codec` interface.

A weight tensor ``w`` is z-scored with its own statistics (``mean``, ``std``), flattened,
zero-padded to a multiple of ``chunk_size`` ``c`` and cut into ``n = ceil(numel / c)``
chunks, the rows of ``X`` of shape ``(n, c)`` -- the same chunking the weight VAE uses
(`lsmerge.data.chunking`, layout "flat"; "rows" keeps chunks inside rows). A PCA basis fitted over chunks (one basis per tensor name, or one per module kind
shared by every layer) gives the code

    z = (X - mu) V_r                       z: (n_tokens = n, latent_dim = r)
    X_hat = z V_r^T + mu,   w_hat = unpad(X_hat) * std + mean

with ``mu`` (c,) the chunk mean and ``V_r`` (c, r) the top-``r`` principal axes. At full
rank (``r = c``) ``V`` is a complete orthonormal basis of R^c (``eigh`` of the chunk
covariance), so the round trip is exact up to float32 rounding of ``z``, even when the
basis was fitted on fewer chunks than ``c``.

Posterior (for self-merge): read as probabilistic PCA (Tipping & Bishop 1999) the discarded
variance ``sigma^2 = mean(lambda_{r+1..c})`` is noise, and the posterior variance of the
signal along axis ``j <= r`` is ``sigma^2 (1 - sigma^2 / lambda_j)``. `sample` draws around
the projection ``z`` (not PPCA's shrunk mean, so the decoder reproduces the reconstruction
at temperature 0) with that variance; at full rank ``sigma^2 = 0`` and samples equal ``z``.
The prior along axis ``j`` is ``N(0, lambda_j)`` (`prior_std`).

Output weighting (``importance``, `lsmerge.data.importance`): each 2-d tensor's z-scored
values are multiplied by ``sqrt(a_j)``, a_j = h_j / mean(h) its column weights, before chunking,
and divided by it after decoding. PCA of the scaled chunks minimises the weighted error
``sum_ij a_j (x_ij - x^_ij)^2 = ||(X - X^) diag(sqrt a)||_F^2`` exactly, the diagonal
approximation of the layer's output error ||(W - W^) X_in^T||^2. Such a codec needs its
statistics to decode: they are saved beside it (``importance.safetensors``, with the
calibration digest, which ``pca_codec.json`` records and `load` checks).

Files: ``pca_codec.json`` (settings, family, key list) and ``pca_codec.safetensors``
(per key ``<key>.mean``, ``<key>.components``, ``<key>.variances``) -- no pickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence, get_args

import torch
from safetensors.torch import load_file, save

from lsmerge.codecs.base import TensorLatent, posterior_samples
from lsmerge.data.chunking import check_layout, chunk, tensor_stats, unchunk
from lsmerge.data.importance import IMPORTANCE_FILE, ImportanceStats, column_weights
from lsmerge.errors import LsMergeError
from lsmerge.io.atomic import atomic_paths
from lsmerge.io.archmap import ArchitectureMap

CODEC_JSON = "pca_codec.json"
CODEC_TENSORS = "pca_codec.safetensors"
BasisPer = Literal["tensor", "kind"]
BASIS_PER = get_args(BasisPer)


def _normalised_chunks(weight: torch.Tensor, chunk_size: int, layout: str,
                       scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """weight -> (chunks (n, chunk_size) float64 of the z-scored weight, times `scale` (in,) per column
    when given, norm (2,) = (mean, std))."""
    norm = tensor_stats(weight)
    x = (weight.detach().to(torch.float64) - norm[0]) / norm[1]
    if scale is not None:
        x = x * scale[None, :]
    return chunk(x, chunk_size, layout), norm


@dataclass
class PCABasis:
    """One PCA basis over chunks.

    Attributes:
        mean: (c,) chunk mean.
        components: (c, r) principal axes (columns, by decreasing variance), float64.
        variances: (c,) all eigenvalues of the chunk covariance, decreasing (>= 0).
        n_chunks: how many chunks it was fitted on.
    """

    mean: torch.Tensor
    components: torch.Tensor
    variances: torch.Tensor
    n_chunks: int

    @property
    def rank(self) -> int:
        return self.components.shape[1]

    @property
    def noise_variance(self) -> float:
        """PPCA's sigma^2: mean discarded eigenvalue (0 at full rank)."""
        rest = self.variances[self.rank :]
        return float(rest.mean()) if rest.numel() else 0.0


class _CovarianceAccumulator:
    """Streaming sums for a chunk covariance: sum x, sum x x^T, count (float64)."""

    def __init__(self, chunk_size: int):
        self.sum = torch.zeros(chunk_size, dtype=torch.float64)
        self.outer = torch.zeros(chunk_size, chunk_size, dtype=torch.float64)
        self.count = 0

    def add(self, chunks: torch.Tensor) -> None:
        self.sum += chunks.sum(0)
        self.outer += chunks.T @ chunks
        self.count += chunks.shape[0]

    def basis(self, rank: int) -> PCABasis:
        mean = self.sum / self.count
        cov = self.outer / self.count - torch.outer(mean, mean)
        cov = (cov + cov.T) / 2
        evals, evecs = torch.linalg.eigh(cov)  # ascending; evecs is a complete orthonormal basis
        order = torch.arange(evals.numel() - 1, -1, -1)
        evals, evecs = evals[order].clamp_min(0), evecs[:, order]
        # A deterministic sign per axis (largest-magnitude entry positive).
        idx = evecs.abs().argmax(0)
        signs = torch.sign(evecs[idx, torch.arange(evecs.shape[1])])
        evecs = evecs * torch.where(signs == 0, torch.ones_like(signs), signs)
        return PCABasis(mean, evecs[:, :rank].contiguous(), evals, self.count)


def _column_scale(importance: ImportanceStats | None, name: str, shape) -> torch.Tensor | None:
    """sqrt of the column weights (in,) float64 of a 2-d tensor under output weighting, else None."""
    if importance is None or len(shape) != 2:
        return None
    return column_weights(importance.for_tensor(name, tuple(shape))).sqrt()


class PCACodec:
    """Encode / decode weight tensors with per-tensor (or per-kind) PCA over chunks.

    Build with `PCACodec.fit(...)` or `PCACodec.load(path)`; see the module docstring for the
    formulas.

    Args:
        bases: key -> `PCABasis` (key = tensor name, or module kind when `per == "kind"`).
        chunk_size: values per chunk ``c``.
        per: "tensor" (one basis per tensor name) or "kind" (one per module kind).
        family: `config.json` model_type of the model(s) it was fitted on.
        names: tensor names it was fitted on.
        importance: the input statistics of an output-weighted codec (None: plain PCA).
    """

    def __init__(self, bases: dict[str, PCABasis], *, chunk_size: int, per: str, family: str | None,
                 names: Sequence[str], layout: str = "flat", importance: ImportanceStats | None = None):
        check_layout(layout)
        if per not in BASIS_PER:
            raise LsMergeError(f"pca_basis must be one of {BASIS_PER}, got {per!r}.")
        self.bases = bases
        self.chunk_size = chunk_size
        self.layout = layout
        self.per = per
        self.family = family
        self.names = list(names)
        self._names = set(self.names)
        self._amap = ArchitectureMap(family) if per == "kind" else None
        self.importance = importance

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        tensors: Iterable[tuple[str, Sequence[torch.Tensor]]],
        *,
        chunk_size: int = 64,
        rank: int | None = None,
        per: str = "tensor",
        family: str | None = None,
        layout: str = "flat",
        importance: ImportanceStats | None = None,
    ) -> "PCACodec":
        """Fit bases on ``(name, [tensor of model 1, tensor of model 2, ...])`` pairs, streamed.

        Args:
            tensors: each name with its copies in the fitting models (any shapes; each copy is
                z-scored on its own before chunking).
            chunk_size: values per chunk (the code's row length before projection).
            rank: principal axes kept (latent_dim), 1..chunk_size; None = chunk_size (exact).
            per: "tensor" or "kind" (needs `family` to map names to kinds).
            family: model_type of the fitting models (checked against models at merge time).
            layout: chunk layout, "flat" (sequential, the paper's) or "rows" (chunks never span
                two rows), as in `lsmerge.data.chunking`.
            importance: input second moments: fit and code the output-weighted values (module doc).
        """
        check_layout(layout)
        if chunk_size <= 0:
            raise LsMergeError(f"chunk_size must be positive, got {chunk_size}.")
        rank = chunk_size if rank is None else rank
        if not 1 <= rank <= chunk_size:
            raise LsMergeError(f"PCA rank must be in [1, chunk_size={chunk_size}], got {rank}.")
        if per not in BASIS_PER:
            raise LsMergeError(f"pca_basis must be one of {BASIS_PER}, got {per!r}.")
        if per == "kind" and family is None:
            raise LsMergeError("a per-kind PCA basis needs the model family (config.json model_type).")
        amap = ArchitectureMap(family) if per == "kind" else None
        accs: dict[str, _CovarianceAccumulator] = {}
        names = []
        for name, copies in tensors:
            key = name if amap is None else amap.role(name).kind
            acc = accs.setdefault(key, _CovarianceAccumulator(chunk_size))
            for t in copies:
                acc.add(_normalised_chunks(t, chunk_size, layout, _column_scale(importance, name, t.shape))[0])
            names.append(name)
        if not accs:
            raise LsMergeError("no tensors to fit the PCA codec on; check the `kinds` selection.")
        bases = {key: acc.basis(rank) for key, acc in accs.items()}
        return cls(bases, chunk_size=chunk_size, per=per, family=family, names=names, layout=layout, importance=importance)

    @classmethod
    def load(cls, path: str | os.PathLike, importance: str | os.PathLike | None = None) -> "PCACodec":
        """Load a codec saved by `save` (JSON + safetensors, no pickle); an output-weighted one with
        its statistics (`importance`, default the file beside it), checked against its digest."""
        path = Path(path)
        meta_file, tensor_file = path / CODEC_JSON, path / CODEC_TENSORS
        if not meta_file.exists() or not tensor_file.exists():
            raise LsMergeError(f"{path} is not a saved PCA codec (expected {CODEC_JSON} and {CODEC_TENSORS}).")
        meta = json.loads(meta_file.read_text())
        tensors = load_file(tensor_file)
        bases = {
            key: PCABasis(tensors[f"{key}.mean"], tensors[f"{key}.components"], tensors[f"{key}.variances"], n)
            for key, n in meta["keys"].items()
        }
        stats = None
        if meta.get("importance_digest"):
            found = Path(importance) if importance else path / IMPORTANCE_FILE
            if not found.is_file():
                raise LsMergeError(f"the PCA codec {path} was fitted with importance weighting (calibration digest "
                                   f"{meta['importance_digest'][:12]}) and cannot decode without its statistics, but "
                                   f"{found} does not exist. Put the {IMPORTANCE_FILE} it was fitted with beside it "
                                   "(or pass it), or refit the codec.")
            stats = ImportanceStats.load(found)
            stats.check_digest(meta["importance_digest"], f"the PCA codec {path}")
        return cls(bases, chunk_size=meta["chunk_size"], per=meta["per"], family=meta["family"], names=meta["names"],
                   layout=meta.get("layout", "flat"), importance=stats)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tensors = {}
        for key, b in self.bases.items():
            tensors[f"{key}.mean"] = b.mean.contiguous()
            tensors[f"{key}.components"] = b.components.contiguous()
            tensors[f"{key}.variances"] = b.variances.contiguous()
        meta = {
            "codec": "pca",
            "chunk_size": self.chunk_size,
            "layout": self.layout,
            "rank": self.rank,
            "per": self.per,
            "family": self.family,
            "names": self.names,
            "keys": {k: b.n_chunks for k, b in self.bases.items()},
            "importance_digest": self.importance.digest if self.importance else None,
        }
        # all files or none; serialised in memory so a failed write is an OSError naming the path
        files = [path / CODEC_TENSORS, path / CODEC_JSON] + ([path / IMPORTANCE_FILE] if self.importance else [])
        with atomic_paths(*files) as tmps:
            tmps[0].write_bytes(save(tensors))
            tmps[1].write_text(json.dumps(meta, indent=2) + "\n")
            if self.importance:
                tmps[2].write_bytes(self.importance.to_bytes())
        return path

    # -- facts -----------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return next(iter(self.bases.values())).rank

    @property
    def latent_dim(self) -> int:
        return self.rank

    @property
    def kinds(self) -> list[str]:
        """Module kinds it covers (per-kind bases), or the kinds of its fitted names."""
        if self.per == "kind":
            return sorted(self.bases)
        if self.family is None:
            return []
        amap = ArchitectureMap(self.family)
        return sorted({amap.role(n).kind for n in self.names})

    def describe(self) -> dict:
        out = {"codec": "pca", "chunk_size": self.chunk_size, "layout": self.layout, "rank": self.rank,
               "per": self.per, "family": self.family}
        if self.importance is not None:
            out["importance"] = self.importance.describe()
        return out

    def _basis(self, name: str) -> PCABasis:
        key = name if self._amap is None else self._amap.role(name).kind
        try:
            return self.bases[key]
        except KeyError:
            raise LsMergeError(f"the PCA codec was not fitted on tensor {name!r} (kinds: {self.kinds}).") from None

    # -- Codec protocol --------------------------------------------------------------------
    def covers(self, name: str) -> bool:
        if self._amap is None:
            return name in self._names
        return self._amap.role(name).kind in self.bases

    def encode(self, name: str, weight: torch.Tensor) -> TensorLatent:
        """weight (any shape) -> latent with z (ceil(numel / chunk_size), rank), float32."""
        basis = self._basis(name)
        chunks, norm = _normalised_chunks(weight, self.chunk_size, self.layout,
                                          _column_scale(self.importance, name, weight.shape))
        z = (chunks - basis.mean) @ basis.components
        latent = TensorLatent(z=z.float(), norm=norm.float(), shape=tuple(weight.shape))
        var = self._posterior_variance(basis)
        if var is not None:
            latent.logvar = var.log().float().expand_as(latent.z).clone()
        return latent

    def decode(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """latent -> float32 tensor of `latent.shape` (de-normalised with `latent.norm`)."""
        basis = self._basis(name)
        z = latent.z.to(torch.float64)
        if z.shape[1] != basis.rank:
            raise LsMergeError(f"latent for {name!r} has latent_dim {z.shape[1]}, the PCA codec expects {basis.rank}.")
        chunks = z @ basis.components.T + basis.mean
        w = unchunk(chunks, latent.shape, self.layout)
        scale = _column_scale(self.importance, name, latent.shape)
        if scale is not None:
            w = w / scale[None, :]
        mean, std = latent.norm.to(torch.float64)
        return (w * std + mean).float()

    # -- posterior and prior (self-merge) --------------------------------------------------
    @staticmethod
    def _posterior_variance(basis: PCABasis) -> torch.Tensor | None:
        """(rank,) PPCA posterior variance sigma^2 (1 - sigma^2 / lambda_j); None at sigma^2 = 0."""
        s2 = basis.noise_variance
        if s2 <= 0:
            return None
        lam = basis.variances[: basis.rank].clamp_min(s2)
        return (s2 * (1 - s2 / lam)).clamp_min(1e-30)

    def sample(self, name: str, weight: torch.Tensor, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> list[TensorLatent]:
        """`n` posterior samples z + temperature * sqrt(var) * eps (copies of z at full rank)."""
        return posterior_samples(self.encode(name, weight), n, temperature, generator=generator)

    def prior_std(self, name: str) -> torch.Tensor:
        """(rank,) standard deviation of the prior N(0, lambda_j) along each kept axis."""
        basis = self._basis(name)
        return basis.variances[: basis.rank].sqrt().float()

    def __repr__(self) -> str:
        return f"PCACodec(keys={len(self.bases)}, chunk_size={self.chunk_size}, rank={self.rank}, per={self.per!r}, family={self.family!r})"
