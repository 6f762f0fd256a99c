"""`lsmerge.io.ckpt`: the one weights-only `.ckpt` reader refuses URLs, missing, truncated,
corrupt, foreign and malicious files with one LsMergeError each, and never runs a pickle."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.io.ckpt import is_url, load_lightning_checkpoint
from tests.ckpt_helpers import EXPECTED, bad_checkpoint, sentinel_path


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_bad_checkpoints_are_one_error(kind, tmp_path):
    path = bad_checkpoint(kind, tmp_path)
    with pytest.raises(LsMergeError, match=EXPECTED[kind]):
        load_lightning_checkpoint(path, hparams=("hidden", "chunk_size"), model="`lsmerge fit`")
    assert not sentinel_path(tmp_path).exists()


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    path = bad_checkpoint("malicious", tmp_path)
    with pytest.raises(LsMergeError, match="GLOBAL"):
        load_lightning_checkpoint(path)
    assert not sentinel_path(tmp_path).exists()


def test_a_lightning_checkpoint_loads(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"chunk_size": 4, "tensors": [{"name": "a"}]}},
               tmp_path / "ok.ckpt")
    ckpt = load_lightning_checkpoint(tmp_path / "ok.ckpt", hparams=("chunk_size",))
    assert ckpt["hyper_parameters"]["chunk_size"] == 4 and torch.equal(ckpt["state_dict"]["w"], torch.ones(2))


def test_is_url():
    assert is_url("http://a/b.ckpt") and is_url("s3://bucket/x.ckpt") and is_url("file:///tmp/x.ckpt")
    assert not is_url("/tmp/x.ckpt") and not is_url("checkpoints/vae/tiny/last.ckpt") and not is_url("C:/x.ckpt")
