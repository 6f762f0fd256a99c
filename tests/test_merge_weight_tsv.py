"""`lsmerge.merge.weight.tsv` (TSV-M) against a numpy transcription of the reference code's
steps (per-task SVD, blocks placed in a zero-padded (m, k) frame, polar factors through the
SVD of the frames), its identities, rank-fraction edges, and the polar factor it relies on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsmerge.merge.weight.spectral import polar_factor
from lsmerge.merge.weight.tsv import tsv


EPS32 = float(np.finfo(np.float32).eps)


def zero_null_components(s: np.ndarray, scale: float, shape) -> np.ndarray:
    """s with the numerically-zero entries (s <= scale * max(m, n) * eps(float32)) set to 0."""
    return np.where(s > scale * max(shape) * EPS32, s, 0.0)


def polar_with_cut(a: np.ndarray) -> np.ndarray:
    """P Q^T over the components above the numerical-zero cut (a zero column stays zero)."""
    p, s, qt = np.linalg.svd(a, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(a.shape) * EPS32
    return p[:, keep] @ qt[keep]


def tsv_reference(base: np.ndarray, xs: list[np.ndarray], alpha: float = 1.0, fraction: float | None = None,
                  null_cut: bool = False) -> np.ndarray:
    """TSV-M as the paper's code writes it (compute_and_sum_svd_mem_reduction), r >= 1; the
    frames are padded to k = min(m, n) columns when the N blocks fit, else just concatenated.
    null_cut: each task's numerically-zero singular components become zero columns (as the
    padding), and the polar factors leave out their zero components (`spectral`)."""
    n_tasks = len(xs)
    m, n = base.shape
    k = min(m, n)
    r = max(1, int(k * (1 / n_tasks if fraction is None else fraction)))
    width = max(k, n_tasks * r)
    sum_u, sum_s, sum_v = np.zeros((m, width)), np.zeros(width), np.zeros((width, n))
    for i, x in enumerate(xs):
        u, s, vt = np.linalg.svd(x - base, full_matrices=False)
        if null_cut:
            s = zero_null_components(s, s[0], (m, n))
            u, vt = u * (s > 0), vt * (s > 0)[:, None]
        sum_u[:, i * r:(i + 1) * r] = u[:, :r]
        sum_s[i * r:(i + 1) * r] = s[:r]
        sum_v[i * r:(i + 1) * r, :] = vt[:r]
    if null_cut:
        return base + alpha * (polar_with_cut(sum_u) @ np.diag(sum_s) @ polar_with_cut(sum_v))
    uu, _, vu = np.linalg.svd(sum_u, full_matrices=False)
    uv, _, vv = np.linalg.svd(sum_v, full_matrices=False)
    return base + alpha * (uu @ vu @ np.diag(sum_s) @ uv @ vv)


def _case(shape, n_tasks, seed=0):
    g = np.random.default_rng(seed)
    base = g.standard_normal(shape)
    return base, [base + g.standard_normal(shape) * (0.5 + i) for i in range(n_tasks)]


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (16, 16)])
@pytest.mark.parametrize("n_tasks", [2, 3, 4])
@pytest.mark.parametrize("fraction", [None, 0.1, 0.5])
def test_tsv_matches_the_reference_steps(shape, n_tasks, fraction):
    base, xs = _case(shape, n_tasks, seed=n_tasks)
    want = tsv_reference(base, xs, alpha=0.7, fraction=fraction)
    got = tsv(_t(base), [_t(x) for x in xs], alpha=0.7, rank_fraction=fraction)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)


def test_tsv_rank_fraction_above_one_over_n_overlaps_the_blocks():
    """r N > k: the concatenated singular vectors are wider than the matrix; the polar factor
    then has orthonormal rows (the reference frame cannot hold them; the formula still does)."""
    base, xs = _case((6, 10), 3, seed=7)
    got = tsv(_t(base), [_t(x) for x in xs], rank_fraction=1.0)
    np.testing.assert_allclose(got.numpy(), tsv_reference(base, xs, fraction=1.0), atol=1e-10)


def test_tsv_tiny_rank_keeps_one_component_per_task():
    """rank_fraction * k < 1 still keeps r = 1 per task: the merged task matrix has rank <= N."""
    base, xs = _case((10, 10), 3, seed=2)
    got = tsv(_t(base), [_t(x) for x in xs], rank_fraction=0.01)
    assert int(torch.linalg.matrix_rank(got - _t(base))) == 3
    np.testing.assert_allclose(got.numpy(), tsv_reference(base, xs, fraction=0.01), atol=1e-10)


def test_tsv_identities():
    base, xs = _case((9, 7), 2, seed=3)
    b, x = _t(base), _t(xs[0])
    # one task, full rank: the expert itself; alpha scales the task matrix; alpha 0 is the base
    torch.testing.assert_close(tsv(b, [x], rank_fraction=1.0), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(tsv(b, [x], alpha=0.5, rank_fraction=1.0), b + 0.5 * (x - b), atol=1e-12, rtol=0)
    assert torch.equal(tsv(b, [x, _t(xs[1])], alpha=0.0), b)
    assert torch.equal(tsv(b, [b.clone(), b.clone()]), b)  # no task changed it: the base, no SVD
    # identical tasks: the duplicated singular vectors count once (the expert at full rank,
    # its best rank-r approximation at r = k / 2)
    torch.testing.assert_close(tsv(b, [x, x.clone()], rank_fraction=1.0), x, atol=1e-10, rtol=0)
    u, s, vh = torch.linalg.svd(x - b, full_matrices=False)
    truncated = b + (u[:, :3] * s[:3]) @ vh[:3]
    torch.testing.assert_close(tsv(b, [x, x.clone()]), truncated, atol=1e-10, rtol=0)


def _low_rank_case(shape, n_tasks, rank, seed):
    g = np.random.default_rng(seed)
    base = g.standard_normal(shape)
    return base, [base + g.standard_normal((shape[0], rank)) @ g.standard_normal((rank, shape[1])) for _ in range(n_tasks)]


@pytest.mark.parametrize("shape", [(12, 8), (8, 12), (16, 16)])
@pytest.mark.parametrize("n_tasks,rank", [(2, 2), (3, 1), (2, 6)])
@pytest.mark.parametrize("fraction", [None, 0.5])
def test_tsv_of_low_rank_tasks_is_the_reference_with_null_components_zeroed(shape, n_tasks, rank, fraction):
    """Tasks of rank < r: their numerically-zero singular vectors (LAPACK's arbitrary choice) are
    left out, i.e. the reference with those components as zero columns, not as unit vectors."""
    base, xs = _low_rank_case(shape, n_tasks, rank, seed=rank + n_tasks)
    got = tsv(_t(base), [_t(x) for x in xs], alpha=0.8, rank_fraction=fraction)
    np.testing.assert_allclose(got.numpy(), tsv_reference(base, xs, 0.8, fraction, null_cut=True), atol=1e-9)


def _lora_like_tasks(shape, n_tasks, rank, seed):
    """float32 experts W + B_i A_i: rank-`rank` task matrices plus their float32 rounding residue."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(*shape, generator=g) * 0.05
    return base, [base + torch.randn(shape[0], rank, generator=g) @ torch.randn(rank, shape[1], generator=g) * 0.01
                  for _ in range(n_tasks)]


@pytest.mark.parametrize("shape", [(96, 160), (160, 96)])
def test_tsv_of_lora_like_tasks_is_a_function_of_the_tasks(shape):
    """float32 LoRA-like tasks: the float32 merge equals the float64 merge of the same values
    within float32 rounding (the SVD route with the null-space singular vectors kept differed by
    60-80 % on the SmolLM2 pair), and it lies in the tasks' joint column and row spans."""
    base, xs = _lora_like_tasks(shape, 2, 4, seed=shape[0])
    got = tsv(base, xs) - base
    want = tsv(base.double(), [x.double() for x in xs]) - base.double()
    assert float((got.double() - want).norm() / want.norm()) < 1e-5
    joint = torch.cat([x.double() - base.double() for x in xs], 1)
    cols = torch.linalg.svd(joint, full_matrices=False)[0][:, :8]
    rows = torch.linalg.svd(torch.cat([x.double() - base.double() for x in xs], 0), full_matrices=False)[2][:8]
    outside = want - cols @ (cols.T @ want)
    assert float(outside.norm() / want.norm()) < 1e-6
    assert float((want - (want @ rows.T) @ rows).norm() / want.norm()) < 1e-6


def test_tsv_vectors_and_float32():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(5, generator=g)
    xs = [b + torch.randn(5, generator=g) for _ in range(3)]
    torch.testing.assert_close(tsv(b, xs, alpha=2.0), b + 2.0 * torch.stack([x - b for x in xs]).mean(0))
    # a 2-D tensor told it is not a task matrix (an embedding table) takes the same mean
    b2 = torch.randn(6, 4, generator=g)
    x2 = [b2 + torch.randn(6, 4, generator=g) for _ in range(2)]
    torch.testing.assert_close(tsv(b2, x2, matrix=False), (x2[0] + x2[1]) / 2)
    # bf16 checkpoints are computed in float32
    got = tsv(b2.bfloat16(), [x.bfloat16() for x in x2])
    want = tsv(b2.bfloat16().double(), [x.bfloat16().double() for x in x2])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)


def test_polar_factor_is_the_nearest_orthonormal_matrix():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(8, 5, generator=g, dtype=torch.float64)
    p = polar_factor(a)
    torch.testing.assert_close(p.T @ p, torch.eye(5, dtype=torch.float64))
    # Procrustes: argmax_Q tr(Q^T a) over orthonormal Q; P^T a is symmetric positive definite
    sym = p.T @ a
    torch.testing.assert_close(sym, sym.T)
    assert float(torch.linalg.eigvalsh(sym).min()) > 0
    # rank-deficient: [A A] -> [A A] / sqrt(2) for A with orthonormal columns
    q, _ = torch.linalg.qr(a)
    torch.testing.assert_close(polar_factor(torch.cat([q, q], 1)), torch.cat([q, q], 1) / 2 ** 0.5)
    assert torch.equal(polar_factor(torch.zeros(4, 3)), torch.zeros(4, 3))
