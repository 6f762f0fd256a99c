"""`lsmerge.merge.hidden.steering`: steering deltas (mean h_ft - h_base over prompt tokens), save / load."""

from __future__ import annotations

import pytest
import torch

from lsmerge.errors import LsMergeError
from lsmerge.merge.hidden import residual_stream
from lsmerge.merge.hidden.steering import compute_deltas, load_deltas, save_deltas


# -- steering deltas ---------------------------------------------------------------------------


def test_steering_deltas_roundtrip(tiny_lms, tmp_path):
    base, ft = tiny_lms
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    deltas, count = compute_deltas(base, ft, prompts, [0, 2, 4], batch_size=2)
    assert count == 8
    # reference: plain token-weighted mean over unpadded single-prompt runs
    diffs = [residual_stream(ft, 2, torch.tensor([p])) - residual_stream(base, 2, torch.tensor([p])) for p in prompts]
    expected = torch.cat([d[0] for d in diffs]).mean(0)
    assert torch.allclose(deltas[2], expected, atol=1e-5)
    save_deltas(deltas, str(tmp_path / "d.safetensors"), {"base": "b"})
    loaded = load_deltas(str(tmp_path / "d.safetensors"))
    assert sorted(loaded) == [0, 2, 4] and torch.equal(loaded[4], deltas[4])


def test_load_deltas_errors(tmp_path):
    with pytest.raises(LsMergeError, match="not found"):
        load_deltas(str(tmp_path / "missing.safetensors"))
