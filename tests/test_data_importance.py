"""Importance from calibration data: saliency, column weights per chunk layout, stats files, and
`lsmerge importance` on a tiny model (h equals the mean of x^2 at the layer's input)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

from lsmerge.data import chunking
from lsmerge.data.importance import (ImportanceStats, chunk_column_weights, column_weights, saliency, text_digest,
                                     weighted_error)
from lsmerge.errors import LsMergeError


def test_saliency_on_a_hand_made_layer():
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    h = torch.tensor([4.0, 0.25, 1.0])
    s = saliency(w, h)
    expected = torch.tensor([[4.0, 1.0, 0.25], [0.0, 2.25, 1.0]], dtype=torch.float64)
    assert torch.equal(s, expected)
    # the most salient weight is not the largest one: |w| = 3 at h = 0.25 loses to |w| = 1 at h = 4
    assert int(s.flatten().argmax()) == 0 and int(w.abs().flatten().argmax()) == 4
    with pytest.raises(LsMergeError, match="2-d weight"):
        saliency(w, h[:2])


def test_column_weights_have_mean_one_and_weighted_error_is_the_output_error():
    h = torch.tensor([2.0, 6.0, 0.0, 4.0])
    cw = column_weights(h)
    assert torch.allclose(cw.mean(), torch.tensor(1.0, dtype=torch.float64), atol=1e-6)
    assert cw[2] > 0  # floored
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(50, 4, generator=g, dtype=torch.float64)
    w_hat = w + 0.1 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    hx = x.pow(2).mean(0)
    e = w - w_hat
    want = float((e @ torch.diag(hx.sqrt())).pow(2).sum() / (w @ torch.diag(hx.sqrt())).pow(2).sum())
    assert weighted_error(w, w_hat, hx) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("layout", ["flat", "rows"])
@pytest.mark.parametrize("shape,chunk_size", [((3, 10), 4), ((4, 8), 4), ((2, 5), 8)])
def test_chunk_column_weights_follow_the_chunk_layout(layout, shape, chunk_size):
    cols = shape[1]
    weights = torch.arange(1, cols + 1, dtype=torch.float32)
    full = chunking.chunk(weights[None, :].expand(shape).contiguous(), chunk_size, layout)
    n = full.shape[0]
    idx = torch.arange(n + 3)  # three chunks past the end (a window's padding tokens)
    got = chunk_column_weights(weights, shape, chunk_size, layout, idx)
    assert torch.equal(got[:n], full)
    assert torch.equal(got[n:], torch.zeros(3, chunk_size))


def test_stats_round_trip_and_checks(tmp_path):
    stats = ImportanceStats({"a.weight": torch.tensor([1.0, 2.0])}, text_digest(["doc"]), 7, "m")
    stats.save(tmp_path / "i.safetensors")
    back = ImportanceStats.load(tmp_path / "i.safetensors")
    assert back.digest == stats.digest and back.tokens == 7 and torch.equal(back.h["a.weight"], stats.h["a.weight"])
    assert torch.equal(back.for_tensor("a.weight", (5, 2)), stats.h["a.weight"])
    with pytest.raises(LsMergeError, match="no entry"):
        back.for_tensor("b.weight", (5, 2))
    with pytest.raises(LsMergeError, match="columns"):
        back.for_tensor("a.weight", (5, 3))
    with pytest.raises(LsMergeError, match="fitted with calibration statistics"):
        back.check_digest("0" * 64, "the codec")
    with pytest.raises(LsMergeError, match="do not exist"):
        ImportanceStats.load(tmp_path / "none.safetensors")


def test_importance_command_measures_the_layer_inputs(tiny_world, tmp_path):
    from lsmerge.cli import main
    from lsmerge.io.hf import load_causal_lm, load_tokenizer

    out = tmp_path / "imp.safetensors"
    with contextlib.redirect_stdout(io.StringIO()):
        main(["importance", "--model", str(tiny_world.base), "--out", str(out),
              "--calibration", '{"files": ["%s"], "max_tokens": 64, "seq_len": 32}' % tiny_world.text])
    stats = ImportanceStats.load(out)
    name = "model.layers.1.mlp.down_proj.weight"
    assert len(stats.h) == 6 and stats.h[name].shape == (64,) and stats.tokens > 0
    # the same mean of x^2 from a hook of our own on the first 32 tokens
    model, tok = load_causal_lm(str(tiny_world.base)), load_tokenizer(str(tiny_world.base))
    ids = tok(tiny_world.text.read_text().strip(), truncation=True, max_length=32, return_tensors="pt")["input_ids"]
    seen = {}
    handle = model.model.layers[1].mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0][0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    want = seen["x"].double().pow(2).mean(0)
    assert torch.allclose(stats.h[name], want, rtol=1e-4, atol=1e-7)
