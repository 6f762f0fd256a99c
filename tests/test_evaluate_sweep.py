"""`lsmerge.evaluate.sweep`: hidden-state mixing over layers x ratios x operators, scored by perplexity."""

from __future__ import annotations

import csv

import pytest
import torch

from lsmerge.evaluate.perplexity import perplexity_of_ids, sliding_windows
from lsmerge.evaluate.sweep import plot_heatmap, run_sweep, window_segments, write_csv


# -- sweep -------------------------------------------------------------------------------------


def test_sweep_rows_csv_and_heatmap(tiny_lms, tmp_path):
    base, ft = tiny_lms
    chunks = torch.randint(0, 128, (3, 16), generator=torch.Generator().manual_seed(0))
    rows = run_sweep(base, [ft], chunks.flatten(), seq_len=16, layers=[0, 2], ratios=[0.0, 1.0], operators=["lerp", "slerp"],
                     max_chunks=3, batch_size=2)  # fmt: skip
    by_key = {(r["operator"], r["mix_layer"], r["beta"]): r for r in rows}
    base_ppl = by_key[("base", None, 0.0)]["perplexity"]
    for op in ("lerp", "slerp"):
        assert by_key[(op, 2, 0.0)]["perplexity"] == pytest.approx(base_ppl, rel=1e-6)
        assert by_key[(op, 2, 0.0)]["cka_base"] == pytest.approx(1.0, abs=1e-5)
    # beta = 1 at layer 0: embeddings replaced by the fine-tuned model's
    assert by_key[("lerp", 0, 1.0)]["perplexity"] != pytest.approx(base_ppl, rel=1e-3)
    write_csv(rows, str(tmp_path / "s.csv"))
    plot_heatmap(rows, str(tmp_path / "s.png"))
    with open(tmp_path / "s.csv") as f:
        assert len(list(csv.DictReader(f))) == 2 + 2 * 2 * 2
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_segments_hold_the_sliding_windows():
    ids = torch.arange(50)
    windows = [w for w, _ in sliding_windows(ids, 8, 8)]
    for batch, max_chunks in ((2, None), (3, 4), (1, 1), (8, None)):
        segments = window_segments(ids, 8, max_chunks, batch)
        got = [w for seg in segments for w, _ in sliding_windows(seg, 8, 8)]
        assert all(len(sliding_windows(seg, 8, 8)) <= batch for seg in segments)
        want = windows[:max_chunks] if max_chunks else windows
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


def test_sweep_perplexity_is_evaluates_perplexity(tiny_lms):
    """The reference rows are `perplexity_of_ids` on the same windows, whatever the batching."""
    base, ft = tiny_lms
    ids = torch.randint(0, 128, (70,), generator=torch.Generator().manual_seed(1))
    ref, mean_nll, count, _ = perplexity_of_ids(base, ids, max_length=16, stride=16, batch_size=8)
    for batch in (1, 2, 5):
        rows = run_sweep(base, [ft], ids, seq_len=16, layers=[1], ratios=[0.0], operators=["lerp"], batch_size=batch)
        assert rows[0]["tokens"] == count == 69
        assert rows[0]["perplexity"] == pytest.approx(ref, rel=1e-5)
        assert rows[2]["perplexity"] == pytest.approx(ref, rel=1e-5)  # beta = 0
