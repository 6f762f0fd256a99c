"""Closed-form Gaussian optimal transport between latent clouds (POT's `ot.gaussian`).

Each cloud ``X`` (n, d) is summarised by its mean and (shrunk) covariance. The
2-Wasserstein (Monge) map between N(mu_s, S_s) and N(mu_t, S_t) is affine:

    T(x) = mu_t + A (x - mu_s),
    A = S_s^{-1/2} (S_s^{1/2} S_t S_s^{1/2})^{1/2} S_s^{-1/2}          (symmetric, PSD)

computed by `ot.gaussian.bures_wasserstein_mapping` in float64. It pushes the source's mean
and covariance exactly onto the target's. LS-Merge then interpolates in the aligned space:
``Z = (1 - lam) Z_target + lam T(Z_source)``.

Covariance estimate: with fewer samples than dimensions the empirical covariance is
singular and ``S_s^{-1/2}`` blows up, so it is shrunk toward ``(tr S / d) I`` with the
Ledoit-Wolf (2004) coefficient (the same estimator as scikit-learn's `ledoit_wolf`), and an
`OTShrinkageWarning` is issued. ``shrinkage="auto"`` does this only when n <= d,
``"ledoit_wolf"`` always, a float in [0, 1] uses that coefficient. A ridge ``eps * tr(S)/d``
(relative, default 1e-8) is always added so degenerate clouds (e.g. zero-padded dimensions)
stay invertible.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import torch

from lsmerge.errors import LsMergeError


class OTShrinkageWarning(UserWarning):
    """Covariance shrinkage was applied because a latent cloud has fewer samples than dimensions."""


def ledoit_wolf_shrinkage(x: np.ndarray) -> float:
    """Ledoit-Wolf coefficient s in [0, 1] for centred samples x (n, d).

    With S = x^T x / n, m = tr(S) / d:
    delta = ||S - m I||_F^2 / d,  beta = (1 / (d n^2)) sum_k ||x_k x_k^T - S||_F^2 (clipped to delta),
    s = beta / delta.
    """
    n, d = x.shape
    if n == 0:
        return 1.0
    x2 = x**2
    emp_cov_trace = x2.sum(0) / n
    mu = emp_cov_trace.sum() / d
    beta_ = float((x2.T @ x2).sum())
    delta_ = float(((x.T @ x) ** 2).sum()) / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * emp_cov_trace.sum() + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


def gaussian_fit(x: torch.Tensor | np.ndarray, shrinkage: str | float = "auto", eps: float = 1e-8,
                 what: str = "latent cloud") -> tuple[np.ndarray, np.ndarray, float]:
    """(n, d) samples -> (mean (d,), covariance (d, d), shrinkage used), float64.

    cov = (1 - s) S + s (tr S / d) I + eps (tr S / d) I, S the biased empirical covariance.
    """
    x = np.asarray(x.detach().double().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise LsMergeError(f"{what} must be a (n_samples, dim) array with n_samples >= 1, got shape {x.shape}.")
    n, d = x.shape
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / n
    if shrinkage == "auto":
        s = ledoit_wolf_shrinkage(xc) if n <= d else 0.0
    elif shrinkage == "ledoit_wolf":
        s = ledoit_wolf_shrinkage(xc)
    elif shrinkage in ("none", None):
        s = 0.0
    else:
        try:
            s = float(shrinkage)
        except (TypeError, ValueError):
            s = -1.0
        if not 0.0 <= s <= 1.0:
            raise LsMergeError(f"shrinkage must be 'auto', 'ledoit_wolf', 'none' or a number in [0, 1], got {shrinkage!r}.")
    if n <= d:
        how = (f"covariance shrunk toward the identity (coefficient {s:.3f})" if s > 0
               else "covariance is singular; only the ridge keeps it invertible")
        warnings.warn(
            f"{what}: {n} samples for {d} dimensions; {how}. Use a codec with more tokens per tensor "
            "or a smaller latent_dim for a better-conditioned OT map.",
            OTShrinkageWarning,
            stacklevel=2,
        )
    scale = max(np.trace(cov) / d, 1e-30)
    cov = (1 - s) * cov + (s + eps) * scale * np.eye(d)
    return mean, (cov + cov.T) / 2, s


def bures_map(mean_s: np.ndarray, cov_s: np.ndarray, mean_t: np.ndarray, cov_t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A (d, d), b (d,)) with T(x) = x A + b, from POT's closed form (A symmetric)."""
    A, b = ot.gaussian.bures_wasserstein_mapping(mean_s, mean_t, cov_s, cov_t)
    A, b = np.real(A), np.real(np.asarray(b)).reshape(-1)
    if not (np.isfinite(A).all() and np.isfinite(b).all()):
        raise LsMergeError("the Gaussian OT map is not finite (degenerate covariance); raise `shrinkage`.")
    return A, b


def fit_gaussian_ot(source: torch.Tensor, target: torch.Tensor, shrinkage: str | float = "auto",
                    eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit T mapping the source cloud (n_s, d) onto the target cloud (n_t, d): (A (d, d), b (d,)), float64."""
    if source.shape[1] != target.shape[1]:
        raise LsMergeError(f"OT needs clouds of equal dimension, got {source.shape[1]} and {target.shape[1]}; "
                           "match latent dimensions first.")
    ms, cs, _ = gaussian_fit(source, shrinkage, eps, "source latent cloud")
    mt, ct, _ = gaussian_fit(target, shrinkage, eps, "target latent cloud")
    A, b = bures_map(ms, cs, mt, ct)
    return torch.from_numpy(A), torch.from_numpy(b)


def apply_map(x: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """T(x) = x A + b for rows x (n, d); returns x's dtype."""
    return (x.double() @ A + b).to(x.dtype)


def ot_interpolate(z_target: torch.Tensor, z_source: torch.Tensor, lam: float, *, use_ot: bool = True,
                   shrinkage: str | float = "auto", eps: float = 1e-8) -> torch.Tensor:
    """Z = (1 - lam) Z_target + lam T(Z_source) with both (n_tokens, d); T = identity if not `use_ot`.

    lam = 0 returns Z_target exactly; lam = 1 is "OT only" (the mapped source).
    """
    if z_target.shape != z_source.shape:
        raise LsMergeError(f"latent sets differ in shape {tuple(z_target.shape)} vs {tuple(z_source.shape)}; "
                           "project the source to the target's shape first (lsmerge.merge.latent.depth).")
    if lam == 0:
        return z_target.clone()
    mapped = apply_map(z_source, *fit_gaussian_ot(z_source, z_target, shrinkage, eps)) if use_ot else z_source
    return (1 - lam) * z_target + lam * mapped
