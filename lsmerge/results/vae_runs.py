"""Derived `lsmerge fit` configs for the VAE runs of the results table.

A run is the shipped recipe with four things changed: the selection (all MLP tensors), the
latent size (compression ratio = chunk_size / latent_dim), the wall-clock budget and the
output folder; a run's `overrides` (dotted keys, e.g. `model.output_weighting`) are set last. The derived YAML is written into the run folder, so the table can name the
exact config that produced each row.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from lsmerge.errors import LsMergeError


def latent_dim_for(chunk_size: int, ratio: float) -> int:
    """latent_dim giving compression ratio chunk_size / latent_dim closest to `ratio`."""
    if ratio <= 0:
        raise ValueError(f"compression ratio must be positive, got {ratio}")
    return max(1, round(chunk_size / ratio))


def derive_fit_config(base: dict, *, ratio: float, minutes: float, out_dir: str,
                      steps_per_minute: int = 500, layers=None, overrides: dict | None = None) -> dict:
    """The base recipe (a parsed YAML dict) turned into one run of the table.

    max_steps is set to minutes * steps_per_minute so the cosine learning-rate schedule
    finishes near the time budget (max_time still stops the run at the budget)."""
    cfg = copy.deepcopy(base)
    chunk_size = int(cfg["data"]["chunk_size"])
    cfg["data"]["layers"] = layers
    cfg["model"]["latent_dim"] = latent_dim_for(chunk_size, ratio)
    total = int(round(minutes * 60))
    trainer = cfg["trainer"]
    trainer["max_time"] = f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
    trainer["max_steps"] = max(1, int(minutes * steps_per_minute))
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": out_dir, "name": "tb"},
    }
    trainer["callbacks"] = [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": out_dir, "filename": "step{step}", "save_last": True,
                      "auto_insert_metric_name": False},
    }]
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise LsMergeError(f"VAE run override {dotted!r}: the base config has no section {key!r}; "
                                   f"name a key under one of {sorted(k for k, v in node.items() if isinstance(v, dict))}.")
            node = node[key]
        node[leaf] = value
    return cfg


def write_fit_config(base_yaml: str | Path, out_dir: str | Path, **kw) -> Path:
    """Write the derived config to `<out_dir>/fit.yaml` and return its path."""
    base = yaml.safe_load(Path(base_yaml).read_text())
    out_dir = Path(out_dir)
    cfg = derive_fit_config(base, out_dir=str(out_dir), **kw)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "fit.yaml"
    header = f"# derived from {base_yaml} by lsmerge.results.vae_runs (ratio {kw.get('ratio')}, {kw.get('minutes')} min)\n"
    path.write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    return path
