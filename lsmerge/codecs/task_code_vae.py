"""`TaskCodeVAECodec`: LS-Merge through a weight VAE trained on task-vector codes (``data.source: task_codes``).

The composition of the task-vector codec (`lsmerge.codecs.task_vector`, KnOTS' joint SVD basis) and a
`VAECodec` fitted on the experts' coefficient blocks (`lsmerge.data.task_codes`):

    C(W)      = U_r^T (W - W_base)        (r, in) code block in the joint basis of the experts' task matrices
    encode(W) = E(C(W))                   (n_chunks, latent_dim) VAE posterior means, norm = (mean, std) of C(W)
    decode(z) = W_base + U_r D(z)         (out, in) float32

The VAE is fed what it saw in training: the basis U_r of the same base and experts at the same
``rank_fraction`` (from the checkpoint's data hyper-parameters), the whole block z-scored once (its
mean, std), chunked in the trained layout (``rows``: no chunk spans two coefficient rows), windows of T
chunks (`VAECodec`). Tensors the VAE was not trained on (1-d tensors, other kinds, other layers) are not
covered: the merge's weight-space fallback takes them, as for any codec.

Delta coding. The base's code is the zero block C_b = 0, whose statistics are (0, 1e-12) (the std is
floored), so D(E(0)) is ~1e-12 and the generic ``delta: latent`` (W_b + D(z_m) - D(z_b)) would cancel
nothing. With this codec ``delta: latent`` is the code-space correction of a merge linear in its inputs,
z_m = sum_i c_i z_i (lerp, soup, task_arithmetic with the base and its coefficient; `decode_merged`):

    C_merged = D(z_m) + sum_i c_i (C_i - D(z_i))

so each input's VAE reconstruction error cancels at the merge's own coefficients (the side channel with
every entry kept): what remains of the VAE is its non-linearity D(sum_i c_i z_i) - sum_i c_i D(z_i), and a
corner of the merge (lerp lam 0, a one-hot soup) gives that input's task-vector reconstruction
W_base + U_r C_i (the input itself at full rank) up to float rounding. TIES / DARE are
not linear: ``delta: latent`` is refused for them, ``delta: weight`` always (the codes are already
differences to the base). A latent whose statistics are the base's (mean 0, std at the floor) decodes to
the zero block, so task arithmetic at lam 0 gives W_base exactly, with ``delta: none`` too.

Inputs. The basis is the base's and experts' the VAE was trained on: ``lsmerge fit`` on task codes stores
their file digests (sha256) in the checkpoint's data hyper-parameters (`TASK_CODE_INPUTS`); `bind`
compares the merge's base and experts (the experts as a set) by content, as `TaskVectorCodec.bind` does,
and refuses others, and a checkpoint fitted before the digests were recorded (refit it).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from lsmerge.codecs.base import TensorLatent
from lsmerge.codecs.task_vector import TaskVectorCodec
from lsmerge.data.chunking import tensor_stats
from lsmerge.data.task_codes import TASK_CODE_INPUTS
from lsmerge.errors import LsMergeError
from lsmerge.io.provenance import content_key, input_digests

TASK_CODES = "task_codes"  # data.source of a VAE fitted on task-vector codes
_STD_FLOOR = float(tensor_stats(torch.zeros(1))[1])  # the std of an all-zero block (chunking's floor)


def task_code_data(ckpt: dict) -> dict | None:
    """The data hyper-parameters of a VAE checkpoint dict fitted with ``data.source: task_codes``, else None."""
    data = ckpt.get("datamodule_hyper_parameters")
    return dict(data) if isinstance(data, dict) and data.get("source") == TASK_CODES else None


@dataclass
class CodeLatent(TensorLatent):
    """A `TensorLatent` of this codec that also holds the exact code block C = U_r^T (W - W_base) (r, in),
    what `decode_merged` corrects with; a combination (`with_z`) has none."""

    code: torch.Tensor | None = None

    def with_z(self, z: torch.Tensor, norm: torch.Tensor | None = None) -> TensorLatent:
        return replace(super().with_z(z, norm), code=None)


class TaskCodeVAECodec:
    """A weight VAE trained on task codes, behind the `Codec` protocol (see the module docstring).

    Build with `from_checkpoint(ckpt, path)` (or `load_codec(path)`), then `bind(base, experts)` to the merge's inputs.

    Args:
        vae: the `VAECodec` of the checkpoint (its tensors are code blocks (r, in)).
        data: the checkpoint's data hyper-parameters (`base`, `checkpoints`, `rank_fraction`, `TASK_CODE_INPUTS`).
        path: the checkpoint (for messages).
        device: where the SVDs, basis products and the VAE run.
    """

    def __init__(self, vae, data: dict, path: str | os.PathLike, device: str | torch.device = "cpu"):
        self.vae, self.data, self.path, self.device = vae, data, Path(path), torch.device(device)
        self.family = vae.family
        self.rank_fraction = data.get("rank_fraction")
        self.sources = data.get(TASK_CODE_INPUTS)
        self.tv: TaskVectorCodec | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: str | os.PathLike, device: str | torch.device = "cpu") -> "TaskCodeVAECodec":
        """The codec of a checkpoint dict read by `lsmerge.codecs.vae.read_vae_checkpoint` (fitted on task codes)."""
        from lsmerge.codecs.vae import VAECodec, weight_vae_from

        data = task_code_data(ckpt)
        if data is None:
            raise LsMergeError(f"the VAE {path} was not fitted on task codes (data.source: {TASK_CODES}).")
        return cls(VAECodec(weight_vae_from(ckpt), device=device), data, path, device)

    # -- binding to the merge's inputs ---------------------------------------------------------------
    def _trained_on(self) -> str:
        return f"base {self.data.get('base')!r} and experts {list(self.data.get('checkpoints') or [])}"

    def _check_inputs(self, base, experts: Sequence) -> None:
        """LsMergeError unless `base` and `experts` are, by file content, the ones the VAE was fitted on."""
        fix = (f"Merge through it the {self._trained_on()} it was fitted on, or fit a VAE on these models (lsmerge fit "
               f"with data.source: {TASK_CODES}, data.base: the base, data.checkpoints: the experts).")
        if self.sources is None:
            raise LsMergeError(f"the task-code VAE {self.path} was fitted before lsmerge recorded the digests of its base and "
                               f"experts ({TASK_CODE_INPUTS}), so this merge's inputs cannot be checked against them. Refit it "
                               f"on its {self._trained_on()}.")
        got_base = input_digests([base.path])[0]
        if content_key(got_base) != content_key(self.sources["base"]):
            raise LsMergeError(f"the task-code VAE {self.path} was fitted on codes against base {self.sources['base']['input']!r}, "
                               f"but this merge's base {got_base['input']!r} differs from it (file digests): the codes would "
                               f"be differences to another base in another basis. {fix}")
        got = [input_digests([e.path])[0] for e in experts]
        if sorted(content_key(d) for d in got) != sorted(content_key(d) for d in self.sources["experts"]):
            raise LsMergeError(f"the task-code VAE {self.path} was fitted on the codes of experts "
                               f"{[d['input'] for d in self.sources['experts']]}, but this merge gives "
                               f"{[d['input'] for d in got]}, another set (file digests): the joint basis spans its "
                               f"experts' task matrices only. {fix}")

    def bind(self, base, experts: Sequence) -> "TaskCodeVAECodec":
        """Check the inputs (`_check_inputs`), then build the task-vector codec of `base` and `experts` over the
        VAE's tensors at its rank fraction; LsMergeError when a code block would not have the trained shape."""
        if base is None:
            raise LsMergeError("the task-code VAE codes each expert as U^T (W_i - W_base): set base (the model the "
                               "experts were fine-tuned from, the data.base of its fit).")
        self._check_inputs(base, experts)
        tv = TaskVectorCodec.fit(base, experts, self.vae.names, rank_fraction=self.rank_fraction, family=self.family,
                                 device=self.device)
        for name, spec in self.vae.specs.items():
            shape = tv.shapes[name]
            got = [tv.rank_of(name), math.prod(shape[1:])] if len(shape) >= 2 else list(shape)
            if got != list(spec["shape"]):
                raise LsMergeError(f"tensor {name} of base {base.path} codes to a block of shape {got}, but the VAE {self.path} "
                                   f"was trained on {spec['shape']}. Use the inputs it was fitted on, or refit it.")
        self.tv = tv
        return self

    def _bound(self) -> TaskVectorCodec:
        if self.tv is None:
            raise LsMergeError("the task-code VAE is not bound to a base and experts; call bind(base, experts) first.")
        return self.tv

    # -- facts ------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return self.vae.names

    @property
    def kinds(self) -> list[str]:
        return sorted({spec["kind"] for spec in self.vae.specs.values()})

    def describe(self) -> dict:
        hp = self.vae.model.hparams
        d = {"codec": "task_code_vae", "vae": Path(self.path).name, "family": self.family, "rank_fraction": self.rank_fraction,
             "tensors": len(self.vae.specs), "chunk_size": hp.chunk_size, "latent_dim": hp.latent_dim, "layout": hp.layout}
        if self.sources is not None:
            d.update(base=self.sources["base"]["input"], experts=[e["input"] for e in self.sources["experts"]])
        return d

    def __repr__(self) -> str:
        n = len(self.sources["experts"]) if self.sources else len(self.data.get("checkpoints") or [])
        rf = "full" if self.rank_fraction is None else self.rank_fraction
        return (f"TaskCodeVAECodec(tensors={len(self.vae.specs)}, experts={n}, rank_fraction={rf}, "
                f"latent_dim={self.vae.model.hparams.latent_dim}, family={self.family!r})")

    # -- Codec protocol -----------------------------------------------------------------------------
    def covers(self, name: str) -> bool:
        return self.vae.covers(name)

    def encode(self, name: str, weight: torch.Tensor) -> CodeLatent:
        """weight (out, in) -> CodeLatent(z = E(C) (n_chunks, latent_dim), logvar, norm = (mean, std) of C,
        shape = weight's, code = C (r, in))."""
        code = self._bound().encode(name, weight).z
        lat = self.vae.encode(name, code)
        return CodeLatent(z=lat.z, norm=lat.norm, shape=tuple(weight.shape), logvar=lat.logvar, code=code)

    def code_block(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """D(z): the decoded code block (r, in) float32; the zero block for a latent with the base's statistics."""
        shape = tuple(self.vae.specs[name]["shape"])
        norm = latent.norm.reshape(-1)
        if float(norm[0]) == 0.0 and float(norm[1]) <= 2 * _STD_FLOOR:
            return torch.zeros(shape)
        return self.vae.decode(name, TensorLatent(z=latent.z, norm=latent.norm, shape=shape))

    def _weight(self, name: str, code: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return self._bound().decode(name, TensorLatent(z=code, norm=torch.zeros(1), shape=shape))

    def decode(self, name: str, latent: TensorLatent) -> torch.Tensor:
        """latent -> W_base + U_r D(z), float32 of `latent.shape`."""
        return self._weight(name, self.code_block(name, latent), tuple(latent.shape))

    def decode_merged(self, name: str, merged: TensorLatent, inputs: Sequence[TensorLatent],
                      coeffs: Sequence[float]) -> torch.Tensor:
        """W_base + U_r (D(z_m) + sum_i c_i (C_i - D(z_i))) for a linear merge z_m = sum_i c_i z_i of the encoded
        `inputs` (``delta: latent``; module doc); inputs with c_i = 0 are not decoded."""
        if len(inputs) != len(coeffs):
            raise ValueError(f"{len(inputs)} inputs for {len(coeffs)} coefficients")
        code = self.code_block(name, merged)
        for lt, c in zip(inputs, coeffs):
            if float(c) == 0.0:
                continue
            if getattr(lt, "code", None) is None:
                raise ValueError(f"an input latent of {name} has no exact code (encode it with this codec)")
            code = code + float(c) * (lt.code - self.code_block(name, lt))
        return self._weight(name, code, tuple(merged.shape))

    def reconstruct(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """decode(encode(W)) in W's dtype."""
        return self.decode(name, self.encode(name, weight)).to(weight.dtype)
