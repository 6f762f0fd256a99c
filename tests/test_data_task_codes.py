"""`lsmerge.data.task_codes` and `WeightChunkDataModule`'s `source: task_codes`: the cached chunks are the
task-vector codec's coefficient blocks (exactly recoverable), `lsmerge fit` runs on them with the shipped
config, and bad input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lsmerge.codecs.task_vector import TaskVectorCodec
from lsmerge.data import chunking
from lsmerge.data.task_codes import TaskCodeReader, joint_rank, task_rank
from lsmerge.errors import LsMergeError
from lsmerge.io import open_checkpoint
from tests.vae_helpers import tiny_datamodule

ROOT = Path(__file__).resolve().parents[1]


def test_rank_rules():
    assert joint_rank((64, 32), 2) == 64 and joint_rank((32, 64), 3) == 32
    assert task_rank(64) == 64 and task_rank(64, 0.25) == 16 and task_rank(64, 0.001) == 1 and task_rank(64, rank=100) == 64


def test_cache_holds_the_codecs_coefficient_blocks(tiny_world, tmp_path):
    dm = tiny_datamodule(str(tiny_world.e1), tmp_path, checkpoints=[str(tiny_world.e1), str(tiny_world.e2)], kinds=["mlp"],
                         layers=None, source="task_codes", base=str(tiny_world.base), rank_fraction=0.5, layout="rows")
    assert len(dm.tensors) == 6 and all(t["shape"][0] < 64 for t in dm.tensors)  # code shapes (r, in), known before setup
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["x"].shape == (16, 8, 16)
    stores = [open_checkpoint(p) for p in (tiny_world.e1, tiny_world.e2)]
    base = open_checkpoint(tiny_world.base)
    codec = TaskVectorCodec.fit(base, stores, [t["name"] for t in dm.tensors], rank_fraction=0.5)
    arr = np.load(dm.cache_paths[0], mmap_mode="r")
    assert {rec["source"] for rec in dm.table} == {0, 1}
    for rec in dm.table:
        chunks = torch.from_numpy(np.array(arr[rec["offset"]: rec["offset"] + rec["n_chunks"]]))
        back = chunking.tokens_to_tensor(chunks, rec["shape"], torch.tensor(rec["norm"], dtype=torch.float64), "rows")
        want = codec.encode(rec["name"], stores[rec["source"]].get(rec["name"])).z
        assert list(want.shape) == rec["shape"]
        torch.testing.assert_close(back, want, rtol=1e-4, atol=1e-6)
    name = dm.tensors[0]["name"]
    full = TaskCodeReader(base, stores).codes(name)  # full rank: k = min(out, 2 * in) rows
    assert tuple(full[0].shape) == (joint_rank(base.shape(name), 2), base.shape(name)[1])
    torch.testing.assert_close(full[1][: dm.tensors[0]["shape"][0]], codec.encode(name, stores[1].get(name)).z, rtol=1e-4, atol=1e-6)


def test_fit_runs_on_task_codes_with_the_shipped_config(tiny_world, tmp_path, monkeypatch):
    from lsmerge.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    main(["fit", "--config", "configs/vae/tiny_task_codes.yaml", f"--data.base={tiny_world.base}",
          f"--data.checkpoints=[{tiny_world.e1},{tiny_world.e2}]", f"--data.cache_dir={tmp_path}/c",
          "--trainer.max_steps=3", "--trainer.val_check_interval=3", f"--trainer.logger.init_args.save_dir={tmp_path}/tb",
          f"--trainer.callbacks.init_args.dirpath={out}"])
    ckpt = torch.load(out / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 3
    shapes = {t["name"]: t["shape"] for t in ckpt["hyper_parameters"]["tensors"]}
    assert shapes["model.layers.0.mlp.gate_proj.weight"] == [64, 32]  # k = min(64, 2 * 32): the code, not the weight
    assert shapes["model.layers.0.mlp.down_proj.weight"] == [32, 64]


def test_bad_input(tiny_world, tmp_path):
    kw = dict(checkpoints=[str(tiny_world.e1), str(tiny_world.e2)], kinds=["mlp"])
    with pytest.raises(LsMergeError, match="set data.base"):
        tiny_datamodule(None, tmp_path, source="task_codes", **kw)
    with pytest.raises(LsMergeError, match="source: task_codes"):
        tiny_datamodule(None, tmp_path, base=str(tiny_world.base), **kw)
    with pytest.raises(LsMergeError, match=r"\(0, 1\]"):
        tiny_datamodule(None, tmp_path, source="task_codes", base=str(tiny_world.base), rank_fraction=1.5, **kw)
    with pytest.raises(LsMergeError, match="not fine-tuned from this base"):
        tiny_datamodule(None, tmp_path, source="task_codes", base=str(tiny_world.deep), **kw)
    with pytest.raises(LsMergeError, match="also listed"):
        tiny_datamodule(None, tmp_path, source="task_codes", base=str(tiny_world.e1), **kw)
    with pytest.raises(LsMergeError, match="data.source"):
        tiny_datamodule(None, tmp_path, source="codes", base=str(tiny_world.base), **kw)
