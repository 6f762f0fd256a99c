"""Chunking, normalisation and windowing are exact inverses for every layout and padding case."""

import pytest
import torch

from lsmerge.data import chunking
from lsmerge.errors import LsMergeError

SHAPES = [(7,), (16,), (3, 5), (4, 16), (5, 17), (2, 3, 4), (1, 1), (33, 1)]


@pytest.mark.parametrize("layout", chunking.LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
def test_chunk_round_trip_exact(layout, shape, chunk_size):
    w = torch.randn(shape)
    chunks = chunking.chunk(w, chunk_size, layout)
    n = chunking.num_chunks(shape, chunk_size, layout)
    assert chunks.shape == (n, chunk_size)
    assert torch.equal(chunking.unchunk(chunks, shape, layout), w)
    lengths = chunking.chunk_lengths(shape, chunk_size, layout)
    mask = chunking.value_mask(lengths, chunk_size)
    assert int(mask.sum()) == w.numel()
    assert torch.all(chunks[~mask] == 0)  # padding is zero and exactly where the mask says
    assert torch.equal(torch.sort(chunks[mask]).values, torch.sort(w.reshape(-1)).values)


def test_rows_layout_never_spans_rows():
    w = torch.arange(3 * 5, dtype=torch.float32).view(3, 5) + 1
    chunks = chunking.chunk(w, 4, "rows")
    assert chunks.tolist() == [[1, 2, 3, 4], [5, 0, 0, 0], [6, 7, 8, 9], [10, 0, 0, 0], [11, 12, 13, 14], [15, 0, 0, 0]]
    assert chunking.chunk_lengths((3, 5), 4, "rows").tolist() == [4, 1, 4, 1, 4, 1]
    assert chunking.chunk_lengths((3, 5), 4, "flat").tolist() == [4, 4, 4, 3]


@pytest.mark.parametrize("normalization", chunking.NORMALIZATIONS)
def test_normalisation_round_trip(normalization):
    w = torch.distributions.StudentT(3.0).sample((64, 48)) * 0.02 + 0.001  # heavy tails
    norm = chunking.tensor_stats(w)
    x = chunking.normalize(w, norm, normalization)
    back = chunking.denormalize(x, norm, normalization)
    torch.testing.assert_close(back, w, rtol=1e-5, atol=1e-7)
    if normalization == "zscore":
        assert abs(float(x.mean())) < 1e-5 and abs(float(x.std(correction=0)) - 1) < 1e-4
    else:
        assert float(x.abs().max()) < float(((w - norm[0]) / norm[1]).abs().max())  # tails compressed


@pytest.mark.parametrize("layout", chunking.LAYOUTS)
@pytest.mark.parametrize("T", [1, 3, 8, 100])
def test_tokens_and_windows_round_trip(layout, T):
    w = torch.randn(9, 13)
    chunks, lengths, norm = chunking.tensor_to_tokens(w, 5, layout, "slog")
    windows, token_mask = chunking.to_windows(chunks, T)
    assert windows.shape[1] == T and int(token_mask.sum()) == chunks.shape[0]
    assert chunking.window_starts(chunks.shape[0], T) == list(range(0, chunks.shape[0], T))
    back = chunking.tokens_to_tensor(chunking.from_windows(windows, chunks.shape[0]), w.shape, norm, layout, "slog")
    torch.testing.assert_close(back, w, rtol=1e-5, atol=1e-6)


def test_bad_input():
    with pytest.raises(LsMergeError, match="chunk_size"):
        chunking.num_chunks((4, 4), 0)
    with pytest.raises(LsMergeError, match="layout"):
        chunking.chunk(torch.zeros(4), 2, "diagonal")
    with pytest.raises(LsMergeError, match="NaN"):
        chunking.tensor_stats(torch.tensor([1.0, float("nan")]))
    with pytest.raises(LsMergeError, match="chunks"):
        chunking.unchunk(torch.zeros(3, 4), (4, 4))
