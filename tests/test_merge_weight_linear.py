"""`lsmerge.merge.weight.linear`: the weighted (normalised) mean."""

from __future__ import annotations

import torch

from lsmerge.merge.weight import linear_merge


def test_linear_weighted_and_normalised():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    assert torch.allclose(linear_merge([a, b], [0.75, 0.25]), torch.tensor([1.5, 3.0]))
    assert torch.allclose(linear_merge([a, b], [3.0, 1.0]), torch.tensor([1.5, 3.0]))
    assert torch.allclose(linear_merge([a, b], [1.0, 1.0], normalize=False), torch.tensor([4.0, 8.0]))
