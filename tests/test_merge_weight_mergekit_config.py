"""`lsmerge.merge.weight.mergekit_config`: reading mergekit recipes."""

from __future__ import annotations

import pytest

from lsmerge.errors import LsMergeError


def test_mergekit_ties_recipe_uses_mergekit_tie_break_and_refuses_ours(tmp_path):
    from lsmerge.merge.weight.mergekit_config import MergekitParameters, method_inputs, read_mergekit_config

    yml = tmp_path / "t.yml"
    yml.write_text("merge_method: ties\nbase_model: /m/A\nmodels:\n  - model: /m/B\n    parameters: {weight: 1, density: 0.5}\n")
    recipe = read_mergekit_config(yml)
    name = "model.layers.0.mlp.up_proj.weight"
    inputs, base = method_inputs(recipe, recipe.slices[0])
    assert [s.model for s in inputs] == ["/m/B"] and base.model == "/m/A"  # mergekit appends the base
    resolved = MergekitParameters(recipe).resolve(recipe.slices[0], 0.0, name, [(s, name) for s in inputs])
    assert resolved["tie_break"] == "mergekit" and resolved["density"] == [0.5]
    yml.write_text("merge_method: ties\nbase_model: /m/A\nmodels:\n  - model: /m/B\n    parameters: {weight: 1, tie_break: index}\n")
    with pytest.raises(LsMergeError, match="tie_break"):
        read_mergekit_config(yml)
