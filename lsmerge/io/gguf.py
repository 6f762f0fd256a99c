"""GGUF import: a `.gguf` file (any quantisation transformers can dequantise) -> an HF checkpoint.

transformers does the reading: `AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)`
dequantises every tensor (Q4_0/Q4_1/Q4_K/Q8_0/... -> float32, then the requested dtype) and maps
llama.cpp's tensor names to the HF ones (undoing llama.cpp's q/k row permutation), and
`AutoTokenizer.from_pretrained(folder, gguf_file=name)` rebuilds the tokenizer from the file's
metadata. The loaded model carries a GGUF quantizer and refuses `save_pretrained`, so we write
it ourselves: the config without `quantization_config`, the generation config and the tokenizer
files go into a staging folder that `CheckpointWriter` copies as side files, and the state dict
is streamed through the writer (atomic, sharded, byte-identical for the same input). With tied
embeddings (`config.tie_word_embeddings`) `lm_head.weight` is not written (HF convention: it is
re-tied to `model.embed_tokens.weight` on load).

The result loads with `AutoModelForCausalLM.from_pretrained(out)` and gives exactly the logits of
transformers' own GGUF load in the same dtype.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from lsmerge.errors import LsMergeError
from lsmerge.torch_options import resolve_dtype
from lsmerge.io.provenance import file_sha256
from lsmerge.io.writer import CheckpointWriter, check_output_dir

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "bfloat16", "float16")
# Keys that transformers' own config writer adds and that name the conversion, not the model.
_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path")


def parse_dtype(dtype: str) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' -> torch dtype (LsMergeError otherwise)."""
    if str(dtype).removeprefix("torch.") not in DTYPES:
        raise LsMergeError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}.")
    return resolve_dtype(dtype)


def check_gguf_file(gguf: str | os.PathLike) -> Path:
    """Resolve `gguf` and check it is a readable GGUF file whose architecture transformers supports.

    Reads only the header and metadata (tensor data stays on disk, memory-mapped). Raises
    LsMergeError naming the problem and the fix.
    """
    path = Path(gguf).expanduser().resolve()
    if not path.exists():
        raise LsMergeError(f"GGUF file {path} does not exist; check the --gguf path.")
    if not path.is_file():
        raise LsMergeError(f"{path} is not a file; --gguf must name a .gguf file, not a folder.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise LsMergeError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            "pass a .gguf model file (llama.cpp format). For a Hugging Face folder no import is needed."
        )
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(path)
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except KeyError:
        raise LsMergeError(f"{path} has no 'general.architecture' key; it is not a model GGUF file.") from None
    except Exception as e:  # truncated or corrupted header / tensor table
        raise LsMergeError(f"cannot read GGUF file {path} ({type(e).__name__}: {e}); the file is truncated or corrupted, fetch it again.") from None
    names = {arch, arch.replace("moe", "_moe"), arch.replace("-", "_")}
    if arch.startswith("t5"):
        names.add("t5")
    if not names & set(GGUF_SUPPORTED_ARCHITECTURES):
        raise LsMergeError(
            f"GGUF architecture {arch!r} of {path} is not supported by transformers' GGUF loader; "
            f"supported: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}."
        )
    return path


def load_gguf_model(gguf: str | os.PathLike, dtype: str = "float32"):
    """transformers' own GGUF load: `(model, tokenizer)`, dequantised to `dtype`, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(gguf).expanduser().resolve()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=parse_dtype(dtype))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tokenizer


def _plain_config(model, dtype: torch.dtype):
    """The model's config as a fresh config object: no quantizer, `dtype` recorded."""
    from transformers import AutoConfig

    d = model.config.to_dict()
    for key in _DROP_CONFIG_KEYS:
        d.pop(key, None)
    model_type = d.pop("model_type")
    config = AutoConfig.for_model(model_type, **d)
    config.architectures = [type(model).__name__]
    config.dtype = dtype
    return config


def _write_side_files(model, tokenizer, config, staging: Path) -> None:
    """config.json, generation_config.json and tokenizer files into `staging`, free of paths and times."""
    config.save_pretrained(staging)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    # transformers records where a tokenizer was loaded from; that would put a temp path in the output.
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = staging / name
        if p.exists():
            d = json.loads(p.read_text())
            for key in ("name_or_path", "_name_or_path", "vocab_file", "is_local", "local_files_only"):
                d.pop(key, None)
            p.write_text(json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def import_gguf(
    *,
    gguf: str,
    out: str,
    dtype: str = "float32",
    overwrite: bool = False,
    max_shard_size: str = "2GB",
    progress: bool = True,
) -> Path:
    """Convert a .gguf file into a Hugging Face checkpoint folder with tokenizer.

    Every tensor is dequantised by transformers (Q4/Q5/Q6/Q8 K-quants and legacy quants, F16,
    BF16, F32) and stored as safetensors in `dtype`; the result loads with
    `AutoModelForCausalLM.from_pretrained(out)` and gives the same logits as transformers' own
    GGUF load. Tied embeddings stay tied (no separate lm_head.weight).

    Args:
        gguf: path of the .gguf file.
        out: output checkpoint folder (must not exist or be empty, unless overwrite).
        dtype: float32, bfloat16 or float16.
        overwrite: replace a non-empty output folder (only once the new one is complete).
        max_shard_size: largest safetensors shard, e.g. '2GB' or '500MiB'.
        progress: lines and a per-tensor bar on stderr (reading, writing, done).

    Returns:
        The output folder.
    """
    torch_dtype = parse_dtype(dtype)
    path = check_gguf_file(gguf)
    check_output_dir(out, [path], overwrite)
    from tqdm.auto import tqdm

    start = time.perf_counter()
    say = (lambda line: tqdm.write(f"import-gguf: {line}", file=sys.stderr)) if progress else (lambda line: None)
    say(f"reading {path.name} ({path.stat().st_size / 2**20:.0f} MiB): checksum, then dequantise to {dtype}")
    sha = file_sha256(path)

    model, tokenizer = load_gguf_model(path, dtype)
    config = _plain_config(model, torch_dtype)
    provenance = {"command": "import-gguf", "gguf": path.name, "gguf_sha256": sha, "dtype": dtype}
    with tempfile.TemporaryDirectory(prefix="lsmerge-gguf-") as staging:
        staging = Path(staging)
        _write_side_files(model, tokenizer, config, staging)
        with CheckpointWriter(
            out, source=staging, inputs=[path], max_shard_size=max_shard_size, overwrite=overwrite, config=provenance,
            nonfinite_hint=f"{path.name} holds NaN / Inf, or its values overflow {dtype}: try --dtype float32 or repair the file.",
        ) as writer:
            state, written = model.state_dict(), 0
            for name in tqdm(state, desc="import-gguf write", unit="tensor", file=sys.stderr, disable=not progress,
                             leave=False, dynamic_ncols=True):  # fmt: skip
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue
                writer.add(name, state[name].to(torch_dtype))
                written += 1
    say(f"wrote {writer.out} ({written} tensors, {dtype}) in {time.perf_counter() - start:.1f} s")
    return writer.out
