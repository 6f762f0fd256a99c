"""`lsmerge.merge.weight.iso` (Iso-C, Iso-CTS) against numpy transcriptions of the reference
code's steps, their identities and the common-fraction edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsmerge.merge.weight.iso import iso_c, iso_cts, subspace_sizes


EPS32 = float(np.finfo(np.float32).eps)


def cut_null(u, s, vt, scale, shape):
    """The numerically-zero singular components (s <= scale * max(m, n) * eps(float32)) zeroed."""
    keep = s > scale * max(shape) * EPS32
    return u * keep, s * keep, vt * keep[:, None]


def polar_with_cut(a):
    """P Q^T over the components above the numerical-zero cut (zero columns stay zero)."""
    p, s, qt = np.linalg.svd(a, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(a.shape) * EPS32
    return p[:, keep] @ qt[keep]


def iso_c_reference(base, xs, alpha=1.0, null_cut=False):
    """null_cut: M's numerically-zero components zeroed (they count 0 in the mean)."""
    u, s, vt = np.linalg.svd(sum(x - base for x in xs), full_matrices=False)
    if null_cut:
        u, s, vt = cut_null(u, s, vt, s[0], base.shape)
        return base + alpha * s.mean() * (u @ vt)
    return base + alpha * (u @ np.diag(np.full_like(s, s.mean())) @ vt)


def iso_cts_reference(base, xs, alpha=1.0, fraction=0.8, null_cut=False):
    """The reference `iso_cts` (src/utils/iso.py of danielm1405/iso-merging), line by line.
    null_cut: every SVD's numerically-zero components zeroed (a residual's at the size of its
    task matrix, the Frobenius norm), and polar factors that leave out zero components."""
    n_tasks, shape = len(xs), base.shape
    ws = [x - base for x in xs]
    common = int(min(shape) * fraction)
    ts_total = round((min(shape) - common) / n_tasks) * n_tasks
    common = min(shape) - ts_total
    u, s, vt = np.linalg.svd(sum(ws), full_matrices=False)
    if null_cut:
        u, s, vt = cut_null(u, s, vt, s[0], shape)
    cu, cs, cv = u[:, :common], s[:common], vt[:common]
    per = int((min(shape) - common) / n_tasks)
    comb_u, comb_s, comb_v = np.zeros((shape[0], min(shape))), np.zeros(min(shape)), np.zeros((min(shape), shape[1]))
    for i, w in enumerate(ws):
        w_ts = w - cu @ cu.T @ w
        ut, st, vtt = np.linalg.svd(w_ts, full_matrices=False)
        if null_cut:
            ut, st, vtt = cut_null(ut, st, vtt, np.linalg.norm(w), shape)
        comb_u[:, i * per:(i + 1) * per] = ut[:, :per]
        comb_s[i * per:(i + 1) * per] = st[:per]
        comb_v[i * per:(i + 1) * per] = vtt[:per]
    comb_u[:, n_tasks * per:n_tasks * per + common] = cu
    comb_s[n_tasks * per:n_tasks * per + common] = cs
    comb_v[n_tasks * per:n_tasks * per + common] = cv
    if null_cut:
        return base + alpha * comb_s.mean() * (polar_with_cut(comb_u) @ polar_with_cut(comb_v))
    a, _, b = np.linalg.svd(comb_u, full_matrices=False)
    c, _, d = np.linalg.svd(comb_v, full_matrices=False)
    return base + alpha * ((a @ b) @ np.diag(np.full_like(comb_s, comb_s.mean())) @ (c @ d))


def _case(shape, n_tasks, seed=0):
    g = np.random.default_rng(seed)
    base = g.standard_normal(shape)
    return base, [base + g.standard_normal(shape) * (0.5 + i) for i in range(n_tasks)]


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])
@pytest.mark.parametrize("n_tasks", [1, 2, 3])
def test_iso_c_matches_the_reference_and_is_isotropic(shape, n_tasks):
    base, xs = _case(shape, n_tasks, seed=n_tasks)
    got = iso_c(_t(base), [_t(x) for x in xs], alpha=1.3)
    np.testing.assert_allclose(got.numpy(), iso_c_reference(base, xs, 1.3), atol=1e-10)
    s = torch.linalg.svdvals(got - _t(base))
    torch.testing.assert_close(s, torch.full_like(s, float(s.mean())))


@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (20, 20)])
@pytest.mark.parametrize("n_tasks", [2, 3])
@pytest.mark.parametrize("fraction", [0.8, 0.5, 0.2])
def test_iso_cts_matches_the_reference(shape, n_tasks, fraction):
    base, xs = _case(shape, n_tasks, seed=n_tasks + 10)
    got = iso_cts(_t(base), [_t(x) for x in xs], alpha=0.9, common_fraction=fraction)
    np.testing.assert_allclose(got.numpy(), iso_cts_reference(base, xs, 0.9, fraction), atol=1e-10)


def _low_rank_case(shape, n_tasks, rank, seed):
    g = np.random.default_rng(seed)
    base = g.standard_normal(shape)
    return base, [base + g.standard_normal((shape[0], rank)) @ g.standard_normal((rank, shape[1])) for _ in range(n_tasks)]


@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (20, 20)])
@pytest.mark.parametrize("n_tasks,rank", [(2, 1), (2, 3), (3, 2)])
@pytest.mark.parametrize("fraction", [0.8, 0.2])
def test_iso_of_low_rank_tasks_is_the_reference_with_null_components_zeroed(shape, n_tasks, rank, fraction):
    """Tasks of rank below k: the numerically-zero singular vectors of M and of the residuals
    (LAPACK's arbitrary choice; a residual inside the common subspace is all rounding residue)
    are left out, and mean(s) still averages over k."""
    base, xs = _low_rank_case(shape, n_tasks, rank, seed=rank * 10 + n_tasks)
    got = iso_cts(_t(base), [_t(x) for x in xs], alpha=0.9, common_fraction=fraction)
    np.testing.assert_allclose(got.numpy(), iso_cts_reference(base, xs, 0.9, fraction, null_cut=True), atol=1e-9)
    np.testing.assert_allclose(iso_c(_t(base), [_t(x) for x in xs], alpha=0.9).numpy(),
                               iso_c_reference(base, xs, 0.9, null_cut=True), atol=1e-9)


@pytest.mark.parametrize("shape", [(96, 160), (160, 96)])
def test_iso_of_lora_like_tasks_is_a_function_of_the_tasks(shape):
    """float32 LoRA-like tasks (rank 4 plus float32 rounding residue): the float32 merges equal
    the float64 merges of the same values within float32 rounding (the SVD route with the
    null-space singular vectors kept differed by 40-100 % on the SmolLM2 pair), lie in the tasks'
    joint column span, and Iso-CTS with the whole spectrum common is still Iso-C."""
    g = torch.Generator().manual_seed(shape[0])
    b = torch.randn(*shape, generator=g) * 0.05
    xs = [b + torch.randn(shape[0], 4, generator=g) @ torch.randn(4, shape[1], generator=g) * 0.01 for _ in range(2)]
    cols = torch.linalg.svd(torch.cat([x.double() - b.double() for x in xs], 1), full_matrices=False)[0][:, :8]
    for fn in (iso_c, iso_cts):
        got = fn(b, xs) - b
        want = fn(b.double(), [x.double() for x in xs]) - b.double()
        assert float((got.double() - want).norm() / want.norm()) < 1e-5, fn.__name__
        assert float((want - cols @ (cols.T @ want)).norm() / want.norm()) < 1e-5, fn.__name__
    torch.testing.assert_close(iso_cts(b, xs, common_fraction=1.0), iso_c(b, xs), atol=1e-7, rtol=0)


def test_iso_identities():
    base, xs = _case((10, 6), 3, seed=5)
    b, ts = _t(base), [_t(x) for x in xs]
    # a task matrix with a flat spectrum is its own Iso-C
    q, _ = torch.linalg.qr(torch.randn(10, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    torch.testing.assert_close(iso_c(b, [b + 0.3 * q]), b + 0.3 * q, atol=1e-12, rtol=0)
    torch.testing.assert_close(iso_cts(b, [b + 0.3 * q]), b + 0.3 * q, atol=1e-12, rtol=0)
    # Iso-CTS with the whole spectrum common, or with one task, is Iso-C
    torch.testing.assert_close(iso_cts(b, ts, common_fraction=1.0), iso_c(b, ts), atol=1e-12, rtol=0)
    torch.testing.assert_close(iso_cts(b, ts[:1], common_fraction=0.5), iso_c(b, ts[:1]), atol=1e-12, rtol=0)
    # alpha 0 is the base
    assert torch.equal(iso_c(b, ts, alpha=0.0), b) and torch.equal(iso_cts(b, ts, alpha=0.0), b)
    assert torch.equal(iso_c(b, [b, b]), b) and torch.equal(iso_cts(b, [b, b]), b)  # unchanged by every task
    # identical tasks (k = 6: 2 common + 2 per task, the task blocks the same): the duplicated
    # block counts once, so the merge spans 4 directions at one level (the mean of the 6
    # concatenated singular values) instead of adding arbitrary null-space directions
    w = ts[0] - b
    same = iso_cts(b, [ts[0], ts[0].clone()], common_fraction=0.5)
    sw = torch.linalg.svdvals(w)
    level = float(torch.cat([2 * sw[:2], sw[2:4], sw[2:4]]).mean())
    torch.testing.assert_close(torch.linalg.svdvals(same - b), torch.tensor([level] * 4 + [0.0] * 2, dtype=torch.float64),
                               atol=1e-10, rtol=0)


def test_subspace_sizes_divide_the_rest_evenly():
    assert subspace_sizes(576, 2, 0.8) == (460, 58)  # int(460.8) = 460, 116 / 2 = 58
    assert subspace_sizes(576, 3, 0.8) == (459, 39)  # 116 / 3 -> 39 each, common takes the rest
    assert subspace_sizes(10, 4, 1.0) == (10, 0)
    for k, n, f in ((3, 2, 0.1), (5, 4, 0.05), (1, 3, 0.5)):  # the reference's rounding would exceed k
        c, r = subspace_sizes(k, n, f)
        assert c >= 0 and r >= 0 and c + n * r == k


def test_iso_vectors_take_the_mean():
    g = torch.Generator().manual_seed(1)
    b = torch.randn(7, generator=g)
    xs = [b + torch.randn(7, generator=g) for _ in range(2)]
    want = b + 1.5 * ((xs[0] - b) + (xs[1] - b)) / 2
    torch.testing.assert_close(iso_c(b, xs, alpha=1.5), want)
    torch.testing.assert_close(iso_cts(b, xs, alpha=1.5), want)
