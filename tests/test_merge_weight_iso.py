"""`lsmerge.merge.weight.iso` (Iso-C, Iso-CTS) against numpy transcriptions of the reference
code's steps, their identities and the common-fraction edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsmerge.merge.weight.iso import iso_c, iso_cts, subspace_sizes


def iso_c_reference(base, xs, alpha=1.0):
    u, s, vt = np.linalg.svd(sum(x - base for x in xs), full_matrices=False)
    return base + alpha * (u @ np.diag(np.full_like(s, s.mean())) @ vt)


def iso_cts_reference(base, xs, alpha=1.0, fraction=0.8):
    """The reference `iso_cts` (src/utils/iso.py of danielm1405/iso-merging), line by line."""
    n_tasks, shape = len(xs), base.shape
    ws = [x - base for x in xs]
    common = int(min(shape) * fraction)
    ts_total = round((min(shape) - common) / n_tasks) * n_tasks
    common = min(shape) - ts_total
    u, s, vt = np.linalg.svd(sum(ws), full_matrices=False)
    cu, cs, cv = u[:, :common], s[:common], vt[:common]
    per = int((min(shape) - common) / n_tasks)
    comb_u, comb_s, comb_v = np.zeros((shape[0], min(shape))), np.zeros(min(shape)), np.zeros((min(shape), shape[1]))
    for i, w in enumerate(ws):
        w_ts = w - cu @ cu.T @ w
        ut, st, vtt = np.linalg.svd(w_ts, full_matrices=False)
        comb_u[:, i * per:(i + 1) * per] = ut[:, :per]
        comb_s[i * per:(i + 1) * per] = st[:per]
        comb_v[i * per:(i + 1) * per] = vtt[:per]
    comb_u[:, n_tasks * per:n_tasks * per + common] = cu
    comb_s[n_tasks * per:n_tasks * per + common] = cs
    comb_v[n_tasks * per:n_tasks * per + common] = cv
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
