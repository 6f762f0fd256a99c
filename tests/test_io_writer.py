"""`lsmerge.io.writer`: the streaming atomic checkpoint writer (sharding, determinism, dtypes, interruption, refused outputs)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lsmerge.errors import LsMergeError
from lsmerge.io import CheckpointWriter, open_checkpoint
from lsmerge.io.writer import clean_stale_tmp, parse_size


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_writer_round_trip_sharded_and_loadable(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    store = open_checkpoint(tiny_llama)
    out = tmp_path / "out"
    with CheckpointWriter(out, source=tiny_llama, inputs=[tiny_llama], max_shard_size="16KB", config={"k": 1}) as w:
        for name, t in store.items():
            w.add(name, t)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert (out / "config.json").exists()
    with safe_open(out / shards[0], "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and json.loads(meta["lsmerge_config"]) == {"k": 1} and "lsmerge_version" in meta
    a = AutoModelForCausalLM.from_pretrained(tiny_llama)
    b = AutoModelForCausalLM.from_pretrained(out)
    x = torch.tensor([[1, 5, 9, 3]])
    assert torch.equal(a(x).logits, b(x).logits)
    assert not [p for p in tmp_path.iterdir() if "lsmerge-tmp" in p.name]


def test_writer_is_byte_deterministic(tiny_llama, tmp_path):
    store = open_checkpoint(tiny_llama)
    for out in ("a", "b"):
        with CheckpointWriter(tmp_path / out, source=tiny_llama, max_shard_size="16KB", config={"x": [1, 2]}) as w:
            for name, t in store.items():
                w.add(name, t)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_writer_header_overflow_rewrites_shard(tmp_path):
    tensors = {f"t.{i:03d}.weight": torch.full((3,), float(i)) for i in range(50)}
    with CheckpointWriter(tmp_path / "out", header_reserve=64) as w:
        for k, v in tensors.items():
            w.add(k, v)
    store = open_checkpoint(tmp_path / "out")
    assert store.names == list(tensors)
    for k, v in tensors.items():
        assert torch.equal(store.get(k), v)


def test_writer_dtype_cast_and_bf16(tmp_path):
    with CheckpointWriter(tmp_path / "out", dtype=torch.bfloat16) as w:
        w.add("a.weight", torch.randn(4, 4))
        w.add("ids", torch.arange(3))
    store = open_checkpoint(tmp_path / "out")
    assert store.dtype("a.weight") == torch.bfloat16 and store.dtype("ids") == torch.int64


def test_writer_error_inside_block_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with CheckpointWriter(out) as w:
            w.add("a", torch.zeros(2))
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_only_tmp_which_next_run_cleans(tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        from lsmerge.io import CheckpointWriter
        with CheckpointWriter({str(out)!r}) as w:
            w.add("a", torch.zeros(1000))
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = list(tmp_path.iterdir())
    assert not out.exists() and len(left) == 1 and "lsmerge-tmp" in left[0].name
    assert clean_stale_tmp(out) == left
    with CheckpointWriter(out) as w:
        w.add("a", torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("5MiB") == 5 * 2**20 and parse_size(123) == 123
    with pytest.raises(LsMergeError):
        parse_size("lots")


def test_output_folder_exists(tiny_llama, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LsMergeError, match="not empty"):
        CheckpointWriter(out)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_output_inside_input(tiny_llama):
    before = _files(tiny_llama)
    with pytest.raises(LsMergeError, match="overlaps input"):
        CheckpointWriter(tiny_llama / "merged", inputs=[tiny_llama])
    with pytest.raises(LsMergeError, match="overlaps input"):
        CheckpointWriter(tiny_llama, source=tiny_llama, overwrite=True)
    assert _files(tiny_llama) == before


def test_overwrite_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with CheckpointWriter(out) as w:
        w.add("a", torch.zeros(2))
    with pytest.raises(RuntimeError):
        with CheckpointWriter(out, overwrite=True) as w:
            w.add("a", torch.ones(2))
            raise RuntimeError("crash")
    assert torch.equal(open_checkpoint(out).get("a"), torch.zeros(2))
    with CheckpointWriter(out, overwrite=True) as w:
        w.add("a", torch.ones(2))
    assert torch.equal(open_checkpoint(out).get("a"), torch.ones(2))


def test_writer_error_removes_the_parent_folders_it_made(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(OSError) as e:
        with CheckpointWriter(out) as w:
            w.add("a", torch.zeros(2))
            raise OSError(28, "No space left on device")  # as a write() into a full disk: no path
    assert e.value.filename == str(out)  # the target, not the temporary folder
    assert list(tmp_path.iterdir()) == []


def test_writer_that_cannot_start_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "new" / "out"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if ".lsmerge-tmp-" in self.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(PermissionError):
        with CheckpointWriter(out):
            pass
    assert list(tmp_path.iterdir()) == []


def test_output_below_a_file_is_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LsMergeError, match="is a file, not a folder"):
        CheckpointWriter(tmp_path / "f" / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
