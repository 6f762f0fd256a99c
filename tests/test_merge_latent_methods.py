"""The LS-Merge methods (`lsmerge.merge.latent`'s registry and its method modules): each operator on
hand-made latents; every registered method, run by `lsmerge merge` on tiny models, gives back a model
merged with copies of itself; and a method added with one decorator is a working command method."""

from __future__ import annotations

import pytest
import torch

from lsmerge.codecs.base import TensorLatent
from lsmerge.errors import LsMergeError
from lsmerge.io import open_checkpoint
from lsmerge.merge import latent as L
from lsmerge.merge.latent.command import merge


def identity_run(method: L.LatentMethod, w) -> dict:
    """Arguments under which `method` must return model e1: its inputs are copies of e1 (as many as
    it takes; one for N), task vectors are taken against another model with lam = 1, nothing is
    trimmed or dropped (density 1), posterior samples are the mean (temperature 0)."""
    n = {"1": 1, "2": 2, "N": 1}[method.models]
    kw = dict(method=method.name, models=[str(w.e1), str(w.e1_copy)][:n], density=1.0, temperature=0.0)
    if method.needs_base:
        kw.update(base=str(w.base), lam=1.0)
    return kw


@pytest.mark.parametrize("name", list(L.METHODS))
def test_merging_copies_of_a_model_returns_it(name, tiny_world, tmp_path):
    method = L.get_method(name)
    out = merge(**identity_run(method, tiny_world), out=str(tmp_path / "out"), chunk_size=16, progress=False)
    merged, e1, base = open_checkpoint(out), open_checkpoint(tiny_world.e1), open_checkpoint(tiny_world.base)
    assert merged.names == e1.names
    for t in e1.names:
        torch.testing.assert_close(merged.get(t), e1.get(t), rtol=1e-4, atol=1e-5, msg=f"{name}: {t}")
    far = [t for t in e1.names if not torch.allclose(e1.get(t), base.get(t), rtol=1e-2, atol=1e-3)]
    assert len(far) > len(e1.names) // 2  # the check can fail: the other model differs


def test_a_new_method_is_one_decorated_function(tiny_world, tmp_path):
    @L.register("first_of_two_test", models="2")
    def first_of_two(tensors, base, p):
        """z = z_1."""
        return L.linear_tensors(tensors, [1.0, 0.0])

    try:
        assert "first_of_two_test" in L.METHODS
        out = merge(method="first_of_two_test", models=[str(tiny_world.e1), str(tiny_world.e2)], chunk_size=16,
                    out=str(tmp_path / "out"), progress=False)
        merged, e1 = open_checkpoint(out), open_checkpoint(tiny_world.e1)
        for t in e1.names:
            torch.testing.assert_close(merged.get(t), e1.get(t), rtol=1e-4, atol=1e-5)
    finally:
        del L.METHODS["first_of_two_test"]


# -- the operators on hand-made latents ---------------------------------------------------------
def _latent(seed, n=6, d=4):
    g = torch.Generator().manual_seed(seed)
    return TensorLatent(z=torch.randn(n, d, generator=g), norm=torch.tensor([0.01 * seed, 0.02 + 0.01 * seed]), shape=(n * d,))


def test_lerp_endpoints_are_exact_and_midpoint_linear():
    a, b = _latent(1), _latent(2)
    for lam, want in ((0.0, a), (1.0, b)):
        out = L.apply("lerp", [a, b], lam=lam)
        assert torch.equal(out.z, want.z) and torch.equal(out.norm, want.norm)
    mid = L.apply("lerp", [a, b], lam=0.25)
    torch.testing.assert_close(mid.z, 0.75 * a.z + 0.25 * b.z)
    torch.testing.assert_close(mid.norm, 0.75 * a.norm + 0.25 * b.norm)


def test_barycenter_one_hot_and_weight_checks():
    lats = [_latent(i) for i in range(3)]
    out = L.apply("soup", lats, weights=[0.0, 1.0, 0.0])
    assert torch.equal(out.z, lats[1].z) and torch.equal(out.norm, lats[1].norm)
    torch.testing.assert_close(L.apply("soup", lats, weights=[0.2, 0.3, 0.5]).z, 0.2 * lats[0].z + 0.3 * lats[1].z + 0.5 * lats[2].z)
    with pytest.raises(LsMergeError, match="non-negative"):
        L.apply("soup", lats, weights=[-0.5, 1.0, 0.5])
    with pytest.raises(LsMergeError, match="sum to 1"):
        L.apply("soup", lats, weights=[0.5, 0.5, 0.5])
    with pytest.raises(LsMergeError, match="one weight per model"):
        L.apply("soup", lats, weights=[1.0])


def test_task_arithmetic_ties_dare_on_latent_task_vectors():
    base, x1, x2 = _latent(0), _latent(1), _latent(2)
    ta = L.apply("task_arithmetic", [x1, x2], base, weights=[0.5, 0.25])
    torch.testing.assert_close(ta.z, base.z + 0.5 * (x1.z - base.z) + 0.25 * (x2.z - base.z))
    assert torch.equal(L.apply("task_arithmetic", [x1], base, weights=[0.0]).z, base.z)
    # TIES at density 1 with one expert is the plain task vector
    torch.testing.assert_close(L.apply("ties", [x1], base, weights=[1.0], density=1.0).z, x1.z)
    # TIES keeps only entries whose sign agrees with the elected one
    t1 = base.with_z(base.z + torch.tensor([[1.0, -1.0, 2.0, 0.0]] * 6))
    t2 = base.with_z(base.z + torch.tensor([[3.0, 1.0, -1.0, 0.0]] * 6))
    merged = L.apply("ties", [t1, t2], base, weights=[1.0, 1.0], density=1.0).z - base.z
    torch.testing.assert_close(merged[0], torch.tensor([2.0, 1.0, 2.0, 0.0]))
    # DARE: seeded by (seed, name); expectation equals the task vector
    d1 = L.apply("dare", [x1], base, weights=[1.0], density=0.5, seed=3, name="w")
    assert torch.equal(d1.z, L.apply("dare", [x1], base, weights=[1.0], density=0.5, seed=3, name="w").z)
    assert not torch.equal(d1.z, L.apply("dare", [x1], base, weights=[1.0], density=0.5, seed=4, name="w").z)
    kept = (d1.z - base.z) != 0
    torch.testing.assert_close((d1.z - base.z)[kept], 2 * (x1.z - base.z)[kept])
    with pytest.raises(LsMergeError, match="density"):
        L.apply("ties", [x1], base, weights=[1.0], density=0.0)


def test_self_merge_samples_and_prior_mix():
    lat = _latent(5)
    lat.logvar = torch.full_like(lat.z, -2.0)
    g = torch.Generator().manual_seed(0)
    draws = L.posterior_samples(lat, 2000, 1.0, generator=g)
    stack = torch.stack([d.z for d in draws])
    torch.testing.assert_close(stack.std(0).mean(), torch.tensor(float(torch.exp(torch.tensor(-1.0)))), atol=0.01, rtol=0)
    torch.testing.assert_close(L.apply("self", draws).z, lat.z, atol=0.02, rtol=0)
    assert all(torch.equal(d.z, lat.z) for d in L.posterior_samples(lat, 3, 0.0))
    prior = torch.randn_like(lat.z)
    torch.testing.assert_close(L.posterior_prior_mix(lat, prior, 0.3).z, 0.7 * lat.z + 0.3 * prior)
