"""The model card (io.card) CheckpointWriter writes into every command output: front matter the
Hub reads, inputs with sha256, parameters, the command line; deterministic; transformers ignores it."""

from __future__ import annotations

import json

import yaml

from lsmerge.cli import main
from lsmerge.io.card import command_line


def _merge(a, b, out):
    main(["merge-weights", "--models", json.dumps([str(a), str(b)]), "--method", "slerp", "--parameters", "{t: 0.3}",
          "--out", str(out), "--progress", "false"])
    return out


def test_merged_folder_has_a_card_and_still_loads(tiny_world, tmp_path):
    from transformers import AutoModelForCausalLM

    out = _merge(tiny_world.base, tiny_world.e1, tmp_path / "m")
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers"
    assert front["base_model"] == [tiny_world.base.name, tiny_world.e1.name]
    assert front["tags"] == ["lsmerge", "merge", "slerp"]
    sums = json.loads(__import__("safetensors").safe_open(str(out / "model.safetensors"), "pt").metadata()["lsmerge_inputs"])
    assert all(f["sha256"] in card for i in sums for f in i["files"])
    assert "lsmerge merge-weights " in card and "--method slerp" in card and "Evaluation" in card and "Not run" in card
    AutoModelForCausalLM.from_pretrained(out)  # the card is not a weight file


def test_card_is_the_same_for_any_output_path(tiny_world, tmp_path):
    one = _merge(tiny_world.base, tiny_world.e1, tmp_path / "x" / "one")
    two = _merge(tiny_world.base, tiny_world.e1, tmp_path / "y" / "two")
    assert (one / "README.md").read_bytes() == (two / "README.md").read_bytes()


def test_command_line_is_rebuilt_from_settings():
    line = command_line({"command": "merge", "method": "lerp", "models": ["a", "b"], "lam": 0.5, "ot": True,
                         "kinds": None, "inputs": ["/x/a"]})
    assert line == "lsmerge merge --lam 0.5 --method lerp --models '[\"a\",\"b\"]' --ot true --out DIR"
