"""ComBat site harmonisation with a learn/apply split (pure numpy).

ComBat (Johnson et al. 2007; Fortin et al. 2017, 2018) models every feature ``v`` of
subject ``j`` at site ``i`` as ``x = alpha + C beta + gamma_i + sqrt(delta_i) e``: a
location ``gamma_i`` and a scale ``delta_i`` per site, with covariates ``C`` (age, sex,
motion ...) whose effects are protected. The site parameters are shrunk towards their
mean over features by empirical Bayes (normal prior on ``gamma``, inverse-gamma prior on
``delta``). The maths follow neuroCombat (Fortin's Python port, the one neuroHarmonize
wraps); ``tests/unit/test_harmonize.py`` checks :func:`fit_combat` against values computed
with neuroCombat 0.2.12.

:func:`fit_combat` estimates everything on the training subjects only;
:func:`apply_combat` applies those frozen estimates to any subjects. A subject from a site
the fit never saw cannot get that site's parameters: it is standardised with the pooled
training estimates only (``gamma = 0``, ``delta = 1``: the site is treated as the average
training site), and :func:`apply_combat` reports the unseen sites so the caller can say so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpnbids.exceptions import InputError


#: What :func:`fit_combat` can shrink by empirical Bayes.
SHRINK = ("location+scale", "scale", "none")


@dataclass(frozen=True)
class CombatFit:
    """Frozen ComBat estimates (features ``P``, sites ``B``, covariate columns ``Q``).

    ``features``: the column indices that were harmonised (those with non-zero pooled
    variance); the others are passed through unchanged.
    """

    sites: tuple
    features: np.ndarray
    grand_mean: np.ndarray   # (P,)
    var_pooled: np.ndarray   # (P,)
    beta: np.ndarray         # (Q, P) covariate effects
    gamma_star: np.ndarray   # (B, P)
    delta_star: np.ndarray   # (B, P)
    n_features: int

    def to_arrays(self) -> dict:
        """The fit as named arrays (for ``np.savez``); :meth:`from_arrays` reads them."""
        return {"sites": np.asarray([str(s) for s in self.sites]),
                "features": self.features, "grand_mean": self.grand_mean,
                "var_pooled": self.var_pooled, "beta": self.beta,
                "gamma_star": self.gamma_star, "delta_star": self.delta_star,
                "n_features": np.asarray(self.n_features)}

    @classmethod
    def from_arrays(cls, arrays) -> "CombatFit":
        return cls(tuple(str(s) for s in arrays["sites"]), np.asarray(arrays["features"]),
                   *(np.asarray(arrays[k], dtype=np.float64) for k in
                     ("grand_mean", "var_pooled", "beta", "gamma_star", "delta_star")),
                   int(arrays["n_features"]))


def _one_hot(sites, levels) -> np.ndarray:
    sites = np.asarray([str(s) for s in sites])
    return (sites[:, None] == np.asarray(levels)[None, :]).astype(np.float64)


def _inverse_gamma_priors(delta_hat):
    m = delta_hat.mean(axis=1)
    s2 = delta_hat.var(axis=1, ddof=1)
    s2 = np.where(s2 > 0, s2, np.finfo(float).tiny)
    return (2 * s2 + m ** 2) / s2, (m * s2 + m ** 3) / s2


def _eb_solution(s_data, onehot, gamma_hat, delta_hat, *, tol=1e-4, max_iter=1000):
    """Empirical-Bayes site location and scale (neuroCombat's ``it_sol``, all sites at once)."""
    gamma_bar = gamma_hat.mean(axis=1, keepdims=True)
    t2 = gamma_hat.var(axis=1, ddof=1, keepdims=True)
    a_prior, b_prior = (v[:, None] for v in _inverse_gamma_priors(delta_hat))
    n = onehot.sum(axis=0)[:, None]
    g_old, d_old = gamma_hat.copy(), delta_hat.copy()
    for _ in range(max_iter):
        g_new = (t2 * n * gamma_hat + d_old * gamma_bar) / (t2 * n + d_old)
        sum2 = np.stack([((s_data[onehot[:, b] > 0] - g_new[b]) ** 2).sum(axis=0)
                         for b in range(onehot.shape[1])])
        d_new = (0.5 * sum2 + b_prior) / (n / 2.0 + a_prior - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            change = max(np.nanmax(np.abs(g_new - g_old) / np.abs(g_old)),
                         np.nanmax(np.abs(d_new - d_old) / d_old))
        g_old, d_old = g_new, d_new
        if change < tol:
            break
    return g_old, d_old


def fit_combat(x, sites, covariates=None, *, shrink: str = "location+scale") -> CombatFit:
    """Estimate ComBat on training data ``x`` (S, P) from ``sites`` (S,), protecting the
    effects of ``covariates`` (S, Q; already encoded as numbers, no intercept column).

    ``shrink``: which site parameters empirical Bayes shrinks towards their mean over
    features: ``"location+scale"`` (neuroCombat's default), ``"scale"`` (each feature keeps
    its own site location; see :data:`dpnbids.learn.confounds.COMBAT_SHRINK` for why
    dpnbids uses it on voxel maps) or ``"none"`` (the plain location/scale model)."""
    if shrink not in SHRINK:
        raise InputError(f"shrink must be one of {', '.join(SHRINK)}; got {shrink!r}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"ComBat expects subjects x features; got shape {x.shape}")
    levels = tuple(sorted({str(s) for s in sites}))
    onehot = _one_hot(sites, levels)
    counts = onehot.sum(axis=0)
    if len(levels) < 2:
        raise InputError(f"ComBat needs at least two sites among the training subjects; "
                         f"got only {levels[0]!r}. Drop `harmonize`, or use a column that "
                         "varies between subjects.")
    if counts.min() < 2:
        small = [s for s, c in zip(levels, counts) if c < 2]
        raise InputError(f"ComBat needs at least two training subjects per site to estimate "
                         f"its scale; site(s) {small} have one. Merge small sites in the "
                         "participants.tsv column or drop `harmonize`.")
    cov = np.zeros((x.shape[0], 0)) if covariates is None else \
        np.asarray(covariates, dtype=np.float64).reshape(x.shape[0], -1)
    design = np.hstack([onehot, cov])
    b_hat = np.linalg.lstsq(design, x, rcond=None)[0]
    resid = x - design @ b_hat
    var_pooled = (resid ** 2).mean(axis=0)
    keep = np.flatnonzero(var_pooled > 1e-12 * max(float(var_pooled.max()), 1e-300))
    b_hat, var_pooled = b_hat[:, keep], var_pooled[keep]
    n_sites = len(levels)
    grand_mean = (counts / counts.sum()) @ b_hat[:n_sites]
    beta = b_hat[n_sites:]
    stand_mean = grand_mean + cov @ beta
    s_data = (x[:, keep] - stand_mean) / np.sqrt(var_pooled)
    gamma_hat = np.stack([s_data[onehot[:, b] > 0].mean(axis=0) for b in range(n_sites)])
    delta_hat = np.stack([s_data[onehot[:, b] > 0].var(axis=0, ddof=1)
                          for b in range(n_sites)])
    delta_hat = np.maximum(delta_hat, 1e-12)
    if shrink != "none":
        gamma_star, delta_star = _eb_solution(s_data, onehot, gamma_hat, delta_hat)
        if shrink == "scale":
            gamma_star = gamma_hat
    else:
        gamma_star, delta_star = gamma_hat, delta_hat
    return CombatFit(levels, keep, grand_mean, var_pooled, beta, gamma_star, delta_star,
                     int(x.shape[1]))


def apply_combat(fit: CombatFit, x, sites, covariates=None) -> tuple[np.ndarray, list]:
    """Harmonise ``x`` (S, P) with a frozen :class:`CombatFit`; returns the harmonised
    data and the sorted list of sites the fit never saw (standardised with the pooled
    estimates only, see the module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != fit.n_features:
        raise InputError(f"ComBat was fitted on {fit.n_features} features; got data of "
                         f"shape {x.shape}")
    cov = np.zeros((x.shape[0], 0)) if covariates is None else \
        np.asarray(covariates, dtype=np.float64).reshape(x.shape[0], -1)
    if cov.shape[1] != fit.beta.shape[0]:
        raise InputError(f"ComBat was fitted with {fit.beta.shape[0]} covariate columns; "
                         f"got {cov.shape[1]}")
    names = [str(s) for s in sites]
    index = {s: i for i, s in enumerate(fit.sites)}
    unseen = sorted({s for s in names if s not in index})
    n_feat = fit.features.size
    gamma = np.zeros((len(names), n_feat))
    delta = np.ones((len(names), n_feat))
    for j, s in enumerate(names):
        if s in index:
            gamma[j], delta[j] = fit.gamma_star[index[s]], fit.delta_star[index[s]]
    stand_mean = fit.grand_mean + cov @ fit.beta
    sd = np.sqrt(fit.var_pooled)
    out = x.copy()
    s_data = (x[:, fit.features] - stand_mean) / sd
    out[:, fit.features] = (s_data - gamma) / np.sqrt(delta) * sd + stand_mean
    return out, unseen
