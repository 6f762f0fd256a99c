"""Task-vector codec: experts coded by their coefficients in the joint singular basis of their task matrices.

Per 2-d tensor (a layer's weight of one kind, viewed as (out, in)), the experts' task matrices
``dW_i = W_i - W_base`` share one basis from the thin SVD of their concatenation (KnOTS,
Stoica et al., ICLR 2025; the math is `lsmerge.data.task_codes`):

    [dW_1 ... dW_N] = U S [V_1^T ... V_N^T],    U_r = the r leading columns of U

    encode(W) = U_r^T (W - W_base)              z: (r, in) float32   (expert i: S_r V_{i,r}^T)
    decode(z) = W_base + U_r z                  (out, in) float32

At full rank (r = k = min(out, N * in)) decode(encode(W_i)) = W_i up to float32 rounding, and
since encode / decode are linear and the base's code is 0, every linear latent operator is
exactly its weight-space twin: lerp, soup, task arithmetic on codes = the same on weights.
TIES / DARE on codes trim / drop coefficients instead of weights (KnOTS-TIES / KnOTS-DARE).
Truncated to rank ``r < k`` the codes keep the directions of largest joint singular value.
1-d tensors (norms, biases) are coded as themselves: z = W (1, numel), decode(z) = z.

The codec knows its base and experts: `fit` reads them from checkpoint stores (the basis of a
tensor is computed when the tensor is first encoded, one tensor at a time, so memory stays
flat in depth); `save` writes ``task_vector_codec.json`` (settings, names, shapes, and the
sha256 digests of the base's and experts' files, `lsmerge.io.provenance`) and
``task_vector_codec.safetensors`` (``<name>.U``, ``<name>.S``). A loaded codec must be bound
to the merge's base and experts (`bind`): another base or another set of experts is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save

from lsmerge.codecs.base import TensorLatent
from lsmerge.data.task_codes import (
    check_fixed_rank,
    check_rank_fraction,
    coefficients,
    joint_basis,
    joint_rank,
    task_matrices,
    task_rank,
)
from lsmerge.errors import LsMergeError
from lsmerge.io.archmap import ArchitectureMap
from lsmerge.io.atomic import atomic_paths
from lsmerge.io.provenance import content_key, input_digests

CODEC_JSON = "task_vector_codec.json"
CODEC_TENSORS = "task_vector_codec.safetensors"


class TaskVectorCodec:
    """A joint-SVD basis per tensor of one base and N experts (see the module docstring).

    Build with `TaskVectorCodec.fit(base, experts, names, ...)` or `TaskVectorCodec.load(path)`
    then `bind(base, experts)`.

    Args:
        shapes: covered tensor name -> its shape (2-d and more: coded in a basis; 1-d: identity).
        n_experts: N, the experts the bases were built from.
        rank_fraction, rank: truncation (`lsmerge.data.task_codes.task_rank`); neither = full rank.
        family: `config.json` model_type of the models.
        sources: {"base": digest, "experts": [digest, ...]} as `input_digests` writes them, or None
            until the codec is saved.
        device: where the SVD and the basis products run.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], *, n_experts: int, rank_fraction: float | None = None,
                 rank: int | None = None, family: str | None = None, sources: dict | None = None,
                 device: str | torch.device = "cpu"):
        if n_experts < 1:
            raise LsMergeError("the task-vector codec needs at least one expert besides the base; list the fine-tuned models.")
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.names = list(self.shapes)
        self.n_experts = n_experts
        self.rank_fraction, self.rank = check_rank_fraction(rank_fraction), check_fixed_rank(rank)
        task_rank(1, self.rank_fraction, self.rank)  # refuses both at once
        self.family, self.sources, self.device = family, sources, torch.device(device)
        self.base_store = None
        self.expert_stores: list = []
        self._file: Path | None = None  # a saved codec's tensors (read one tensor at a time)
        self._parent: TaskVectorCodec | None = None  # the codec this one truncates
        self._cache: dict[str, torch.Tensor] = {}

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def fit(cls, base, experts: Sequence, names: Sequence[str], *, rank_fraction: float | None = None,
            rank: int | None = None, family: str | None = None, device: str | torch.device = "cpu") -> "TaskVectorCodec":
        """A codec over `names` of the checkpoint stores `base` and `experts` (bases computed on first use).

        LsMergeError when there is no expert, or a name is missing from, or shaped differently in, an expert."""
        if len(experts) < 1:
            raise LsMergeError("the task-vector codec needs at least one expert besides the base; list the fine-tuned models.")
        shapes = {}
        for n in names:
            shape = tuple(base.shape(n))
            for e in experts:
                if n not in e.names:
                    raise LsMergeError(f"expert {e.path} has no tensor {n!r} that base {base.path} has: it was not "
                                       "fine-tuned from this base. Give the base the experts share.")
                if tuple(e.shape(n)) != shape:
                    raise LsMergeError(f"tensor {n!r} has shape {tuple(e.shape(n))} in expert {e.path} but {shape} in base "
                                       f"{base.path}: the expert was not fine-tuned from this base. Give the base they share.")
            shapes[n] = shape
        codec = cls(shapes, n_experts=len(experts), rank_fraction=rank_fraction, rank=rank, family=family, device=device)
        codec.base_store, codec.expert_stores = base, list(experts)
        return codec

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "TaskVectorCodec":
        """A codec saved by `save` (JSON + safetensors, no pickle); `bind` it before use."""
        path = Path(path)
        meta_file, tensor_file = path / CODEC_JSON, path / CODEC_TENSORS
        if not meta_file.exists() or not tensor_file.exists():
            raise LsMergeError(f"{path} is not a saved task-vector codec (expected {CODEC_JSON} and {CODEC_TENSORS}).")
        meta = json.loads(meta_file.read_text())
        codec = cls({n: tuple(s) for n, s in meta["shapes"].items()}, n_experts=meta["n_experts"],
                    rank_fraction=meta["rank_fraction"], rank=meta["rank"], family=meta["family"],
                    sources=meta["sources"], device=device)
        codec._file = tensor_file
        return codec

    def save(self, path: str | os.PathLike) -> Path:
        """Write the bases of every covered tensor and the inputs' digests (both files or neither).

        All bases are held in memory while the file is written (SmolLM2-135M at full rank: ~0.6 GB);
        afterwards the codec reads them back from the file instead of computing them again."""
        if self.base_store is None:
            raise LsMergeError("bind the task-vector codec to its base and experts before saving it.")
        path = Path(path)
        tensors = {}
        for n in self.names:
            if len(self.shapes[n]) >= 2:
                u, s = self._basis(n)
                tensors[f"{n}.U"], tensors[f"{n}.S"] = u.cpu().contiguous(), s.cpu().contiguous()
        sources = self.sources or self._digests(self.base_store, self.expert_stores)
        meta = {"codec": "task_vector", "rank_fraction": self.rank_fraction, "rank": self.rank, "family": self.family,
                "n_experts": self.n_experts, "sources": sources, "shapes": {n: list(s) for n, s in self.shapes.items()}}
        with atomic_paths(path / CODEC_TENSORS, path / CODEC_JSON) as (tensor_tmp, meta_tmp):
            tensor_tmp.write_bytes(save(tensors))
            meta_tmp.write_text(json.dumps(meta, indent=2) + "\n")
        del tensors
        if self._parent is None:  # from now on the bases are read back, not computed again
            self._file, self.sources, self._cache = path / CODEC_TENSORS, sources, {}
        return path

    # -- the inputs it belongs to --------------------------------------------------------------
    @staticmethod
    def _digests(base, experts: Sequence) -> dict:
        return {"base": input_digests([base.path])[0], "experts": [input_digests([e.path])[0] for e in experts]}

    def bind(self, base, experts: Sequence) -> "TaskVectorCodec":
        """Use `base` and `experts` (checkpoint stores); LsMergeError unless they are the ones the codec was built from.

        Inputs are compared by the sha256 of their files; the experts as a set (order free)."""
        if base is None:
            raise LsMergeError("the task-vector codec codes W - W_base: set base (the model the experts were fine-tuned from).")
        if self.sources is not None:
            given = self._digests(base, experts)
            want_b, got_b = self.sources["base"], given["base"]
            if content_key(want_b) != content_key(got_b):
                raise LsMergeError(f"the task-vector codec was built on base {want_b['input']!r}, but this merge's base "
                                   f"{got_b['input']!r} differs from it (file digests): its codes are differences to "
                                   "another base. Use the base it was built on, or fit a codec on these models (codec: task_vector).")
            want = sorted(content_key(d) for d in self.sources["experts"])
            if sorted(content_key(d) for d in given["experts"]) != want:
                raise LsMergeError(
                    f"the task-vector codec was built from experts {[d['input'] for d in self.sources['experts']]}, but this "
                    f"merge gives {[d['input'] for d in given['experts']]}, another set (file digests): its basis spans only "
                    "its own experts' task matrices. Merge the experts it was built from, or fit a codec on these "
                    "(codec: task_vector).")
        self.base_store, self.expert_stores = base, list(experts)
        return self

    def truncated(self, rank_fraction: float | None = None, rank: int | None = None) -> "TaskVectorCodec":
        """The same codec keeping fewer directions (a saved codec reused at a lower rank); self when neither is given."""
        if rank_fraction is None and rank is None:
            return self
        for n, shape in self.shapes.items():
            if len(shape) >= 2:
                full = joint_rank(shape, self.n_experts)
                have = task_rank(full, self.rank_fraction, self.rank)
                if task_rank(full, check_rank_fraction(rank_fraction), check_fixed_rank(rank)) > have:
                    raise LsMergeError(f"the task-vector codec keeps {have} directions of {n!r}; it cannot be used at a higher "
                                       "rank. Lower rank / rank_fraction, or fit a codec at that rank (codec: task_vector).")
        out = TaskVectorCodec(self.shapes, n_experts=self.n_experts, rank_fraction=rank_fraction, rank=rank,
                              family=self.family, sources=self.sources, device=self.device)
        out.base_store, out.expert_stores, out._file, out._parent = self.base_store, self.expert_stores, self._file, self
        return out

    # -- facts ---------------------------------------------------------------------------------
    def rank_of(self, name: str) -> int:
        """Kept rank r of the 2-d tensor `name`."""
        return task_rank(joint_rank(self.shapes[name], self.n_experts), self.rank_fraction, self.rank)

    @property
    def kinds(self) -> list[str]:
        if self.family is None:
            return []
        amap = ArchitectureMap(self.family)
        return sorted({amap.role(n).kind for n in self.names})

    def describe(self) -> dict:
        d = {"codec": "task_vector", "rank_fraction": self.rank_fraction, "rank": self.rank, "family": self.family,
             "n_experts": self.n_experts}
        if self.sources is not None:
            d.update(base=self.sources["base"]["input"], experts=[e["input"] for e in self.sources["experts"]])
        elif self.base_store is not None:
            d.update(base=Path(self.base_store.path).name, experts=[Path(e.path).name for e in self.expert_stores])
        return d

    # -- bases ---------------------------------------------------------------------------------
    def _basis(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_r (out, r), S_r (r,)) of `name` on the codec's device (the last tensor's are kept)."""
        if name in self._cache:
            return self._cache[name], self._cache[name + ".S"]
        r = self.rank_of(name)
        if self._parent is not None:
            u, s = self._parent._basis(name)
            u, s = u[:, :r], s[:r]
        elif self._file is not None:
            with safe_open(str(self._file), "pt") as f:
                u, s = f.get_tensor(f"{name}.U"), f.get_tensor(f"{name}.S")
            u, s = u.to(self.device)[:, :r], s[:r]
        else:
            self._need_inputs()
            base = self.base_store.get(name)
            deltas = task_matrices(base, [e.get(name) for e in self.expert_stores], name)
            u, s = joint_basis(deltas, r, self.device)
        self._cache = {name: u, name + ".S": s}
        return u, s

    def _need_inputs(self) -> None:
        if self.base_store is None:
            raise LsMergeError("the task-vector codec is not bound to a base and experts; call bind(base, experts) first.")

    def _base(self, name: str) -> torch.Tensor:
        """W_base of `name` as (out, in) float32 on the CPU."""
        self._need_inputs()
        return self.base_store.get(name).float().reshape(self.shapes[name][0], -1)

    # -- Codec protocol --------------------------------------------------------------------------
    def covers(self, name: str) -> bool:
        return name in self.shapes

    def _check(self, name: str, shape: Sequence[int]) -> None:
        if name not in self.shapes:
            raise LsMergeError(f"the task-vector codec was not built on tensor {name!r} (kinds: {self.kinds}).")
        if tuple(shape) != self.shapes[name]:
            raise LsMergeError(f"tensor {name!r} has shape {tuple(shape)}; the task-vector codec was built on "
                               f"{self.shapes[name]}. Use the models it was built from.")

    def encode(self, name: str, weight: torch.Tensor) -> TensorLatent:
        """weight -> latent with z = U_r^T (W - W_base) of shape (r, in) (1-d: z = W as (1, numel)), float32."""
        self._check(name, weight.shape)
        shape = tuple(weight.shape)
        norm = torch.zeros(1)  # no normalisation: codes are in weight units
        if len(shape) < 2:
            return TensorLatent(z=weight.detach().float().reshape(1, -1).clone(), norm=norm, shape=shape)
        u, _ = self._basis(name)
        delta = weight.detach().float().reshape(shape[0], -1) - self._base(name)
        return TensorLatent(z=coefficients(u, delta).cpu(), norm=norm, shape=shape)

    def decode(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """latent -> W_base + U_r z, float32 of `latent.shape` (1-d: z itself)."""
        self._check(name, latent.shape)
        if len(latent.shape) < 2:
            return latent.z.float().reshape(latent.shape).clone()
        u, _ = self._basis(name)
        if latent.z.shape[0] != u.shape[1]:
            raise LsMergeError(f"latent for {name!r} has {latent.z.shape[0]} rows; the task-vector codec keeps {u.shape[1]}.")
        w = self._base(name) + (u @ latent.z.to(device=u.device, dtype=torch.float32)).cpu()
        return w.reshape(latent.shape)

    def __repr__(self) -> str:
        r = "full" if self.rank_fraction is None and self.rank is None else (self.rank if self.rank else self.rank_fraction)
        return f"TaskVectorCodec(tensors={len(self.shapes)}, experts={self.n_experts}, rank={r}, family={self.family!r})"
