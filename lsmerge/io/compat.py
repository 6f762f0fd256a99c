"""Can these checkpoints be merged tensor by tensor? Family, tensor, tokenizer and value checks.

Each check raises one `LsMergeError` naming the checkpoints and the fix, before any output is
written. `hint` arguments let a command say what to do instead (e.g. use `method: hetero`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.hf import VOCAB_FILES
from lsmerge.io.store import CheckpointStore


def model_family(config: dict) -> str | None:
    """`model_type` of a config.json, or of its `text_config` (multimodal wrappers)."""
    text = config.get("text_config") or {}
    return config.get("model_type") or text.get("model_type")


def same_family(a: str | None, b: str | None) -> bool:
    """Equal model types up to a `_text` suffix (gemma3 == gemma3_text)."""
    return (a or "").removesuffix("_text") == (b or "").removesuffix("_text")


def check_same_family(stores: Sequence[CheckpointStore], hint: str) -> None:
    """All stores of one model family."""
    ref = stores[0]
    for s in stores[1:]:
        if not same_family(model_family(s.config), model_family(ref.config)):
            raise LsMergeError(f"different architectures: {ref.path} is {model_family(ref.config)!r} but {s.path} is "
                               f"{model_family(s.config)!r}. {hint}")


def check_same_tensors(stores: Sequence[CheckpointStore], hint: str) -> None:
    """All stores hold the same tensor names with the same shapes."""
    ref = stores[0]
    for s in stores[1:]:
        if set(s.names) != set(ref.names):
            missing = sorted(set(ref.names) ^ set(s.names))[:3]
            raise LsMergeError(f"{s.path} and {ref.path} hold different tensors (e.g. {missing}). {hint}")
        for n in ref.names:
            if s.shape(n) != ref.shape(n):
                raise LsMergeError(f"tensor {n} has shape {list(ref.shape(n))} in {ref.path} but {list(s.shape(n))} "
                                   f"in {s.path}. {hint}")


def check_same_architecture(stores: Sequence[CheckpointStore], hint: str) -> None:
    """One family, the same tensors and shapes: what a tensor-by-tensor merge needs."""
    check_same_family(stores, hint)
    check_same_tensors(stores, hint)


def vocab_size(config: dict) -> int | None:
    return config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")


def _vocab_digests(path: Path) -> dict[str, str]:
    return {f: hashlib.sha256((path / f).read_bytes()).hexdigest() for f in VOCAB_FILES if (path / f).exists()}


def check_tokenizers(stores: Sequence[CheckpointStore], hint: str) -> None:
    """One vocabulary: equal vocab_size, and vocabulary files present in several inputs equal."""
    sizes = {s.path: vocab_size(s.config) for s in stores}
    if len({v for v in sizes.values() if v is not None}) > 1:
        raise LsMergeError(f"the models have different vocabularies ({ {str(k): v for k, v in sizes.items()} }); "
                           f"a homogeneous merge needs one tokenizer. {hint}")
    digests = [_vocab_digests(s.path) for s in stores]
    for f in VOCAB_FILES:
        seen = {str(s.path): d[f] for s, d in zip(stores, digests) if f in d}
        if len(set(seen.values())) > 1:
            raise LsMergeError(f"{f} differs between {', '.join(seen)}: the models use different tokenizers, so their "
                               f"embeddings do not line up. {hint}")


def check_finite(t: torch.Tensor, name: str, store: CheckpointStore) -> torch.Tensor:
    """`t` itself when it holds no NaN / Inf (non-float tensors pass)."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise LsMergeError(f"tensor {name!r} of {store.path} holds NaN or Inf values. Repair or re-export that checkpoint.")
    return t
