"""`lsmerge.merge.latent.base`: the per-layer lambda schedule."""

from __future__ import annotations

from lsmerge.merge import latent as L


def test_layer_lambda_schedule():
    assert [L.layer_lambda([0.0, 1.0], i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert L.layer_lambda([0.3], 4, 10) == 0.3
    assert L.layer_lambda([0.0, 1.0], None, 5) == 0.5
