"""Task matrices of several experts in one shared basis: the joint SVD of KnOTS (pure math).

For one weight tensor of shape (out, in), each expert's task matrix is
``dW_i = W_i - W_base``. Their concatenation along the input axis has one thin SVD
(KnOTS, Stoica et al., ICLR 2025):

    [dW_1 ... dW_N] = U S [V_1^T ... V_N^T]      U: (out, k), S: (k,), V_i: (in, k),
                                                 k = min(out, N * in)

so every expert is ``dW_i = U C_i`` with its coefficient block ``C_i = S V_i^T = U^T dW_i``
of shape (k, in): the experts share the basis ``U`` and differ only by their coefficients.
Truncating to rank ``r <= k`` keeps the ``r`` leading columns of ``U`` (the directions of
largest joint singular value): ``dW_i ~ U_r U_r^T dW_i``.

`joint_basis` computes ``U_r`` and ``S_r`` in float32 (falling back to float64 when the float32
SVD does not converge), on any device; `task_rank` turns a rank fraction or a fixed rank
into ``r``; `TaskCodeReader` streams the coefficient blocks of selected tensors from
checkpoints (what `WeightChunkDataModule`'s ``source: task_codes`` trains the VAE on).
1-d tensors (norms, biases) have no basis: they are not task matrices here.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.hf import resolve_model
from lsmerge.io.provenance import input_digests
from lsmerge.io.store import open_checkpoint

#: the data hyper-parameter where a fit on task codes records its inputs' file digests (`TaskCodeReader.input_digests`)
TASK_CODE_INPUTS = "task_code_inputs"


def check_rank_fraction(rank_fraction: float | None, what: str = "rank_fraction") -> float | None:
    """`rank_fraction` itself when None or in (0, 1]; else one LsMergeError."""
    if rank_fraction is None:
        return None
    if isinstance(rank_fraction, bool) or not isinstance(rank_fraction, (int, float)) \
            or not math.isfinite(rank_fraction) or not 0 < rank_fraction <= 1:
        raise LsMergeError(f"{what} must be in (0, 1] (the fraction of the joint rank kept; 1 = full rank), "
                           f"got {rank_fraction!r}.")
    return float(rank_fraction)


def check_fixed_rank(rank: int | None, what: str = "rank") -> int | None:
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LsMergeError(f"{what} must be a positive integer (singular directions kept), got {rank!r}.")
    return rank


def joint_rank(shape: Sequence[int], n_experts: int) -> int:
    """k = min(out, N * in): the rank of the concatenated task matrices of a (out, in) tensor."""
    return min(int(shape[0]), n_experts * int(math.prod(shape[1:])))


def task_rank(full: int, rank_fraction: float | None = None, rank: int | None = None) -> int:
    """Kept rank r: ceil(rank_fraction * full), or min(rank, full), or full when neither is given."""
    if rank_fraction is not None and rank is not None:
        raise LsMergeError("give rank (a fixed number of directions) or rank_fraction (a fraction of the joint rank), not both.")
    if rank is not None:
        return min(int(rank), full)
    if rank_fraction is not None:
        return max(1, min(full, math.ceil(rank_fraction * full)))
    return full


def task_matrices(base: torch.Tensor, experts: Sequence[torch.Tensor], name: str = "") -> list[torch.Tensor]:
    """[W_i - W_base] in float32, each reshaped to (out, in); LsMergeError on a shape mismatch or no expert."""
    if len(experts) < 1:
        raise LsMergeError("a task-vector basis needs at least one expert besides the base; list the fine-tuned models.")
    for w in experts:
        if tuple(w.shape) != tuple(base.shape):
            raise LsMergeError(f"tensor {name!r} has shape {tuple(w.shape)} in an expert but {tuple(base.shape)} in the "
                               "base: the experts were not fine-tuned from this base. Give the base they share.")
    b = base.float().reshape(base.shape[0], -1)
    return [w.float().reshape(b.shape) - b for w in experts]


def _fix_signs(u: torch.Tensor) -> torch.Tensor:
    """A deterministic sign per column (its largest-magnitude entry positive), so bases repeat across runs."""
    idx = u.abs().argmax(0)
    s = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    return u * torch.where(s == 0, torch.ones_like(s), s)


def joint_basis(deltas: Sequence[torch.Tensor], rank: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r (out, r), S_r (r,)) of the thin SVD of [dW_1 ... dW_N] (each (out, in)), float32 on `device`.

    The SVD runs in float32; a float32 SVD that does not converge is redone in float64."""
    d = torch.cat([t.to(device=device, dtype=torch.float32) for t in deltas], dim=1)
    try:
        u, s, _ = torch.linalg.svd(d, full_matrices=False)
    except RuntimeError:  # torch.linalg.LinAlgError: ill-conditioned in float32
        u, s, _ = torch.linalg.svd(d.double(), full_matrices=False)
    return _fix_signs(u[:, :rank]).float().contiguous(), s[:rank].float().contiguous()


def coefficients(basis: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """C = U_r^T dW: (r, in) coefficient block of one task matrix (= S_r V_{i,r}^T for an expert of the basis)."""
    return basis.T @ delta.to(device=basis.device, dtype=torch.float32)


class TaskCodeReader:
    """Coefficient blocks of the experts' task matrices, one tensor name at a time.

    Args:
        base: the base checkpoint store (anything with `get(name)` and `shape(name)`).
        experts: the experts' stores (at least one), fine-tuned from `base`.
        rank_fraction, rank: truncation (see `task_rank`); neither = full rank.
        device: where the SVD runs.
    """

    def __init__(self, base, experts: Sequence, rank_fraction: float | None = None, rank: int | None = None,
                 device: str | torch.device = "cpu"):
        if len(experts) < 1:
            raise LsMergeError("task codes need at least one expert besides the base; list the fine-tuned models.")
        self.base, self.experts = base, list(experts)
        self.rank_fraction, self.rank = check_rank_fraction(rank_fraction), check_fixed_rank(rank)
        task_rank(1, self.rank_fraction, self.rank)  # refuses both at once
        self.device = device
        self._last: tuple[str, list[torch.Tensor]] | None = None

    def code_shape(self, name: str) -> tuple[int, int]:
        """(r, in) of every expert's coefficient block of the 2-d tensor `name`."""
        shape = tuple(self.base.shape(name))
        r = task_rank(joint_rank(shape, len(self.experts)), self.rank_fraction, self.rank)
        return r, int(math.prod(shape[1:]))

    def codes(self, name: str) -> list[torch.Tensor]:
        """[C_1 ... C_N], each (r, in) float32 on the CPU (the last name's are kept for the next call)."""
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        deltas = task_matrices(self.base.get(name), [e.get(name) for e in self.experts], name)
        u, _ = joint_basis(deltas, self.code_shape(name)[0], self.device)
        out = [coefficients(u, d).cpu() for d in deltas]
        self._last = (name, out)
        return out

    def input_digests(self) -> dict:
        """{"base": digest, "experts": [digest, ...]} (`lsmerge.io.provenance.input_digests`, sha256 per file): what
        the codes belong to. A fit stores it under `TASK_CODE_INPUTS` in the data hyper-parameters, so a merge
        through the VAE (`lsmerge.codecs.task_code_vae`) can refuse another base or other experts."""
        return {"base": input_digests([self.base.path])[0], "experts": [input_digests([e.path])[0] for e in self.experts]}


def task_code_source(base: str, stores: Sequence, selection: Sequence[Sequence[str]], rank_fraction: float | None,
                     device: str | torch.device = "cpu") -> tuple[TaskCodeReader, list[list[str]]]:
    """The reader of `WeightChunkDataModule`'s ``source: task_codes`` and its selection.

    `stores` are the experts (data.checkpoints), `selection` their selected names; `base` the model
    reference they were fine-tuned from. Keeps the 2-d tensors; LsMergeError when the experts select
    different tensors, or a tensor is missing from or shaped differently in the base."""
    if not base:
        raise LsMergeError("data.source task_codes codes each expert as W_i - W_base: set data.base (the model the "
                           "checkpoints were fine-tuned from).")
    check_rank_fraction(rank_fraction, "data.rank_fraction")
    base_store = open_checkpoint(resolve_model(base))
    if any(str(s.path) == str(base_store.path) for s in stores):
        raise LsMergeError(f"data.base {base_store.path} is also listed in data.checkpoints; its task matrix would be zero. "
                           "Remove it from the checkpoints.")
    names = [n for n in selection[0] if len(stores[0].shape(n)) >= 2]
    for s, sel in zip(stores, selection):
        if [n for n in sel if len(s.shape(n)) >= 2] != names:
            raise LsMergeError(f"{s.path} selects other tensors than {stores[0].path}: task codes need experts of one base "
                               "with the same tensors.")
        for n in names:
            if n not in base_store.names or tuple(base_store.shape(n)) != tuple(s.shape(n)):
                got = tuple(base_store.shape(n)) if n in base_store.names else "no such tensor"
                raise LsMergeError(f"tensor {n!r} is {tuple(s.shape(n))} in {s.path} but {got} in base {base_store.path}: "
                                   "the checkpoints were not fine-tuned from this base. Give the base they share.")
    if not names:
        raise LsMergeError("the selection holds no 2-d tensor; task codes exist for matrices only (widen data.kinds).")
    return TaskCodeReader(base_store, stores, rank_fraction=rank_fraction, device=device), [list(names) for _ in stores]
