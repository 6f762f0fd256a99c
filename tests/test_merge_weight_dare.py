"""`lsmerge.merge.weight.dare`: random drop and rescale, seeded."""

from __future__ import annotations

import torch

from lsmerge.merge.weight import dare_drop


def test_dare_expected_value_and_determinism():
    delta = torch.linspace(-1, 1, 50)
    mean = torch.stack([dare_drop(delta, 0.3, seed) for seed in range(3000)]).mean(0)
    assert (mean - delta).abs().max() < 0.12  # E[keep * delta / density] = delta
    assert torch.equal(dare_drop(delta, 0.3, 7), dare_drop(delta, 0.3, 7))
    assert not torch.equal(dare_drop(delta, 0.3, 7), dare_drop(delta, 0.3, 8))
    kept = dare_drop(delta, 0.3, 7) != 0
    assert torch.allclose(dare_drop(delta, 0.3, 7)[kept], delta[kept] / 0.3)
