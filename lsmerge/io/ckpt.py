"""The one reader of Lightning `.ckpt` files in lsmerge: local files only, never a pickle.

Every `.ckpt` lsmerge reads goes through `load_lightning_checkpoint` (``fit / validate / test
--ckpt_path`` checks the file with it before anything is created; `export` and ``merge --codec``
rebuild the VAE from what it returns). The file is read with ``torch.load(weights_only=True)``,
so no class is unpickled and no code in the file runs; what lsmerge itself puts into a
checkpoint (hyper-parameters, the beta curriculum, the random-number states, the training
sampler's position) is plain tensors, lists, dicts, numbers and strings, which that loader takes.

Each way a path can be wrong is one `LsMergeError` naming the fix: a URL (refused: download it
and pass the local file), a missing file, a truncated or corrupt file, a pickle that needs
globals outside the weights-only allow-list (refused, never run), a file that is not a Lightning
checkpoint of the expected model (`hparams` names the hyper-parameters it must carry).
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from lsmerge.errors import LsMergeError

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_UNSAFE = ("Unsupported global", "GLOBAL")


def is_url(path: str | os.PathLike) -> bool:
    """True for `scheme://...` (http, https, s3, gs, file, ...)."""
    return bool(_URL.match(str(path)))


def check_ckpt_path(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """The local `Path` of an existing checkpoint file; LsMergeError for a URL or a missing file."""
    if is_url(path):
        raise LsMergeError(
            f"{what} {path} is a URL; lsmerge reads checkpoints from local files only. "
            "Download it and pass the local file."
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise LsMergeError(f"{what} {p} does not exist. Check the path (train one with `lsmerge fit --config configs/vae/<recipe>.yaml`).")
    if not p.is_file():
        raise LsMergeError(f"{what} {p} is not a file; pass the `.ckpt` file itself (e.g. {p}/last.ckpt).")
    return p


def load_lightning_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    hparams: tuple[str, ...] = (),
    what: str = "checkpoint",
    model: str = "the model",
) -> dict:
    """The checkpoint dict of the local Lightning `.ckpt` at `path`, read with
    ``torch.load(weights_only=True)``; LsMergeError for a URL, a missing, truncated or corrupt
    file, a pickle that needs unsafe globals, or a dict without ``state_dict`` and the
    ``hyper_parameters`` named in `hparams` (`model` names what wrote it, for the message)."""
    p = check_ckpt_path(path, what)
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if any(s in str(e) for s in _UNSAFE):
            raise LsMergeError(
                f"{what} {p} holds pickled objects that a weights-only load refuses ({_unsafe_line(e)}); lsmerge never "
                f"runs code from a checkpoint. Pass a checkpoint written by {model}, from a source you trust."
            ) from None
        raise LsMergeError(f"{what} {p} is corrupt or not a PyTorch checkpoint ({_first_line(e)}). {_fix(model)}") from None
    except Exception as e:  # noqa: BLE001 - a truncated zip, a bad magic number, an EOF: refuse the file
        raise LsMergeError(
            f"{what} {p} is truncated or corrupt ({type(e).__name__}: {_first_line(e)}). {_fix(model)}"
        ) from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    missing = [k for k in hparams if not isinstance(hp, dict) or k not in hp]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(hp, dict) or missing:
        detail = "no state_dict / hyper_parameters" if not isinstance(hp, dict) or "state_dict" not in ckpt else (
            f"hyper_parameters lack {', '.join(missing)}")
        raise LsMergeError(f"{what} {p} is not a Lightning checkpoint of {model} ({detail}). {_fix(model)}")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def _unsafe_line(e: BaseException) -> str:
    """The line of torch's message that names the refused global (e.g. `GLOBAL posix.system`)."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    hit = [ln for ln in lines if any(s in ln for s in _UNSAFE)]
    return (hit[0] if hit else lines[0] if lines else type(e).__name__)[:200]


def _fix(model: str) -> str:
    return f"Pass a complete checkpoint written by {model} (e.g. <run>/last.ckpt)."
