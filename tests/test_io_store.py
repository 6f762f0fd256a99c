"""`lsmerge.io.store`: lazy, exact reading of safetensors (sharded or not) and .bin checkpoints; bad input is one clear error."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from lsmerge.errors import LsMergeError
from lsmerge.io import open_checkpoint

from conftest import make_tiny_llama


def test_store_reads_lazily_and_exactly(tiny_llama):
    from transformers import AutoModelForCausalLM

    store = open_checkpoint(tiny_llama)
    sd = AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict()
    assert set(store.names) == set(sd)
    for name in store.names:
        assert store.shape(name) == tuple(sd[name].shape)
        assert store.dtype(name) == sd[name].dtype
        assert torch.equal(store.get(name), sd[name])
    assert store.config["model_type"] == "llama"
    assert any(p.name == "config.json" for p in store.side_files)


def test_store_follows_sharded_index(tmp_path):
    model = make_tiny_llama(tmp_path / "src")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    store = open_checkpoint(tmp_path / "sharded")
    assert len({store.info(n).file for n in store.names}) > 1
    for name, t in store.items():
        assert torch.equal(t, model.state_dict()[name])


def test_store_reads_bin_with_weights_only(tmp_path):
    model = make_tiny_llama(tmp_path / "src")
    (tmp_path / "bin").mkdir()
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "src" / "config.json").read_text())
    store = open_checkpoint(tmp_path / "bin")
    assert store.format == "bin"
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(store.get(name), model.state_dict()[name])


def test_missing_folder(tmp_path):
    with pytest.raises(LsMergeError, match="does not exist"):
        open_checkpoint(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LsMergeError, match="no weights"):
        open_checkpoint(tmp_path)


def test_corrupted_header(tmp_path):
    (tmp_path / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}")
    with pytest.raises(LsMergeError, match="not a valid safetensors"):
        open_checkpoint(tmp_path)


def test_truncated_file(tmp_path):
    save_file({"w": torch.randn(100)}, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-50])
    with pytest.raises(LsMergeError, match="truncated"):
        open_checkpoint(tmp_path)


def test_pickle_file_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(LsMergeError, match="weights_only"):
        open_checkpoint(tmp_path)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(LsMergeError, match="pickle"):
        open_checkpoint(tmp_path / "pytorch_model.bin")
