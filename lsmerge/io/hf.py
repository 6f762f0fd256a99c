"""Hugging Face checkpoints by name: resolve a model reference, load a causal LM or its
tokenizer (safetensors only, no remote code), name an output folder.

A model reference is a folder path, a name under `checkpoints/base/` or `checkpoints/merged/`
(or beside a recipe file), or `tiny[@SEED]:DIR`, the tiny random Llama of `lsmerge.io.tiny`
created in DIR on first use. An existing file is returned as it is, so the reader of the command
names what is wrong with it (a GGUF, a pickle).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from lsmerge.errors import LsMergeError

MODEL_ROOTS = ("checkpoints/base", "checkpoints/merged")
#: files that define a vocabulary: equal files mean equal token ids
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt")
#: every file of a saved tokenizer
TOKENIZER_FILES = VOCAB_FILES + ("tokenizer_config.json", "special_tokens_map.json")
_TINY = re.compile(r"tiny(?:@(?P<seed>\d+))?:(?P<dir>.+)")


def resolve_model(ref: str | os.PathLike, extra_root: Path | None = None) -> Path:
    """The checkpoint folder of a model reference (see module doc), resolved; LsMergeError if none,
    naming the command that makes it (`lsmerge fetch`, `scripts/make_experts.py` for `*-expert*`)."""
    text = str(ref)
    tiny = _TINY.fullmatch(text)
    if tiny is not None:
        from lsmerge.io.tiny import make_tiny_llama

        return make_tiny_llama(tiny["dir"], seed=int(tiny["seed"] or 0))
    given = Path(text).expanduser()
    if given.is_file():  # the reader of the command names what is wrong with it (GGUF, pickle, ...)
        return given.resolve()
    candidates = [given] + [Path(r) / text for r in MODEL_ROOTS]
    if extra_root is not None:
        candidates.append(extra_root / text)
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    avail = sorted(p.name for r in MODEL_ROOTS if Path(r).is_dir() for p in Path(r).iterdir() if p.is_dir())
    raise LsMergeError(
        f"unknown model {text!r}: no such folder (also looked in {', '.join(MODEL_ROOTS)}). "
        + (f"Available: {', '.join(avail)}. " if avail else "")
        + _how_to_make(text)
    )


def _how_to_make(ref: str) -> str:
    """The command that makes a missing model: the experts script for `*-expert*` names, else fetch."""
    name = Path(ref).name
    if "-expert" in name:
        return (f"{name!r} is a fine-tuned expert: make it with `python scripts/make_experts.py` (LoRA experts of "
                "SmolLM2-135M-Instruct, merged into checkpoints/base/smollm2-135m-expert and -expert2; needs "
                "`lsmerge fetch` first).")
    return ("Fetch the base models with `lsmerge fetch` (smollm2-135m-instruct, gemma-3-270m), convert a GGUF with "
            "`lsmerge import-gguf`, make the experts with `python scripts/make_experts.py`, or give a checkpoint folder.")


def resolve_models(refs: list[str] | None, hint: str = "") -> list[Path]:
    """The folders of a command's `models` list: at least one, none twice (`hint` ends the message)."""
    if not refs:
        raise LsMergeError("no models given: set models: [A, B, ...].")
    paths = [resolve_model(r) for r in refs]
    if len(set(paths)) != len(paths):
        raise LsMergeError(f"a model is listed twice in models ({[str(p) for p in paths]}); list each once{hint}.")
    return paths


def auto_name(models: list[Path], method: str, label: str, layers: list[int] | None, kinds: list[str] | None) -> str:
    """Output folder name from inputs and parameters, e.g. `A_B_linear0.70_layers1-2-20_qkv`."""
    name = "_".join(p.name for p in models) + f"_{method}{label}"
    if layers:
        name += "_layers" + "-".join(str(i) for i in layers)
    if kinds:
        name += "_" + "-".join(kinds)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:200]


def load_causal_lm(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu", *,
                   safetensors_only: bool = True):
    """A local Hugging Face causal LM in eval mode (no remote code). `safetensors_only=False` also
    takes `pytorch_model*.bin` weights, which transformers reads with `torch.load(weights_only=True)`."""
    from transformers import AutoModelForCausalLM

    from lsmerge.torch_options import resolve_device, resolve_dtype

    torch_dtype = resolve_dtype(dtype)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise LsMergeError(f"{path} is not a checkpoint folder (no config.json); give a Hugging Face model folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, use_safetensors=True if safetensors_only else None,
                                                     local_files_only=True)
    except OSError as e:
        raise LsMergeError(f"no loadable weights in {path} ({e}); lsmerge reads safetensors"
                           + ("" if safetensors_only else " or pytorch_model*.bin")
                           + ". Re-save the model with save_pretrained(safe_serialization=True).") from None
    return model.to(resolve_device(device)).eval()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in a checkpoint folder; LsMergeError if there is none."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise LsMergeError(f"no usable tokenizer in {path} ({e}); copy the tokenizer files into the folder") from None
    return tok
