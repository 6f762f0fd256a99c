"""io.hf: model references, the one loader of causal LMs and tokenizers."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.hf import auto_name, load_causal_lm, load_tokenizer, resolve_model, resolve_models


def test_resolve_model_paths_tiny_and_unknown(tmp_path, tiny_world):
    assert resolve_model(str(tiny_world.e1)) == tiny_world.e1.resolve()
    made = resolve_model(f"tiny@3:{tmp_path / 't'}")
    assert (made / "config.json").is_file() and made == (tmp_path / "t").resolve()
    with pytest.raises(LsMergeError, match="unknown model 'nowhere': no such folder"):
        resolve_model("nowhere")


def test_resolve_models_needs_models_each_once(tiny_world):
    assert resolve_models([str(tiny_world.e1), str(tiny_world.e2)]) == [tiny_world.e1.resolve(), tiny_world.e2.resolve()]
    with pytest.raises(LsMergeError, match="no models given"):
        resolve_models([])
    with pytest.raises(LsMergeError, match=r"listed twice .* list each once \(use weights\)"):
        resolve_models([str(tiny_world.e1), str(tiny_world.e1)], " (use weights)")


def test_auto_name_is_a_safe_folder_name(tmp_path):
    assert auto_name([tmp_path / "A", tmp_path / "B"], "linear", "0.70", [1, 2], ["qkv"]) == "A_B_linear0.70_layers1-2_qkv"
    assert "/" not in auto_name([tmp_path / "a b"], "x/y", "", None, None)


def test_loader_reads_safetensors_and_refuses_pickle_only_folders(tiny_world, tmp_path):
    model = load_causal_lm(tiny_world.e1)
    assert not model.training and load_tokenizer(tiny_world.e1).pad_token_id == 1
    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    model.config.save_pretrained(bin_only)
    torch.save(model.state_dict(), bin_only / "pytorch_model.bin")
    with pytest.raises(LsMergeError, match="no loadable weights .* reads safetensors"):
        load_causal_lm(bin_only)
    again = load_causal_lm(bin_only, safetensors_only=False)  # weights_only torch.load inside transformers
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(again.state_dict()[name], model.state_dict()[name])
    with pytest.raises(LsMergeError, match="no usable tokenizer"):
        load_tokenizer(tmp_path)
