"""`lsmerge.merge.latent.delta`: delta coding (merge codes of W - W_base) and residual decoding."""

from __future__ import annotations

import torch

from lsmerge.codecs.pca import PCACodec
from lsmerge.merge import latent as L


def test_delta_coding_reconstructs_only_the_change():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(32, 16, generator=g) * 0.02
    expert = base + torch.randn(32, 16, generator=g) * 0.001
    deltas = [expert - base]
    codec = PCACodec.fit([("w", deltas), ("v", [base, expert])], chunk_size=16, rank=4)
    merged = L.apply("soup", L.delta_encode(codec, "w", base, [expert]), weights=[1.0])
    out = L.delta_decode(codec, "w", base, merged)
    # low-rank error scales with the delta, not with the weights
    assert (out - expert).norm() < 0.9 * (expert - base).norm()
    plain = codec.decode("v", codec.encode("v", expert))
    assert (out - expert).norm() < (plain - expert).norm()
    b_lat = codec.encode("v", base)
    res = L.residual_decode(codec, "v", base, b_lat, b_lat)
    torch.testing.assert_close(res, base)  # merging nothing returns the base exactly
