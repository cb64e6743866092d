"""PPCA model-order criteria on one eigenvalue spectrum: pure numpy/scipy.

:func:`estimate_order` scores the orders ``k = 0 .. k_max`` of a sample
covariance spectrum with Minka's (2000) Laplace evidence or BIC, or Wax &
Kailath's (1985) MDL / AIC, after dropping the eigenvalues below the numerical
rank; :func:`mp_expected_spectrum` gives the Marchenko-Pastur profile of white
noise for MELODIC's Wishart adjustment. The subject and group estimators that
call it are in :mod:`dpnbids.analysis.model_order`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.special import gammaln

from dpnbids.config import DIM_ESTIMATORS


#: The spectral criteria; "lap" (Minka's Laplace evidence) is MELODIC's default. (The
#: ``--dim-est`` choice "pooled" is not a criterion on one spectrum: see
#: :mod:`dpnbids.analysis.group_order`.)
METHODS = tuple(m for m in DIM_ESTIMATORS if m != "pooled")


_HIGHER_IS_BETTER = {"lap": True, "bic": True, "mdl": False, "aic": False}


RANK_RTOL = 1e-6


@dataclass(frozen=True)
class OrderEstimate:
    """Result of :func:`estimate_order`.

    Attributes
    ----------
    n_components : int
        Chosen order k (0 means "no component above the noise floor").
    method : str
        One of :data:`METHODS`.
    candidates : ndarray of int
        The orders k that were scored, ``0 .. k_max``.
    criterion : ndarray
        One value per candidate: log evidence (lap), BIC log likelihood (bic),
        both maximised; or MDL / AIC cost, both minimised.
    higher_is_better : bool
        Whether ``n_components`` is the argmax (lap, bic) or argmin (mdl, aic).
    eigenvalues : ndarray
        The spectrum actually scored, descending: after dropping eigenvalues
        below the numerical rank and filling a truncated tail.
    n_samples : float
        Number of (effective) samples N used.
    n_features : int
        Dimension d used (the numerical rank).
    n_known : int
        How many of ``eigenvalues`` were given (the rest is the filled tail).
    """

    n_components: int
    method: str
    candidates: np.ndarray
    criterion: np.ndarray
    higher_is_better: bool
    eigenvalues: np.ndarray
    n_samples: float
    n_features: int
    n_known: int


def _lap_and_bic(lam: np.ndarray, n: float, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Minka's Laplace log evidence and BIC for k = 0..kmax on a full spectrum."""
    d = lam.size
    logl = np.log(lam)
    csum_log = np.concatenate([[0.0], np.cumsum(logl)])
    tail_sum = np.concatenate([np.cumsum(lam[::-1])[::-1], [0.0]])
    lap = np.full(kmax + 1, -np.inf)
    bic = np.full(kmax + 1, -np.inf)
    # log p(U) = -k log 2 + sum_i [gammaln((d-i+1)/2) - (d-i+1)/2 log pi]
    i = np.arange(1, kmax + 1)
    pu_terms = gammaln((d - i + 1) / 2.0) - np.log(np.pi) * (d - i + 1) / 2.0
    pu_cum = np.concatenate([[0.0], np.cumsum(pu_terms)])
    for k in range(kmax + 1):
        v = tail_sum[k] / (d - k)
        if not v > 0:
            continue
        m = d * k - k * (k + 1) / 2.0
        ll = -n / 2.0 * (csum_log[k] + (d - k) * np.log(v))
        bic[k] = ll - (m + k) / 2.0 * np.log(n)
        pu = -k * np.log(2.0) + pu_cum[k]
        pp = np.log(2.0 * np.pi) * (m + k) / 2.0
        pa = 0.0
        if k:
            lt = lam.copy()
            lt[k:] = v
            li = lam[:k, None]
            lj = lam[None, :]
            inv = 1.0 / lt[None, :] - 1.0 / lt[:k, None]
            diff = li - lj
            upper = np.triu(np.ones((k, d), dtype=bool), 1)
            # each Hessian factor N (l_i - l_j)(1/l~_j - 1/l~_i) is floored at 1:
            # tied or nearly tied eigenvalues (flat tails, exact zeros of the
            # difference) would otherwise send log(0) -> -inf and reward k
            terms = np.log(np.clip(diff * inv, np.finfo(float).tiny, None)) + np.log(n)
            pa = float(np.sum(np.maximum(terms[upper], 0.0)))
        lap[k] = pu + ll + pp - pa / 2.0 - k * np.log(n) / 2.0
    return lap, bic


def _mdl_and_aic(lam: np.ndarray, n: float, kmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Wax-Kailath MDL and AIC (real-valued parameter count as in GIFT)."""
    d = lam.size
    logl = np.log(lam)
    tail_log = np.concatenate([np.cumsum(logl[::-1])[::-1], [0.0]])
    tail_sum = np.concatenate([np.cumsum(lam[::-1])[::-1], [0.0]])
    k = np.arange(kmax + 1)
    r = d - k
    log_ratio = tail_log[k] / r - np.log(tail_sum[k] / r)  # log(geo / arith) <= 0
    free = 1 + k * d - k * (k - 1) / 2.0
    mdl = -n * r * log_ratio + 0.5 * free * np.log(n)
    aic = -2.0 * n * r * log_ratio + 2.0 * free
    return mdl, aic


def mp_expected_spectrum(n_features: int, n_samples: float, *, grid: int = 20000
                         ) -> np.ndarray:
    """Expected sorted eigenvalues of a white Wishart matrix (Marchenko-Pastur quantiles).

    For a d x d sample covariance of N i.i.d. unit-variance samples the
    eigenvalue distribution tends to Marchenko-Pastur with ratio
    ``gamma = d / N``, supported on ``[(1 - sqrt(gamma))^2, (1 + sqrt(gamma))^2]``
    (plus a point mass ``1 - 1/gamma`` at 0 when ``gamma > 1``). The j-th
    largest expected eigenvalue is approximated by the MP quantile at
    ``1 - (j + 0.5) / d``. MELODIC divides the data eigenvalues by this
    profile before its PPCA criteria (Beckmann & Smith 2004).

    Parameters
    ----------
    n_features : int
        d.
    n_samples : float
        N (effective).

    Returns
    -------
    ndarray, shape (d,)
        Descending; values of the zero mass are returned as 0.
    """
    d = int(n_features)
    g = d / float(n_samples)
    a, b = (1 - np.sqrt(g)) ** 2, (1 + np.sqrt(g)) ** 2
    x = np.linspace(a, b, grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        dens = (np.sqrt(np.clip((b - x) * (x - a), 0, None))
                / (2 * np.pi * g * np.where(x > 0, x, 1)))
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(x))])
    mass = min(1.0, 1.0 / g)  # continuous part
    cdf = cdf / cdf[-1] * mass + (1 - mass)
    q = 1 - (np.arange(d) + 0.5) / d
    out = np.interp(q, cdf, x)
    out[q < 1 - mass] = 0.0
    return out


def _spectrum(eigenvalues, n, n_features, total_variance, adjust, rtol):
    """The spectrum :func:`estimate_order` works on, and how many values were known: sorted
    descending, below-rank values dropped, a truncated tail filled with a flat floor, and
    with ``adjust="mp"`` divided by the Marchenko-Pastur profile."""
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    lam = np.sort(lam[np.isfinite(lam)])[::-1]
    if lam.size == 0 or not lam[0] > 0:
        lam = np.zeros(0)
    else:
        lam = lam[lam > rtol * lam[0]]
    n_known = lam.size
    if n_features is not None and int(n_features) > n_known and n_known:
        p = int(n_features)
        floor = lam[-1]
        if total_variance is not None:
            rest = (float(total_variance) - lam.sum()) / (p - n_known)
            if rest > rtol * lam[0]:
                floor = min(floor, rest)
        lam = np.concatenate([lam, np.full(p - n_known, floor)])
    if adjust == "mp" and lam.size:
        prof = mp_expected_spectrum(lam.size, n)
        ok = prof > rtol * prof[0]
        lam = np.sort(lam[ok] / prof[ok])[::-1]
    elif adjust not in (None, "mp"):
        raise ValueError(f"adjust must be None or 'mp'; received {adjust!r}.")
    return lam, n_known


def estimate_order(eigenvalues, n_samples: float, method: str = "lap",
                   max_order: Optional[int] = None, *, n_features: Optional[int] = None,
                   total_variance: Optional[float] = None, adjust: Optional[str] = None,
                   rtol: float = RANK_RTOL) -> OrderEstimate:
    """Estimate the PPCA model order from an eigenvalue spectrum.

    Parameters
    ----------
    eigenvalues : array_like, shape (M,)
        Eigenvalues of a sample covariance (any order, any common scale).
    n_samples : float
        Number of independent samples N (use :func:`effective_samples` for
        smooth images rather than the voxel count).
    method : {"lap", "bic", "mdl", "aic"}
        ``"lap"``: Minka's (2000) Laplace approximation of the PPCA evidence
        (MELODIC's default). ``"bic"``: Minka's BIC approximation of the same
        evidence. ``"mdl"`` / ``"aic"``: Wax & Kailath (1985) information
        criteria on the ratio of geometric to arithmetic mean of the trailing
        eigenvalues, with the real-valued parameter count
        ``1 + k d - k (k - 1) / 2`` as in GIFT (Li et al. 2007).
    max_order : int, optional
        Largest candidate order. Always capped at ``d - max(2, ceil(d / 10))``:
        the noise floor is estimated from at least 10% of the spectrum. (With a
        floor of only a few trailing eigenvalues, Minka's approximation rises
        again at ``k -> d``; on a planted AR(1) case with d = 119 it peaked at
        k = 111 instead of the true 12 because of two low edge eigenvalues.)
    n_features : int, optional
        Full dimension p when only the top ``M < p`` eigenvalues are known
        (truncated spectrum, e.g. MIGP). The ``p - M`` missing values are filled
        with a flat floor: ``(total_variance - sum(known)) / (p - M)`` when
        ``total_variance`` is given, clipped to the smallest known eigenvalue,
        else the smallest known eigenvalue itself (the most conservative
        floor: it can only lower the estimate).
    total_variance : float, optional
        Trace of the covariance (sum of all p eigenvalues), on the scale of
        ``eigenvalues``.
    adjust : {None, "mp"}
        ``"mp"``: divide the spectrum by :func:`mp_expected_spectrum` for (d, N)
        first (MELODIC's Wishart adjustment), so that a white-noise tail is flat
        even when d / N is not small.
    rtol : float
        Eigenvalues ``<= rtol * max`` (and non-finite or negative ones) are
        below the numerical rank and are dropped before anything else: d is
        the number that remain (plus the filled tail).

    Returns
    -------
    OrderEstimate
        ``n_components`` is 0 when no component beats the isotropic model
        (the minimum possible value, e.g. for pure white noise).

    Notes
    -----
    Candidates run over ``k = 0 .. min(max_order, d - max(2, ceil(d / 10)))``,
    and with a filled tail at most ``M - 1``; a candidate k that would split
    two tied eigenvalues (``l_k == l_{k+1}``) is never chosen (not identifiable;
    Minka's Laplace term degenerates there). Note that a flat fill is exact
    only when the unknown tail is flat: a truncated Marchenko-Pastur bulk (the
    MIGP case) has its known noise values above the fill, and "lap" then
    overestimates (see :func:`estimate_group_order`). All four criteria
    are invariant to a common scaling of the eigenvalues.
    """
    if method not in METHODS:
        raise ValueError(f"unknown model-order method {method!r}; choose one of "
                         f"{', '.join(METHODS)}.")
    n = float(n_samples)
    if not n > 1:
        raise ValueError(f"n_samples must be > 1; received {n_samples}.")
    lam, n_known = _spectrum(eigenvalues, n, n_features, total_variance, adjust, rtol)
    d = lam.size
    kmax = d - max(2, int(np.ceil(0.1 * d)))
    if max_order is not None:
        kmax = min(kmax, int(max_order))
    if kmax < 0:
        crit = np.zeros(1)
        return OrderEstimate(0, method, np.arange(1), crit, _HIGHER_IS_BETTER[method], lam,
                             n, d, n_known)
    if d > n_known:  # a filled tail: no order beyond the known eigenvalues
        kmax = min(kmax, n_known - 1)
    # a split between two tied eigenvalues is not identifiable (and Minka's
    # Laplace term degenerates on ties): such candidates are excluded
    tied = np.zeros(kmax + 1, dtype=bool)
    tied[1:] = lam[:kmax] <= lam[1:kmax + 1] * (1 + 1e-9)
    if method in ("lap", "bic"):
        lap, bic = _lap_and_bic(lam, n, kmax)
        crit = lap if method == "lap" else bic
        k = int(np.argmax(np.where(tied, -np.inf, crit)))
    else:
        mdl, aic = _mdl_and_aic(lam, n, kmax)
        crit = mdl if method == "mdl" else aic
        k = int(np.argmin(np.where(tied, np.inf, crit)))
    return OrderEstimate(k, method, np.arange(kmax + 1), crit, _HIGHER_IS_BETTER[method], lam,
                         n, d, n_known)
