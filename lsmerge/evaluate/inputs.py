"""Checks and paths shared by the evaluate commands (perplexity and lm-eval tasks): a model folder
fit to score, where results go, and which checkpoints share token ids."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lsmerge.errors import LsMergeError
from lsmerge.io.hf import TOKENIZER_FILES
from lsmerge.io.store import open_checkpoint


def check_model_dir(path: Path) -> None:
    """A Hugging Face checkpoint folder with weights, config.json and tokenizer files, or one LsMergeError."""
    if not path.is_dir():
        raise LsMergeError(
            f"model folder {path} does not exist. Check the path, or run `lsmerge fetch` to get the base models."
        )
    open_checkpoint(path)  # raises on missing or broken weights
    if not (path / "config.json").exists():
        raise LsMergeError(f"{path} has no config.json; evaluate needs a Hugging Face checkpoint folder with its config.")
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        raise LsMergeError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); each model is evaluated with its own "
            "tokenizer. Copy them from the model it was derived from."
        )


def output_paths(out: str | os.PathLike, stem: str = "perplexity") -> tuple[Path, Path]:
    """`out` as a folder (existing, or written with a trailing slash) -> `<out>/<stem>.{json,csv}`;
    otherwise a file stem -> `<out>.json` and `<out>.csv` (a `.json` / `.csv` suffix is dropped)."""
    text = str(out)
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / f"{stem}.json", path / f"{stem}.csv"
    if path.suffix in (".json", ".csv"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".json"), path.with_name(path.name + ".csv")


def tokenizer_key(path: Path) -> str:
    """sha256 over the tokenizer files of a checkpoint: equal keys give equal token ids."""
    h = hashlib.sha256()
    for f in TOKENIZER_FILES:
        if (path / f).exists():
            h.update(f.encode() + b"\0" + (path / f).read_bytes())
    return h.hexdigest()
