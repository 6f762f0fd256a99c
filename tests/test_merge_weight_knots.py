"""`lsmerge.merge.weight.knots` (KnOTS-TIES, KnOTS-DARE) against a numpy transcription of the
paper's steps (joint SVD of the concatenated task matrices, TIES / DARE on the per-task
coefficients S V_i^T, base + U merged), the joint basis itself, identities, and the whole
command on tiny models (embeddings and 1-D tensors take the plain TIES / DARE-TIES fallback)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lsmerge.merge.weight.base import tensor_seed
from lsmerge.merge.weight.knots import joint_basis, knots_dare, knots_ties


def ties_reference(coeffs: np.ndarray, weights, densities, lam: float, trim: bool = True) -> np.ndarray:
    """TIES on stacked vectors (N, ...): keep each row's k = max(1, floor(d n)) largest |c|,
    elect sign(sum_i w_i c_i) (+1 at 0), disjoint mean of the agreeing nonzero w_i c_i."""
    rows = []
    for c, d in zip(coeffs, densities):
        c = c.copy()
        if trim and d < 1:
            flat = c.reshape(-1)
            k = max(1, int(d * flat.size))
            drop = np.argsort(-np.abs(flat), kind="stable")[k:]
            flat[drop] = 0
        rows.append(c)
    w = np.asarray(weights, dtype=float).reshape(-1, *([1] * (coeffs.ndim - 1)))
    weighted = np.stack(rows) * w
    elected = np.where(weighted.sum(0) >= 0, 1.0, -1.0)
    agree = (np.sign(weighted) == elected).astype(float)
    div = (agree * w).sum(0)
    div[div == 0] = 1
    return lam * (weighted * agree).sum(0) / div


def joint_reference(base, xs):
    deltas = [x - base for x in xs]
    u, s, vt = np.linalg.svd(np.concatenate(deltas, axis=1), full_matrices=False)
    n_in = base.shape[1]
    coeffs = np.stack([np.diag(s) @ vt[:, i * n_in:(i + 1) * n_in] for i in range(len(xs))])
    return u, coeffs


def _case(shape, n_tasks, seed=0, rank=None):
    g = np.random.default_rng(seed)
    base = g.standard_normal(shape)
    xs = []
    for i in range(n_tasks):
        d = g.standard_normal(shape) if rank is None else g.standard_normal((shape[0], rank)) @ g.standard_normal((rank, shape[1]))
        xs.append(base + d * (0.5 + i))
    return base, xs


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.mark.parametrize("shape", [(12, 5), (6, 9)])
@pytest.mark.parametrize("n_tasks", [2, 3])
@pytest.mark.parametrize("density", [1.0, 0.3])
def test_knots_ties_matches_the_reference_steps(shape, n_tasks, density):
    base, xs = _case(shape, n_tasks, seed=n_tasks)
    weights, densities = [1.0, 0.7, 1.2][:n_tasks], [density, density * 0.8, density][:n_tasks]
    u, coeffs = joint_reference(base, xs)
    want = base + u @ ties_reference(coeffs, weights, densities, 0.6)
    got = knots_ties(_t(base), [_t(x) for x in xs], weights, densities, lam=0.6)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)


@pytest.mark.parametrize("density", [0.9, 0.2])
def test_knots_dare_matches_the_reference_steps(density):
    base, xs = _case((10, 6), 3, seed=11)
    seeds = [tensor_seed(5, "w", i) for i in range(3)]
    u, coeffs = joint_reference(base, xs)
    dropped = []
    for c, seed in zip(coeffs, seeds):  # the same Bernoulli(density) draw: uniforms from a seeded CPU generator
        keep = torch.rand(c.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).numpy() < density
        dropped.append(c * keep / density)
    want = base + u @ ties_reference(np.stack(dropped), [1.0] * 3, [1.0] * 3, 0.4, trim=False)
    got = knots_dare(_t(base), [_t(x) for x in xs], [1.0] * 3, [density] * 3, seeds, lam=0.4)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)


def test_joint_basis_is_exact_and_drops_the_null_space():
    base, xs = _case((16, 12), 3, seed=4, rank=2)  # three rank-2 task matrices: joint rank 6
    deltas = torch.stack([_t(x - base) for x in xs])
    u, coeffs = joint_basis(deltas)
    assert u.shape == (16, 6) and coeffs.shape == (3, 6, 12)
    torch.testing.assert_close(u.T @ u, torch.eye(6, dtype=torch.float64))
    torch.testing.assert_close(torch.einsum("or,nri->noi", u, coeffs), deltas)
    u0, c0 = joint_basis(torch.zeros(2, 4, 3))
    assert u0.shape == (4, 0) and c0.shape == (2, 0, 3)
    assert torch.equal(knots_ties(torch.ones(4, 3), [torch.ones(4, 3)] * 2, [1, 1], [0.5, 0.5]), torch.ones(4, 3))


def test_knots_identities():
    base, xs = _case((8, 6), 2, seed=6)
    b, x = _t(base), _t(xs[0])
    for fn, extra in ((knots_ties, {}), (knots_dare, {"seeds": [1, 2]})):
        # identical tasks, nothing trimmed or dropped, lambda 1: the expert; lambda 0: the base
        torch.testing.assert_close(fn(b, [x, x.clone()], [1.0, 1.0], [1.0, 1.0], lam=1.0, **extra), x, atol=1e-10, rtol=0)
        assert torch.equal(fn(b, [x, _t(xs[1])], [1.0, 1.0], [0.5, 0.5], lam=0.0, **extra), b)
    torch.testing.assert_close(knots_ties(b, [x], [1.0], [1.0], lam=1.0), x, atol=1e-10, rtol=0)


def test_knots_vectors_and_tables_take_plain_ties():
    from lsmerge.merge.weight.ties import ties

    g = torch.Generator().manual_seed(2)
    b = torch.randn(9, generator=g)
    xs = [b + torch.randn(9, generator=g) for _ in range(3)]
    torch.testing.assert_close(knots_ties(b, xs, [1.0] * 3, [0.5] * 3, lam=0.5), ties(b, xs, [1.0] * 3, [0.5] * 3, 0.5))
    b2 = torch.randn(5, 4, generator=g)
    x2 = [b2 + torch.randn(5, 4, generator=g) for _ in range(2)]
    torch.testing.assert_close(knots_ties(b2, x2, [1.0] * 2, [0.5] * 2, matrix=False), ties(b2, x2, [1.0] * 2, [0.5] * 2, 0.5))


def test_merge_weights_command_runs_every_task_matrix_method(tiny_world, tmp_path):
    """Through `lsmerge merge-weights`: q_proj takes the SVD path, the embedding table (kind
    `embed`) and the norms the fallback, bit for bit as the pure functions give them."""
    from safetensors.torch import load_file

    from lsmerge.cli import main
    from lsmerge.merge.weight.iso import iso_c, iso_cts
    from lsmerge.merge.weight.tsv import tsv

    sd = [load_file(p / "model.safetensors") for p in (tiny_world.base, tiny_world.e1, tiny_world.e2)]
    q = "model.layers.0.self_attn.q_proj.weight"
    emb, norm = "model.embed_tokens.weight", "model.norm.weight"

    def pick(name):
        return sd[0][name], [sd[1][name], sd[2][name]]

    expected = {
        "tsv": lambda n, m: tsv(*pick(n), matrix=m),
        "iso_c": lambda n, m: iso_c(*pick(n), matrix=m),
        "iso_cts": lambda n, m: iso_cts(*pick(n), matrix=m),
        "knots_ties": lambda n, m: knots_ties(*pick(n), [1.0] * 2, [1.0] * 2, 0.5, matrix=m),
        "knots_dare": lambda n, m: knots_dare(*pick(n), [1.0] * 2, [0.2] * 2, [tensor_seed(0, n, i) for i in range(2)], 0.4,
                                              matrix=m),  # DARE masks: seeded per tensor name and model index
    }
    for method, fn in expected.items():
        out = tmp_path / method
        main(["merge-weights", "--models", f"[{tiny_world.e1},{tiny_world.e2}]", "--base_model", str(tiny_world.base),
              "--method", method, "--out", str(out), "--progress", "false"])
        got = load_file(out / "model.safetensors")
        for name, matrix in ((q, True), (emb, False), (norm, False)):
            want = fn(name, matrix).to(sd[0][name].dtype)
            assert torch.equal(got[name], want), (method, name)
        assert not torch.equal(got[q], fn(q, False).to(got[q].dtype)), method  # the SVD path differs from the fallback
