"""`lsmerge.merge.weight.mergekit_layout`: slices with layer ranges (depth up-scaling, frankenmerges),
per-source layer ranges for every method, the output config, and bad layouts."""

from __future__ import annotations

import json

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.store import open_checkpoint
from lsmerge.merge.weight.command import merge_weights


@pytest.fixture
def llamas(tiny_llamas_3layer):
    return tiny_llamas_3layer


def _sd(path):
    return dict(open_checkpoint(path).items())


def _run(tmp_path, text, name="r"):
    yml = tmp_path / f"{name}.yml"
    yml.write_text(text)
    return merge_weights(mergekit_config=str(yml), out=str(tmp_path / name), progress=False)


def _slices(*ranges, method="passthrough", extra=""):
    lines = [f"merge_method: {method}", "slices:"]
    for sources in ranges:
        lines.append("  - sources:")
        for model, (a, b), params in sources:
            lines += [f"      - model: {model}", f"        layer_range: [{a}, {b}]"]
            if params:
                lines.append(f"        parameters: {params}")
    return "\n".join(lines) + "\n" + extra


def test_depth_upscaling_stacks_layers_renamed_and_loads_with_transformers(llamas, tmp_path):
    from transformers import AutoModelForCausalLM

    A = llamas["A"]
    out = _run(tmp_path, _slices([(A, (0, 2), None)], [(A, (1, 3), None)]))
    a, m = _sd(A), _sd(out)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["num_hidden_layers"] == 4
    for out_layer, src_layer in enumerate([0, 1, 1, 2]):
        for n in [k for k in a if k.startswith(f"model.layers.{src_layer}.")]:
            assert torch.equal(m[n.replace(f"layers.{src_layer}.", f"layers.{out_layer}.", 1)], a[n])
    assert torch.equal(m["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert len(m) == len(a) + 9  # one more layer of 9 tensors
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(model.model.layers) == 4
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.shape == (1, 4, 128) and torch.isfinite(logits).all()


def test_frankenmerge_reads_each_tensor_from_its_source_with_scale_filters(llamas, tmp_path):
    A, B = llamas["A"], llamas["B"]
    scale = "{scale: [{filter: mlp, value: 0.5}, {value: 1.0}]}"
    out = _run(tmp_path, _slices([(A, (0, 1), None)], [(B, (1, 3), scale)]))
    a, b, m = _sd(A), _sd(B), _sd(out)
    assert torch.equal(m["model.layers.0.self_attn.q_proj.weight"], a["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(m["model.layers.2.self_attn.q_proj.weight"], b["model.layers.2.self_attn.q_proj.weight"])
    assert torch.equal(m["model.layers.1.mlp.up_proj.weight"], b["model.layers.1.mlp.up_proj.weight"] * 0.5)
    assert torch.equal(m["model.embed_tokens.weight"], a["model.embed_tokens.weight"])  # first slice
    assert torch.equal(m["model.norm.weight"], b["model.norm.weight"])  # last slice
    assert torch.equal(m["lm_head.weight"], b["lm_head.weight"])


def test_linear_slice_with_different_layer_ranges_and_gradient(llamas, tmp_path):
    A, B = llamas["A"], llamas["B"]
    out = _run(tmp_path, _slices([(A, (0, 2), "{weight: 1.0}"), (B, (1, 3), "{weight: [0.0, 1.0]}")], method="linear"))
    a, b, m = _sd(A), _sd(B), _sd(out)
    n = "model.layers.{}.mlp.down_proj.weight"
    assert torch.equal(m[n.format(0)], a[n.format(0)])  # t = 0: B's weight 0
    assert torch.allclose(m[n.format(1)], (a[n.format(1)] + b[n.format(2)]) / 2)  # t = 1: equal weights
    assert json.loads((tmp_path / "r" / "config.json").read_text())["num_hidden_layers"] == 2


def test_output_config_remaps_per_layer_lists(llamas, tmp_path):
    import shutil

    A = tmp_path / "A"
    shutil.copytree(llamas["A"], A)
    cfg = json.loads((A / "config.json").read_text())
    cfg["layer_types"] = ["full", "sliding", "full2"]
    (A / "config.json").write_text(json.dumps(cfg))
    _run(tmp_path, _slices([(A, (0, 2), None)], [(A, (1, 3), None)]), name="up")
    out = json.loads((tmp_path / "up" / "config.json").read_text())
    assert out["layer_types"] == ["full", "sliding", "sliding", "full2"] and out["num_hidden_layers"] == 4


@pytest.mark.parametrize("recipe, message", [
    (_slices([("{A}", (0, 5), None)]), r"layer_range \[0, 5\], past the model's depth: it has 3 layers"),
    (_slices([("{A}", (0, 2), None), ("{B}", (0, 3), None)], method="linear"), "different numbers of layers"),
    ("merge_method: linear\nmodels:\n  - model: {A}\n  - model: {B}\ntokenizer_source: {C}\nparameters: {{weight: 1}}\n",
     "not among the recipe's models"),
    ("merge_method: linear\nmodels:\n  - model: {A}\n  - model: {B}\ntokenizer:\n  tokens:\n    x: {{source: {A}}}\n"
     "parameters: {{weight: 1}}\n", r"`tokenizer\.tokens` \(per-token embedding sources\) is not supported"),
    ("merge_method: linear\nmodels:\n  - model: {A}\n  - model: {B}\ntokenizer_source: union\nparameters: {{weight: 1}}\n",
     "tokenizer_source needs the base model's tokenizer"),  # these models have none
    (_slices([("{A}", (2, 1), None)]), "0 <= start < end"),
])
def test_bad_layouts_refused_before_writing(llamas, tmp_path, recipe, message):
    yml = tmp_path / "bad.yml"
    yml.write_text(recipe.format(A=llamas["A"], B=llamas["B"], C=tmp_path / "elsewhere"))
    with pytest.raises(LsMergeError, match=message):
        merge_weights(mergekit_config=str(yml), out=str(tmp_path / "never"), progress=False)
    assert not (tmp_path / "never").exists()
