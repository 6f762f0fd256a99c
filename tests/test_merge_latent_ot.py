"""`lsmerge.merge.latent.ot`: Gaussian OT (against a direct scipy Bures map), Ledoit-Wolf shrinkage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import gaussian_cloud
from lsmerge.errors import LsMergeError

from lsmerge.merge.latent.ot import OTShrinkageWarning, apply_map, fit_gaussian_ot, gaussian_fit, ledoit_wolf_shrinkage, ot_interpolate


def _bures_scipy(cs, ct):
    """A = S_s^{-1/2} (S_s^{1/2} S_t S_s^{1/2})^{1/2} S_s^{-1/2}, directly."""
    cs12 = np.real(scipy.linalg.sqrtm(cs))
    cs12_inv = np.linalg.inv(cs12)
    return cs12_inv @ np.real(scipy.linalg.sqrtm(cs12 @ ct @ cs12)) @ cs12_inv


def test_ot_maps_a_gaussian_cloud_onto_the_target_mean_and_covariance():
    src, tgt = gaussian_cloud(3000, 6, 0, shift=2.0), gaussian_cloud(2500, 6, 1, shift=-1.0, scale=0.3)
    A, b = fit_gaussian_ot(src, tgt, shrinkage="none", eps=0.0)
    # the map is the closed form, computed independently with scipy
    ms, mt = src.mean(0).numpy(), tgt.mean(0).numpy()
    cs = np.cov(src.numpy().T, bias=True)
    ct = np.cov(tgt.numpy().T, bias=True)
    A_ref = _bures_scipy(cs, ct)
    np.testing.assert_allclose(A.numpy(), A_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.numpy(), mt - ms @ A_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(A.numpy(), A.numpy().T, atol=1e-10)  # symmetric PSD
    assert np.linalg.eigvalsh(A.numpy()).min() > 0
    # pushed forward: the source cloud now has the target's first two moments
    mapped = apply_map(src, A, b).numpy()
    np.testing.assert_allclose(mapped.mean(0), mt, atol=1e-9)
    np.testing.assert_allclose(np.cov(mapped.T, bias=True), ct, rtol=1e-7, atol=1e-10)


def test_ot_interpolation_endpoints():
    zt, zs = gaussian_cloud(200, 4, 2).float(), gaussian_cloud(200, 4, 3, shift=5.0).float()
    assert torch.equal(ot_interpolate(zt, zs, 0.0), zt)
    only = ot_interpolate(zt, zs, 1.0, shrinkage="none")  # "OT only" ablation
    np.testing.assert_allclose(only.double().mean(0).numpy(), zt.double().mean(0).numpy(), atol=1e-4)
    mid = ot_interpolate(zt, zs, 0.25, shrinkage="none")
    torch.testing.assert_close(mid, 0.75 * zt + 0.25 * only)
    torch.testing.assert_close(ot_interpolate(zt, zs, 0.5, use_ot=False), 0.5 * zt + 0.5 * zs)  # no-OT ablation
    with pytest.raises(LsMergeError, match="shape"):
        ot_interpolate(zt, zs[:10], 0.5)


def test_ledoit_wolf_against_its_definition():
    x = gaussian_cloud(40, 10, 4).numpy()
    xc = x - x.mean(0)
    n, d = xc.shape
    s = xc.T @ xc / n
    m = np.trace(s) / d
    delta = np.linalg.norm(s - m * np.eye(d), "fro") ** 2 / d
    beta = sum(np.linalg.norm(np.outer(r, r) - s, "fro") ** 2 for r in xc) / (n**2 * d)
    assert ledoit_wolf_shrinkage(xc) == pytest.approx(min(beta, delta) / delta, rel=1e-9)
    # isotropic data needs strong shrinkage, strongly correlated data little
    assert ledoit_wolf_shrinkage(np.random.default_rng(0).standard_normal((20, 50))) > 0.5


def test_few_samples_shrink_with_a_warning_and_stay_finite():
    src, tgt = gaussian_cloud(12, 32, 5), gaussian_cloud(15, 32, 6, shift=1.0)
    with pytest.warns(OTShrinkageWarning, match="12 samples for 32 dimensions"):
        _, cov, s = gaussian_fit(src)
    assert 0 < s <= 1 and np.linalg.eigvalsh(cov).min() > 0
    with pytest.warns(OTShrinkageWarning):
        A, b = fit_gaussian_ot(src, tgt)
    assert torch.isfinite(A).all() and torch.isfinite(b).all()
    with pytest.warns(OTShrinkageWarning):
        out = ot_interpolate(tgt[:12].float(), src.float(), 0.1)
    assert torch.isfinite(out).all()
    with pytest.raises(LsMergeError, match="shrinkage"):
        gaussian_fit(gaussian_cloud(50, 3, 7), shrinkage=1.5)
