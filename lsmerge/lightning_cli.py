"""`lsmerge fit / validate / test`: LightningCLI over `WeightVAE` and `WeightChunkDataModule`.

The DataModule's sizes (chunk_size, tokens_per_sample, num_layers, num_sources), the trained
tensor table, family, layout and normalisation are linked into the model at instantiation,
so a config sets them once under `data:`. Defaults: TensorBoard logs and `config.yaml` under
`checkpoints/vae/tb/version_N/`, checkpoints under that version's `checkpoints/` unless the
recipe sets a `ModelCheckpoint` (the shipped recipes write `checkpoints/vae/<recipe>/last.ckpt`).
`WeightFigures` is always added (it does nothing without a TensorBoard logger).

Resume: ``lsmerge fit --config <run>/config.yaml --ckpt_path <run>/last.ckpt`` (the stage and
beta of the curriculum, the optimizer and the global step continue).
"""

from __future__ import annotations

import sys
import warnings

from lightning.pytorch.cli import LightningCLI

from lsmerge.callbacks.figures import WeightFigures
from lsmerge.data.weight_datamodule import WeightChunkDataModule
from lsmerge.errors import LsMergeError
from lsmerge.models.weight_vae import WeightVAE

LINKS = (
    "chunk_size",
    "tokens_per_sample",
    "num_layers",
    "num_sources",
    "tensors",
    "family",
    "layout",
    "normalization",
    ("slog_kappa", "slog_kappa"),
)


class VAELightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for link in LINKS:
            src, dst = link if isinstance(link, tuple) else (link, link)
            parser.link_arguments(f"data.{src}", f"model.{dst}", apply_on="instantiate")


def run_lightning_cli(args: list[str]) -> None:
    """Run LightningCLI with `args` (e.g. ["fit", "--config", "configs/vae/tiny.yaml"])."""
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    try:
        VAELightningCLI(
            WeightVAE,
            WeightChunkDataModule,
            args=args,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "default_root_dir": "checkpoints/vae",
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "checkpoints/vae", "name": "tb"},
                },
                "callbacks": [WeightFigures()],
            },
            parser_kwargs={"prog": f"lsmerge {args[0]}" if args else "lsmerge"},
        )
    except Exception as e:  # noqa: BLE001 - only a user error is reported; anything else is re-raised
        cause = user_error(e)
        if cause is None:
            raise
        print(f"lsmerge {args[0] if args else ''}: error: {cause}", file=sys.stderr)
        raise SystemExit(1) from None


def user_error(e: BaseException | None) -> LsMergeError | None:
    """The LsMergeError behind `e`: itself, or one jsonargparse wrapped while instantiating a
    class from the config (a callback's init_args, say)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, LsMergeError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
