"""`lsmerge.data.weight_datamodule.WeightChunkDataModule`: samples, a deterministic split over a cache of exactly recoverable chunks, bad input."""

from __future__ import annotations

import json
import shutil

import torch
import pytest

from lsmerge.errors import LsMergeError
from tests.vae_helpers import tiny_datamodule


def test_datamodule_samples_and_split(vae_llama, tmp_path):
    dm = tiny_datamodule(vae_llama, tmp_path, kinds=["mlp"], layers=None, val_fraction=0.25, tokens_per_sample=10, num_workers=1)
    assert dm.num_layers == 2 and dm.chunk_size == 16 and len(dm.tensors) == 6  # sizes exist before setup()
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["x"].shape == (16, 10, 16) and b["lengths"].shape == (16, 10)
    assert set(b) >= {"layer", "kind", "source", "chunk_index", "norm", "threshold", "tensor_id"}
    train = {tuple(r) for r in dm._train.windows.tolist()}
    val = {tuple(r) for r in dm._val.windows.tolist()}
    assert train and val and not train & val
    again = tiny_datamodule(vae_llama, tmp_path, kinds=["mlp"], layers=None, val_fraction=0.25, tokens_per_sample=10)
    again.setup("fit")
    assert {tuple(r) for r in again._val.windows.tolist()} == val  # deterministic split, cache reused
    # the cached chunks are the normalised tensor, exactly recoverable
    from lsmerge.data import chunking
    from lsmerge.io.store import open_checkpoint

    rec = dm.table[0]
    import numpy as np

    arr = np.load(dm.cache_paths[0], mmap_mode="r")
    chunks = torch.from_numpy(np.array(arr[rec["offset"] : rec["offset"] + rec["n_chunks"]]))
    w = open_checkpoint(vae_llama).get(rec["name"])
    back = chunking.tokens_to_tensor(chunks, rec["shape"], torch.tensor(rec["norm"], dtype=torch.float64))
    torch.testing.assert_close(back, w, rtol=1e-5, atol=1e-7)


def test_bad_input(vae_llama, tmp_path):
    with pytest.raises(LsMergeError, match="matches no tensor"):
        tiny_datamodule(vae_llama, tmp_path, pattern="no_such_tensor")
    with pytest.raises(LsMergeError, match="chunk_size"):
        tiny_datamodule(vae_llama, tmp_path, chunk_size=0)
    with pytest.raises(LsMergeError, match="out of range"):
        tiny_datamodule(vae_llama, tmp_path, layers=[5])
    mixed = tmp_path / "mistral"
    shutil.copytree(vae_llama, mixed)
    cfg = json.loads((mixed / "config.json").read_text())
    cfg["model_type"] = "mistral"
    (mixed / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LsMergeError, match="mix families"):
        tiny_datamodule(vae_llama, tmp_path, checkpoints=[vae_llama, str(mixed)])


def test_nan_input_names_tensor_and_file_and_leaves_no_temporary_file(vae_llama, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan-llama"
    shutil.copytree(vae_llama, bad)
    (weights,) = bad.glob("*.safetensors")
    tensors = load_file(weights)
    name = "model.layers.0.mlp.gate_proj.weight"
    tensors[name][3, 5] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    dm = tiny_datamodule(str(bad), tmp_path)
    with pytest.raises(LsMergeError, match=rf"tensor '{name}' in {weights}\b.*NaN or Inf"):
        dm.prepare_data()
    assert not (tmp_path / "cache").exists()  # the folder it created is gone, no *.tmp-<pid> file left
    (tmp_path / "cache").mkdir()
    with pytest.raises(LsMergeError, match="NaN or Inf"):
        dm.prepare_data()
    assert list((tmp_path / "cache").iterdir()) == []
