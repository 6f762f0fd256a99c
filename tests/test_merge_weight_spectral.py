"""`lsmerge.merge.weight.spectral`: the Gram-eigendecomposition routes (`truncated_svd`,
`polar_factor`) against the SVD route (torch.linalg.svd, the same numerical-zero cut) on random,
rank-deficient and zero inputs, tall and wide, float64 and float32."""

from __future__ import annotations

import pytest
import torch

from lsmerge.merge.weight.spectral import null_tolerance, polar_factor, truncated_svd


def svd_route_truncated(x: torch.Tensor, r: int, scale: float | None = None):
    """The top <= r singular triplets with s > the cut, from a float64 LAPACK SVD."""
    u, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    tol = null_tolerance(float(s[0]) if scale is None else scale, tuple(x.shape))
    q = min(int((s > tol).sum()), r)
    return u[:, :q], s[:q], vh[:q]


def svd_route_polar(a: torch.Tensor) -> torch.Tensor:
    """P Q^T over the components with s > the cut, from a float64 LAPACK SVD (the old route)."""
    p, s, qh = torch.linalg.svd(a.double(), full_matrices=False)
    keep = s > null_tolerance(float(s.max()), tuple(a.shape))
    return p[:, keep] @ qh[keep]


def low_rank(m, n, rank, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, n, generator=g, dtype=torch.float64)).to(dtype)


def lora_like(m, n, rank, seed):
    """A float32 task matrix as a LoRA fine-tune leaves it: (W + B A) - W, rank `rank` plus the
    rounding of W + B A to float32 (numerically-zero singular values ~1e-7 of the top one)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g) * 0.05
    return (w + torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g) * 0.01) - w


def assert_same_triplets(got, want, atol):
    (u, s, vh), (u0, s0, vh0) = got, want
    assert u.shape == u0.shape and s.shape == s0.shape and vh.shape == vh0.shape
    torch.testing.assert_close(s, s0, atol=atol, rtol=0)
    sign = torch.sign((u * u0).sum(0))  # singular vectors are defined up to sign
    torch.testing.assert_close(u * sign, u0, atol=atol, rtol=0)
    torch.testing.assert_close(vh * sign[:, None], vh0, atol=atol, rtol=0)


@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (10, 10), (40, 7)])
@pytest.mark.parametrize("r", [1, 3, 100])
def test_truncated_svd_matches_the_svd_route_on_random_matrices(shape, r):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape) + r), dtype=torch.float64)
    got = truncated_svd(x, r)
    assert got[0].dtype == torch.float64 and got[1].shape == (min(r, *shape),)
    assert_same_triplets(got, svd_route_truncated(x, r), atol=1e-10)
    if r >= min(shape):  # every component: x itself
        torch.testing.assert_close((got[0] * got[1]) @ got[2], x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
def test_truncated_svd_of_float32_input_matches_a_float64_svd(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    assert_same_triplets(truncated_svd(x, 10), svd_route_truncated(x, 10), atol=1e-10)


@pytest.mark.parametrize("shape", [(20, 45), (45, 20)])
def test_truncated_svd_leaves_out_numerically_zero_components(shape):
    x = low_rank(*shape, rank=4, seed=1)
    u, s, vh = truncated_svd(x, 10)
    assert s.shape == (4,)  # not 10: the other singular vectors are LAPACK's arbitrary null-space basis
    torch.testing.assert_close((u * s) @ vh, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(u.T @ u, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(vh @ vh.T, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    assert_same_triplets((u, s, vh), svd_route_truncated(x, 10), atol=1e-8)
    # a LoRA-like float32 task matrix: rank 16, its float32 rounding residue counts as zero
    y = lora_like(*shape, rank=16, seed=2)
    assert truncated_svd(y, 40)[1].shape == (16,)
    assert int((torch.linalg.svdvals(y.double()) > 1e-9).sum()) > 16  # the residue is there, and is cut


def test_truncated_svd_of_zero_and_of_residue_at_a_larger_scale():
    for shape in ((6, 9), (9, 6)):
        u, s, vh = truncated_svd(torch.zeros(shape), 3)
        assert u.shape == (shape[0], 0) and s.shape == (0,) and vh.shape == (0, shape[1])
    x = low_rank(8, 12, 2, seed=3)
    assert truncated_svd(x, 5, scale=float(torch.linalg.svdvals(x)[0]) * 1e9)[1].numel() == 0  # all below the cut
    assert truncated_svd(x, 5, scale=float(torch.linalg.svdvals(x)[0]))[1].numel() == 2
    assert truncated_svd(x, 0)[1].numel() == 0


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (9, 9)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_polar_factor_matches_the_svd_route_on_random_matrices(shape, dtype):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)
    got = polar_factor(a)
    assert got.dtype == dtype and got.shape == a.shape
    torch.testing.assert_close(got.double(), svd_route_polar(a), atol=1e-10 if dtype == torch.float64 else 1e-6, rtol=0)


def test_polar_factor_matches_the_svd_route_on_rank_deficient_matrices():
    g = torch.Generator().manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(10, 4, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64))
    cases = {
        "duplicated block": torch.cat([q, q], 1),  # identical tasks' singular vectors
        "overlapping blocks": torch.cat([q, q[:, :2], q2], 1),  # 9 columns of rank 7
        "a zero column": torch.cat([q, torch.zeros(10, 1, dtype=torch.float64)], 1),
        "wide, rank < rows": torch.cat([q, q], 1).T.contiguous(),  # (8, 10) of rank 4: the a a^T route
        "low rank": low_rank(9, 6, 2, seed=7),
        "low rank, wide": low_rank(6, 9, 2, seed=8),
    }
    for name, a in cases.items():
        want = svd_route_polar(a)
        torch.testing.assert_close(polar_factor(a), want, atol=1e-9, rtol=0, msg=name)
        torch.testing.assert_close(polar_factor(a.float()).double(), want, atol=2e-6, rtol=0, msg=name)
    torch.testing.assert_close(polar_factor(torch.cat([q, q], 1)), torch.cat([q, q], 1) / 2 ** 0.5)
    assert torch.equal(polar_factor(torch.zeros(4, 3)), torch.zeros(4, 3))
    assert polar_factor(torch.zeros(4, 0)).shape == (4, 0)
