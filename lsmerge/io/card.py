"""The model card (`README.md`) `CheckpointWriter` puts in every output checkpoint folder.

YAML front matter the Hugging Face Hub reads (`library_name`, `base_model`, `tags`), then the
method, the inputs with the sha256 of each file, the parameters and the command line that made
the checkpoint, all from the provenance the writer already stores in the safetensors metadata.
Deterministic: no time, host or output path, so the same inputs give the same bytes anywhere.
`transformers` ignores the file when loading the folder.
"""

from __future__ import annotations

import json
import shlex

CARD_NAME = "README.md"
#: provenance keys that record what a command computed, not an option it was given
_NOT_OPTIONS = {"command", "inputs", "codecs", "gguf_sha256"}
_MERGES = ("merge", "merge-weights")


def _method(config: dict) -> str:
    command = str(config.get("command", ""))
    recipe = config.get("mergekit_config")
    if isinstance(recipe, dict) and recipe.get("merge_method"):
        return str(recipe["merge_method"])
    if command in _MERGES and config.get("method"):
        return str(config["method"])
    return command or "unknown"


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":"), sort_keys=True)
    return str(v)


def command_line(config: dict) -> str:
    """`lsmerge <command> --key value ...` rebuilt from the recorded settings (unset ones left out);
    the output folder is never recorded, so `--out DIR` ends it."""
    command = str(config.get("command", "<command>"))
    parts = ["lsmerge", command]
    for key in sorted(config):
        v = config[key]
        if key in _NOT_OPTIONS or v is None:
            continue
        if key == "mergekit_config" and isinstance(v, dict):
            parts += ["--mergekit_config", "RECIPE.yml"]  # the recipe itself is under Parameters
            continue
        parts += [f"--{key}", shlex.quote(_value(v))]
    return " ".join(parts + ["--out", "DIR"])


def _yaml_list(key: str, items: list[str]) -> list[str]:
    return [f"{key}:"] + [f"- {json.dumps(i)}" for i in items]


def model_card(config: dict | None, inputs: list[dict], version: str) -> str:
    """The card's text for a checkpoint written with provenance `config` and `inputs`
    (`io.provenance.input_digests`); lsmerge `version`."""
    config = config or {}
    command = str(config.get("command", "unknown"))
    method = _method(config)
    tags = ["lsmerge"] + (["merge"] if command in _MERGES else []) + [method]
    tags = list(dict.fromkeys(tags))
    names = [i["input"] for i in inputs]
    lines = ["---", "library_name: transformers"]
    if names:
        lines += _yaml_list("base_model", names)
    lines += _yaml_list("tags", tags) + ["---", "", f"# lsmerge {command}: {method}", ""]
    lines += [f"Written by `lsmerge {command}` (lsmerge {version}) with the method **{method}**. The same settings "
              "and the sha256 of every input file are recorded in each safetensors file's metadata "
              "(`lsmerge_config`, `lsmerge_inputs`).", ""]
    lines += ["## Inputs", ""]
    if inputs:
        for i in inputs:
            lines.append(f"- `{i['input']}`")
            lines += [f"  - `{f['file']}`: sha256 `{f['sha256']}`" for f in i["files"]]
    else:
        lines.append("None recorded.")
    lines += ["", "## Parameters", "", "```json", json.dumps(config, indent=2, sort_keys=True, default=str), "```", ""]
    lines += ["## Command", "", "```sh", command_line(config), "```", ""]
    lines += ["## Evaluation", "", "Not run. Score this folder with `lsmerge evaluate --models DIR --corpora '[shakespeare,python]'`.", ""]
    return "\n".join(lines)
