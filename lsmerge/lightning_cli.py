"""`lsmerge fit / validate / test`: LightningCLI over `WeightVAE` and `WeightChunkDataModule`.

The DataModule's sizes (chunk_size, tokens_per_sample, num_layers, num_sources), the trained
tensor table, family, layout and normalisation are linked into the model at instantiation,
so a config sets them once under `data:`. Defaults: TensorBoard logs and `config.yaml` under
`checkpoints/vae/tb/version_N/`, checkpoints under that version's `checkpoints/` unless the
recipe sets a `ModelCheckpoint` (the shipped recipes write `checkpoints/vae/<recipe>/last.ckpt`).
`WeightFigures` is always added (it does nothing without a TensorBoard logger), and so is
`ProgressLines` (a line on stderr at most every 10 s while Lightning's progress bar is off;
`--progress false` turns off both).

Resume: ``lsmerge fit --config <run>/config.yaml --ckpt_path <run>/last.ckpt`` continues bit for
bit (the curriculum's stage and beta, the optimizer, the global step, the random-number states
and the training sampler's position are in every checkpoint). `--ckpt_path` is a local file
read with ``weights_only=True`` (lsmerge.io.ckpt): a URL, a missing, truncated or foreign file
is one error before any folder is made. A fit whose checkpoint folder already holds `.ckpt`
files is refused (Lightning would write `last-v1.ckpt`) unless it resumes or `--overwrite true`
replaces them.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from lsmerge.callbacks.figures import WeightFigures
from lsmerge.callbacks.progress import ProgressLines
from lsmerge.codecs.vae import read_vae_checkpoint
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
    "importance_digest",
)


_RECIPES = ("Recipes: configs/vae/tiny.yaml (tiny random models, seconds), configs/vae/tiny_baselines.yaml (the same "
            "with weight-space baselines scored beside training), configs/vae/smollm2_mlp.yaml (SmolLM2-135M's MLP "
            "weights; needs `lsmerge fetch`).")
_RUN = ("Run `lsmerge {name} --config configs/vae/<recipe>.yaml`; --print_config shows the whole configuration. "
        "lsmerge's own options come first below: --model.* (the WeightVAE: latent size, layers, loss, beta "
        "curriculum) and --data.* (WeightChunkDataModule: checkpoints, tensor kinds, chunk size); the --trainer.* "
        "options after them are Lightning's.")
SUMMARIES = {
    "fit": ("Train lsmerge's weight VAE (a transformer beta-VAE over chunks of model weights) on the checkpoints "
            "named under data:, writing TensorBoard logs and config.yaml under checkpoints/vae/tb/version_N/ and "
            "checkpoints (the shipped recipes: checkpoints/vae/<recipe>/last.ckpt) for `lsmerge merge --codec` and "
            "`lsmerge export --vae`. " + _RECIPES + " " + _RUN.format(name="fit") + " Resume an interrupted fit "
            "bit for bit with --config <run>/config.yaml --ckpt_path <dir>/last.ckpt; a fit into a folder that "
            "already holds checkpoints is refused unless it resumes or --overwrite true replaces them."),
    "validate": ("Validate a trained lsmerge weight VAE (--ckpt_path CKPT) on the validation windows of its "
                 "recipe's data. " + _RECIPES + " " + _RUN.format(name="validate")),
    "test": ("Test a trained lsmerge weight VAE (--ckpt_path CKPT) on the test windows of its recipe's data. "
             + _RECIPES + " " + _RUN.format(name="test")),
}


class VAELightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for link in LINKS:
            src, dst = link if isinstance(link, tuple) else (link, link)
            parser.link_arguments(f"data.{src}", f"model.{dst}", apply_on="instantiate")
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="fit: replace the .ckpt files of an earlier run in the checkpoint folder (without it, a fit into a "
                 "folder that holds checkpoints is refused unless --ckpt_path resumes one); validate / test ignore it.",
        )
        parser.add_argument(
            "--progress", type=bool, default=True,
            help="show progress: Lightning's bar, or (with --trainer.enable_progress_bar false) a line on stderr at "
                 "most every 10 s; false turns both off.",
        )

    def _add_subcommands(self, parser, **kwargs) -> None:
        """Each subcommand's help starts with lsmerge's summary, names the recipe configs, and lists the
        model and data options before Lightning's trainer options; its usage line reads `lsmerge fit`."""
        super()._add_subcommands(parser, **kwargs)
        for name, sub in self._subcommand_parsers.items():
            sub.prog = f"lsmerge {name}"
            sub.usage = (f"lsmerge {name} --config configs/vae/<recipe>.yaml [--print_config]\n"
                         f"       [--model.OPTION V] [--data.OPTION V] [--trainer.OPTION V] [--ckpt_path CKPT]"
                         + (" [--overwrite true]" if name == "fit" else ""))
            sub.description = SUMMARIES.get(name, sub.description)
            groups = sub._action_groups
            first = [g for g in groups if g.title and g.title.startswith(("Transformer beta-VAE", "Selected weight tensors"))]
            sub._action_groups = groups[:1] + first + [g for g in groups[1:] if g not in first]

    def _parse_ckpt_path(self) -> None:
        """Check `--ckpt_path` (local, complete, a WeightVAE checkpoint, weights-only) before
        Lightning reads its hyper-parameters and before any class, folder or file is made."""
        sub = self.config.get("subcommand")
        if sub:
            cfg = self.config[sub]
            if cfg.get("weights_only") is False:
                raise LsMergeError("lsmerge loads checkpoints with weights_only=True only; drop --weights_only false.")
            if cfg.get("ckpt_path"):
                read_vae_checkpoint(cfg["ckpt_path"], what="--ckpt_path")
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if cfg.get("progress") is False:
            cfg["trainer"]["enable_progress_bar"] = False
            for cb in self.trainer_defaults.get("callbacks", []):
                if isinstance(cb, ProgressLines):
                    cb.enabled = False
        if self.subcommand == "fit":
            cfg = self.config["fit"]
            check_checkpoint_dirs(checkpoint_dirs(cfg.get("trainer")), resume=bool(cfg.get("ckpt_path")),
                                  overwrite=bool(cfg.get("overwrite")))

    def after_instantiate_classes(self) -> None:
        if self.subcommand == "fit" and self.config["fit"].get("ckpt_path"):
            for cb in self.trainer.checkpoint_callbacks:  # a resumed run replaces its own files: last.ckpt, never last-v1
                cb._enable_version_counter = False

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kw = super()._prepare_subcommand_kwargs(subcommand)
        if "weights_only" in self._subcommand_method_arguments[subcommand]:
            kw["weights_only"] = True  # whatever Lightning's default: never unpickle a checkpoint
        return kw


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
                "callbacks": [WeightFigures(), ProgressLines()],
            },
            parser_kwargs={"prog": f"lsmerge {args[0]}" if args else "lsmerge"},
        )
    except Exception as e:  # noqa: BLE001 - only a user error is reported; anything else is re-raised
        cause = user_error(e)
        if cause is None:
            raise
        print(f"lsmerge {args[0] if args else ''}: error: {cause}", file=sys.stderr)
        raise SystemExit(1) from None


def checkpoint_dirs(trainer_cfg) -> list[Path]:
    """The folders the fit's ModelCheckpoint callbacks write to, read from the parsed config:
    each one's `dirpath`, or `<default_root_dir>/checkpoints` for Lightning's default checkpoint
    when no logger gives it a fresh version folder."""
    if trainer_cfg is None:
        return []
    callbacks = trainer_cfg.get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    dirs, has_checkpoint = [], False
    for cb in callbacks:
        cls = cb.get("class_path", "") if hasattr(cb, "get") else type(cb).__name__
        if str(cls).rsplit(".", 1)[-1] != "ModelCheckpoint":
            continue
        has_checkpoint = True
        args = cb.get("init_args") if hasattr(cb, "get") else None
        dirpath = args.get("dirpath") if args is not None else getattr(cb, "dirpath", None)
        if dirpath:
            dirs.append(Path(str(dirpath)))
    if not has_checkpoint and trainer_cfg.get("enable_checkpointing") is not False and trainer_cfg.get("logger") in (False, None):
        dirs.append(Path(str(trainer_cfg.get("default_root_dir") or ".")) / "checkpoints")
    return dirs


def check_checkpoint_dirs(dirs: list[Path], resume: bool, overwrite: bool) -> None:
    """Refuse a fit whose checkpoint folder already holds `.ckpt` files (Lightning would write
    `last-v1.ckpt` beside the old `last.ckpt`), unless it resumes (`--ckpt_path`) or `overwrite`
    is set, in which case the old `.ckpt` files are removed first."""
    if resume:
        return
    for d in dirs:
        old = sorted(d.glob("*.ckpt")) if d.is_dir() else []
        if not old:
            continue
        if not overwrite:
            shown = ", ".join(p.name for p in old[:4]) + (", ..." if len(old) > 4 else "")
            raise LsMergeError(
                f"the checkpoint folder {d} already holds another run's checkpoints ({shown}); this fit would write "
                f"last-v1.ckpt beside them and merges would still read the old last.ckpt. Resume it with "
                f"--ckpt_path {d / 'last.ckpt'}, pass --overwrite true to replace them, or choose another folder "
                f"(--trainer.callbacks.init_args.dirpath)."
            )
        for p in old:
            p.unlink()


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
