"""Automatic ICA model order (``--n-components auto``): pure numpy/scipy.

Spatial ICA treats each subject's in-mask data ``X`` (T time points x V voxels)
as V samples of a T-dimensional vector, so the model order is the number of
eigenvalues of the T x T covariance ``X X^T / V`` that stand above an
isotropic noise floor (probabilistic PCA). Three things break the textbook
estimators on resting-state fMRI and are handled here:

1. **Rank deficiency.** Band-pass filtering and confound regression leave only
   ~20-40 temporal degrees of freedom in 100-200 volumes; the remaining
   eigenvalues are numerically zero. :func:`estimate_order` drops every
   eigenvalue below the numerical rank and works in the dimension that is
   left, so ``log(0)`` never appears and the estimate never exceeds the rank.
2. **Temporally coloured noise** (AR(1), band-pass). The noise eigenvalues are
   then the noise power spectrum, not a flat floor, and naive Minka/MDL count
   the low-frequency noise as signal. :func:`temporal_whiten` transforms every
   voxel's series to DCT-II coefficients (the basis that diagonalises
   stationary noise on a mirror-padded series, which is how the pipeline's FFT
   band-pass pads), estimates a robust noise spectrum as the *median over
   voxels* of the power in each bin, drops the bins with ~zero power (the
   filtered-out band), and divides each bin by its noise amplitude.
3. **Spatial smoothness.** Smoothed voxels are not independent samples; with
   N = V the estimators see sampling fluctuations as signal and overestimate.
   :func:`effective_samples` replaces V by the effective number of independent
   samples N_eff (Li et al. 2007 motivate the correction; see the function for
   the RESEL-style estimator used here instead of their subsampling search).

The group entry point :func:`estimate_group_order` estimates each subject's
order on its whitened, rank-reduced data with its own N_eff and combines them
by the median (GIFT's option for multi-subject data); see its docstring for
why the MIGP eigenvalue spectrum is *not* the primary input.

References
----------
.. [Minka2000] Minka, T. P. (2000). Automatic choice of dimensionality for PCA.
   NIPS 13, 598-604.
.. [WaxKailath1985] Wax, M., Kailath, T. (1985). Detection of signals by
   information theoretic criteria. IEEE Trans. ASSP 33(2), 387-392.
.. [Li2007] Li, Y.-O., Adali, T., Calhoun, V. D. (2007). Estimating the number
   of independent components for functional magnetic resonance imaging data.
   Hum. Brain Mapp. 28(11), 1251-1266.
.. [Beckmann2004] Beckmann, C. F., Smith, S. M. (2004). Probabilistic
   independent component analysis for functional magnetic resonance imaging.
   IEEE Trans. Med. Imaging 23(2), 137-152.
.. [Forman1995] Forman, S. D. et al. (1995). Improved assessment of significant
   activation in fMRI: use of a cluster-size threshold. Magn. Reson. Med.
   33(5), 636-647.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy.fft import dct
from scipy.ndimage import median_filter
from scipy.special import gammaln

from dpnbids.config import DIM_ESTIMATORS

__all__ = [
    "GroupOrderEstimate",
    "METHODS",
    "OrderEstimate",
    "SubjectOrderEstimate",
    "combine_subject_orders",
    "effective_samples",
    "estimate_group_order",
    "estimate_order",
    "estimate_subject_order",
    "mp_expected_spectrum",
    "smoothness",
    "temporal_whiten",
]

#: Supported estimators; "lap" (Minka's Laplace evidence) is MELODIC's default.
METHODS = DIM_ESTIMATORS
_HIGHER_IS_BETTER = {"lap": True, "bic": True, "mdl": False, "aic": False}
_RANK_RTOL = 1e-6


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


def estimate_order(eigenvalues, n_samples: float, method: str = "lap",
                   max_order: Optional[int] = None, *, n_features: Optional[int] = None,
                   total_variance: Optional[float] = None, adjust: Optional[str] = None,
                   rtol: float = _RANK_RTOL) -> OrderEstimate:
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
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    lam = np.sort(lam[np.isfinite(lam)])[::-1]
    n = float(n_samples)
    if not n > 1:
        raise ValueError(f"n_samples must be > 1; received {n_samples}.")
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
    d = lam.size
    if adjust == "mp" and d:
        prof = mp_expected_spectrum(d, n)
        ok = prof > rtol * prof[0]
        lam = lam[ok] / prof[ok]
        lam = np.sort(lam)[::-1]
        d = lam.size
    elif adjust is not None:
        raise ValueError(f"adjust must be None or 'mp'; received {adjust!r}.")
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


# --------------------------------------------------------------------------- whitening
def _noise_power(coefs: np.ndarray, rtol: float, smooth_bins: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    power = np.median(coefs * coefs, axis=1)
    top = power.max() if power.size else 0.0
    if not top > 0:
        return np.zeros(0, dtype=int), np.zeros(0)
    kept = np.flatnonzero(power > rtol * top)
    noise = power[kept]
    if smooth_bins > 1 and kept.size > smooth_bins:
        noise = median_filter(noise, size=int(smooth_bins), mode="nearest")
    return kept, np.maximum(noise, np.finfo(float).tiny)


def temporal_whiten(data_tv, *, rtol: float = 0.05, smooth_bins: int = 9,
                    noise_data=None) -> tuple[np.ndarray, np.ndarray]:
    """Whiten the temporal noise of (T, V) data against a robust noise spectrum.

    Each voxel's series is demeaned and transformed with the orthonormal
    DCT-II along time (the basis that nearly diagonalises stationary noise on
    a mirror-padded series). The noise power of bin f is the median over
    voxels of the squared coefficient (spatial ICA networks occupy a minority
    of voxels, so the median follows the noise), smoothed over frequency by a
    running median of ``smooth_bins`` bins (noise spectra are smooth, a
    network's periodogram is not, so this keeps the whitening from partly
    whitening the signal). Bins whose power is ``<= rtol * max`` (the band the
    pipeline's band-pass removed; the DC bin after demeaning; the leakage of
    the filter's transition, which would otherwise be amplified into a
    spurious component) are dropped; the others are divided by their noise
    amplitude. This flattens AR(1)-like and band-passed noise spectra.

    Parameters
    ----------
    data_tv : array_like, shape (T, V)
    rtol : float
        Relative power below which a bin counts as filtered out.
    smooth_bins : int
        Width of the running median over frequency (1: none).
    noise_data : array_like, shape (T, V), optional
        Data on which the noise spectrum is measured (e.g. the residual after
        removing the signal subspace); default ``data_tv``.

    Returns
    -------
    whitened : ndarray, shape (d, V), float64
        Whitened coefficients of the d kept bins.
    kept : ndarray of int, shape (d,)
        Indices of the kept DCT bins.
    """
    x = np.asarray(data_tv, dtype=np.float64)
    c = dct(x - x.mean(axis=0, keepdims=True), type=2, axis=0, norm="ortho")
    if noise_data is None:
        cn = c
    else:
        xn = np.asarray(noise_data, dtype=np.float64)
        cn = dct(xn - xn.mean(axis=0, keepdims=True), type=2, axis=0, norm="ortho")
    kept, noise = _noise_power(cn, rtol, smooth_bins)
    return c[kept] / np.sqrt(noise)[:, None], kept


# --------------------------------------------------------------------------- smoothness
def smoothness(data_tv, mask_3d) -> tuple[np.ndarray, np.ndarray]:
    """Lag-1 spatial autocorrelation and FWHM (voxels) per axis of (T, V) data.

    Uses the variance of first differences between in-mask neighbours
    (Forman et al. 1995; FSL ``smoothest``/AFNI ``3dFWHMx`` classic):
    ``rho_1 = 1 - E[(x_a - x_b)^2] / (2 E[x^2])`` for neighbouring voxels a, b
    along an axis, and for a Gaussian autocorrelation
    ``FWHM = sqrt(-2 ln 2 / ln rho_1)`` (the FWHM of the Gaussian kernel that
    would produce it from white noise). Time points are streamed one volume at
    a time, so memory is O(mask size).

    Parameters
    ----------
    data_tv : array_like, shape (T, V)
        In-mask data in the C order of ``mask_3d``'s True voxels; each voxel's
        series should be demeaned (it is demeaned here).
    mask_3d : array_like of bool, 3D
        V True voxels.

    Returns
    -------
    rho : ndarray, shape (3,)
        Lag-1 autocorrelation along each axis, in [0, 1).
    fwhm : ndarray, shape (3,)
        FWHM in voxels (0 where rho is 0: no measurable smoothness).
    """
    mask = np.asarray(mask_3d, dtype=bool)
    x = np.asarray(data_tv)
    if mask.ndim != 3 or x.ndim != 2 or x.shape[1] != int(mask.sum()):
        raise ValueError(f"data of shape {x.shape} do not match a 3D mask with "
                         f"{int(mask.sum()) if mask.ndim == 3 else '?'} voxels.")
    mean = x.mean(axis=0)
    pairs = []
    for ax in range(3):
        sl_a = [slice(None)] * 3
        sl_b = [slice(None)] * 3
        sl_a[ax] = slice(1, None)
        sl_b[ax] = slice(None, -1)
        pairs.append((tuple(sl_a), tuple(sl_b), mask[tuple(sl_a)] & mask[tuple(sl_b)]))
    num = np.zeros(3)
    den = np.zeros(3)
    vol = np.zeros(mask.shape)
    for t in range(x.shape[0]):
        vol[mask] = x[t] - mean
        for ax, (sa, sb, both) in enumerate(pairs):
            a = vol[sa][both]
            b = vol[sb][both]
            num[ax] += np.dot(a - b, a - b)
            den[ax] += np.dot(a, a) + np.dot(b, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, 1.0 - num / np.where(den > 0, den, 1), 0.0)
    rho = np.clip(rho, 0.0, 1.0 - 1e-9)
    with np.errstate(divide="ignore"):
        fwhm = np.where(rho > 0, np.sqrt(-2.0 * np.log(2.0) / np.log(np.where(rho > 0, rho, .5))),
                        0.0)
    return rho, fwhm


def _axis_factor(rho: float) -> float:
    """sum over integer lags l of rho(l)^2 for rho(l) = rho_1 ** (l^2) (Gaussian)."""
    if rho <= 0:
        return 1.0
    lags = np.arange(1, 200)
    return float(1.0 + 2.0 * np.sum(rho ** (2.0 * lags ** 2)))


def effective_samples(data_tv, mask_3d, *, remove_components: int = 0) -> float:
    """Effective number of independent spatial samples N_eff <= V.

    Li et al. (2007) subsample the voxels until the subsampled data look
    i.i.d.; with a Gaussian-shaped spatial autocorrelation the same quantity
    has a closed form, used here because it needs one pass and no search.
    The spread of a sample covariance over V correlated samples equals that
    of ``N_eff = V / sum_lags rho(lag)^2`` independent ones, and for a
    separable Gaussian autocorrelation ``rho(l) = rho_1^(l^2)`` per axis (rho_1
    from :func:`smoothness`) the sum factorises into
    ``prod_axes (1 + 2 sum_{l>=1} rho_1^(2 l^2))``. For smooth data this is
    ``~ V / prod(1.06 * FWHM_voxels)``, i.e. the RESEL count up to a constant;
    for unsmoothed data it is V.

    Parameters
    ----------
    data_tv : array_like, shape (T, V)
        In-mask data (C order of ``mask_3d``).
    mask_3d : array_like of bool, 3D
    remove_components : int
        Project out this many leading temporal principal components first, so
        that the (smooth) signal networks do not inflate the noise smoothness;
        the estimate is then a residual smoothness as in FSL ``smoothest``.

    Returns
    -------
    float
        N_eff, in [1, V].
    """
    x = np.asarray(data_tv, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    r = int(remove_components)
    if r > 0:
        evals, evecs = np.linalg.eigh(x @ x.T)
        u = evecs[:, np.argsort(evals)[::-1][:min(r, x.shape[0] - 1)]]
        x = x - u @ (u.T @ x)
    rho, _ = smoothness(x, mask_3d)
    factor = np.prod([_axis_factor(float(r_)) for r_ in rho])
    v = x.shape[1]
    return float(np.clip(v / factor, 1.0, v))


# --------------------------------------------------------------------------- subjects
@dataclass(frozen=True)
class SubjectOrderEstimate:
    """One subject's order estimate (:func:`estimate_subject_order`).

    Attributes
    ----------
    n_components : int
        Estimated order.
    dof : int
        Temporal degrees of freedom left after denoising: the numerical rank of
        the whitened data (the cap on any estimate).
    n_eff : float
        Effective number of independent spatial samples.
    estimate : OrderEstimate
        Full result on the whitened spectrum (criterion curve, eigenvalues).
    """

    n_components: int
    dof: int
    n_eff: float
    estimate: OrderEstimate


def _spectrum(w: np.ndarray, rank_rtol: float = 1e-2) -> tuple[np.ndarray, np.ndarray]:
    """Descending eigenvalues/vectors of w w^T / V above the numerical rank.

    Directions that the band-pass or the confound regression (almost) removed
    have eigenvalues far below the noise floor; everything below
    ``rank_rtol * median`` of the positive eigenvalues is dropped.
    """
    gram = (w @ w.T) / w.shape[1]
    lam, vecs = np.linalg.eigh((gram + gram.T) / 2)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    if not (lam.size and lam[0] > 0):
        return lam[:0], vecs[:, :0]
    pos = lam > _RANK_RTOL * lam[0]
    keep = pos & (lam > rank_rtol * np.median(lam[pos]))
    return lam[keep], vecs[:, keep]


def _needs_whitening(x: np.ndarray, *, full_rank_fraction: float = 0.9) -> bool:
    """Whether a (T, V) series needs temporal whitening before the estimate.

    A series that dpnbids' denoising produced has been projected: the FFT
    band-pass keeps the cosine basis functions of the band and the confound
    regression then removes the span of the band-limited confounds, an
    orthogonal projection onto ``r < T`` dimensions. White noise stays white
    inside that subspace, so reducing to the rank is all it needs; whitening
    the DCT bins by their median power would instead *colour* it, because the
    regression removes different fractions of different bins. Measured on
    denoised synthetic runs (110 volumes, TR 2 s, ``conn``: rank 19, 5 planted
    networks): "lap" found 17 of 19 with whitening and 5 without. A series
    with (nearly) full rank (no band-pass: its noise keeps its own temporal
    colour, e.g. AR(1)) is whitened.
    """
    t = x.shape[0]
    lam, _ = _spectrum(x)
    return lam.size >= full_rank_fraction * (t - 1)


def estimate_subject_order(data_tv, mask_3d=None, *, method: str = "lap",
                           max_order: Optional[int] = None, whiten="auto",
                           smoothness_correction: bool = True, bin_rtol: float = 0.05,
                           smooth_bins: int = 9, n_iter: int = 3) -> SubjectOrderEstimate:
    """Model order of one subject's (T, V) data: whiten, reduce to rank, correct N.

    Steps:

    1. per-voxel variance normalisation (as :class:`dpnbids.analysis.ica.GroupICA`);
    2. temporal whitening as :func:`temporal_whiten` (unless ``whiten=False``):
       DCT-II, drop the bins with ~zero power, divide by the smoothed median
       noise power of each bin;
    3. eigenvalues of the (d x d) covariance of the whitened data; those below
       ``1e-2 x`` their median (directions removed by the band-pass or the
       confound regression) are dropped: ``dof`` is the number left;
    4. N_eff (:func:`effective_samples`) of the whitened data, then again on
       the residual after projecting out the components found with it;
    5. the noise spectrum is re-measured on the whitened residual after
       projecting out BIC's (conservative) number of leading components, with
       the leverage correction ``1 / (1 - h_f)``, and steps 3-5 are repeated
       (at most ``n_iter`` passes, until BIC's number repeats). Without this a
       network raises the median power of the bins its time course occupies,
       relatively most where the noise is weak, and the whitened noise is
       tilted: on k = 5 planted sources in AR(1) noise (rho 0.6) "lap"
       returned 34-117 with one pass and 5 with the re-measurement;
    6. the final estimate with ``method`` and N = N_eff.

    Measured on the planted cases of ``tests/test_model_order.py`` (4304
    voxels, T = 120, k = 5 and 12, four seeds each): "lap" and "mdl" are
    within 20% of k for white, AR(1), band-passed and smoothed noise (except
    band-pass plus smoothing at k = 12, amplitude 2, where the weakest
    sources are at the noise edge: 7-9), "bic" underestimates on smoothed
    data, "aic" overestimates everywhere (20-100 components), and pure noise
    gives 0 with lap, bic and mdl.

    Parameters
    ----------
    data_tv : array_like, shape (T, V)
    mask_3d : array_like of bool, optional
        Needed for the smoothness correction; without it N = V.
    method, max_order
        As :func:`estimate_order`.
    whiten : bool or "auto"
        Temporal whitening (see :func:`temporal_whiten`). ``"auto"`` (default):
        only when the series is (nearly) full rank; see :func:`_needs_whitening`.
    smoothness_correction : bool
        Use N_eff instead of V.
    bin_rtol, smooth_bins
        As ``rtol`` and ``smooth_bins`` of :func:`temporal_whiten`.
    n_iter : int
        Maximum number of whitening passes (1: no re-measurement).

    Returns
    -------
    SubjectOrderEstimate
    """
    x = np.asarray(data_tv, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0)
    x = x / np.where(sd > 0, sd, 1.0)
    v = x.shape[1]
    if whiten == "auto":
        whiten = _needs_whitening(x)
    if whiten:
        c = dct(x, type=2, axis=0, norm="ortho")
        kept, noise = _noise_power(c, bin_rtol, smooth_bins)
        c = c[kept]
    seen = []
    for _ in range(max(1, int(n_iter))):
        w = c / np.sqrt(noise)[:, None] if whiten else x
        lam, vecs = _spectrum(w)
        dof = int(lam.size)
        n_eff = float(v)
        if mask_3d is not None and smoothness_correction and dof > 2:
            # N_eff of the whitened data, then once more on the residual after
            # removing the components found, so smooth networks do not inflate it
            n_eff = effective_samples(w, mask_3d)
            k0 = estimate_order(lam, n_eff, method=method, max_order=max_order).n_components
            if k0:
                n_eff = effective_samples(w, mask_3d, remove_components=k0)
        n_eff = max(n_eff, 1.0 + 1e-9)
        if not whiten:
            break
        # The networks also raise the median power of the bins their time
        # courses occupy (relatively most where the noise is weak), which tilts
        # the whitened noise. Re-measure the noise spectrum on the residual after
        # projecting out the leading r whitened components U; the projection also
        # removes a fraction h_f = sum_j U_fj^2 of the noise of bin f, which is
        # divided back out (the leverage correction of a residual variance).
        # r is BIC's estimate: the most conservative criterion, so few noise
        # directions are removed with the signal; at most half the dof.
        k_rm = estimate_order(lam, n_eff, method="bic", max_order=max_order).n_components
        k_rm = min(k_rm, max(dof // 2, 1))
        if k_rm == 0 or k_rm in seen:
            break
        seen.append(k_rm)
        u = vecs[:, :k_rm]
        w_res = w - u @ (u.T @ w)
        h = np.clip(np.sum(u * u, axis=1), 0.0, 0.9)
        ratio = np.median(w_res * w_res, axis=1) / (1.0 - h)
        if smooth_bins > 1 and ratio.size > smooth_bins:
            ratio = median_filter(ratio, size=int(smooth_bins), mode="nearest")
        noise = noise * np.maximum(ratio, np.finfo(float).tiny)
    est = estimate_order(lam, n_eff, method=method, max_order=max_order)
    return SubjectOrderEstimate(int(est.n_components), dof, n_eff, est)


# --------------------------------------------------------------------------- group
@dataclass(frozen=True)
class GroupOrderEstimate:
    """Group model order (:func:`estimate_group_order`).

    Attributes
    ----------
    n_components : int
        Chosen order after the cap, >= 1.
    raw_n_components : float
        Median of the subjects' estimates before the cap and before rounding.
    method : str
    cap : int
        ``min(smallest subject dof, pca_dim, max_order)`` (those given).
    capped : bool
        Whether the cap lowered the estimate.
    subject_estimates : tuple of SubjectOrderEstimate
        Per-subject results (criterion curves, spectra, N_eff, dof).
    subject_n_components : ndarray of int
    n_eff : ndarray
        Per-subject N_eff.
    dof : ndarray of int
        Per-subject temporal degrees of freedom after denoising.
    spectrum : ndarray
        Spectrum for a scree plot: the MIGP group eigenvalues (normalised to sum
        1 over those kept) when ``migp_result`` was given, else the mean over
        subjects of the normalised whitened spectra (truncated to the shortest).
    criterion : ndarray
        Mean over subjects of each subject's criterion curve, each shifted so
        its best value is 0 (truncated to the shortest curve).
    """

    n_components: int
    raw_n_components: float
    method: str
    cap: int
    capped: bool
    subject_estimates: tuple = field(repr=False)
    subject_n_components: np.ndarray = field(repr=False)
    n_eff: np.ndarray = field(repr=False)
    dof: np.ndarray = field(repr=False)
    spectrum: np.ndarray = field(repr=False)
    criterion: np.ndarray = field(repr=False)


def combine_subject_orders(subject_estimates, *, method: str = "lap",
                           max_order: Optional[int] = None, pca_dim: Optional[int] = None,
                           migp_eigenvalues=None) -> GroupOrderEstimate:
    """Combine per-subject estimates into a :class:`GroupOrderEstimate` (median, capped).

    ``max_order`` and ``pca_dim`` cap the result together with the smallest
    subject's dof; the result is at least 1 (ICA needs one component).
    """
    subs = tuple(subject_estimates)
    if not subs:
        raise ValueError("no subject estimates to combine.")
    ks = np.array([s.n_components for s in subs], dtype=int)
    dofs = np.array([s.dof for s in subs], dtype=int)
    neff = np.array([s.n_eff for s in subs], dtype=float)
    raw = float(np.median(ks))
    cap = int(dofs.min())
    for c in (max_order, pca_dim):
        if c is not None:
            cap = min(cap, int(c))
    cap = max(cap, 1)
    k = int(np.floor(raw + 0.5))
    capped = k > cap
    k = max(1, min(k, cap))
    n_spec = min(s.estimate.eigenvalues.size for s in subs)
    if migp_eigenvalues is not None:
        spec = np.asarray(migp_eigenvalues, dtype=float)
        spec = spec / spec.sum() if spec.sum() > 0 else spec
    else:
        spec = np.mean([s.estimate.eigenvalues[:n_spec] / s.estimate.eigenvalues.sum()
                        for s in subs], axis=0)
    n_crit = min(s.estimate.criterion.size for s in subs)
    curves = []
    for s in subs:
        c = np.asarray(s.estimate.criterion[:n_crit], dtype=float)
        best = c.max() if s.estimate.higher_is_better else c.min()
        curves.append(c - best)
    crit = np.mean(curves, axis=0)
    return GroupOrderEstimate(k, raw, method, cap, capped, subs, ks, neff, dofs, spec, crit)


def estimate_group_order(subject_loader: Callable[[int], np.ndarray], n_subjects: int,
                         mask_3d=None, *, method: str = "lap",
                         max_order: Optional[int] = None, pca_dim: Optional[int] = None,
                         migp_result=None, whiten="auto",
                         smoothness_correction: bool = True) -> GroupOrderEstimate:
    """Group ICA model order: median of per-subject estimates, capped.

    Each subject is loaded once (``subject_loader(i) -> (T_i, V)``, one in
    memory at a time), variance-normalised, temporally whitened, reduced to
    its numerical rank, and scored with N_eff (:func:`estimate_subject_order`).
    The group order is the median of the subject orders (GIFT's
    multi-subject option; Li et al. 2007), rounded, capped by the smallest
    subject's temporal dof after denoising, by ``pca_dim`` and by
    ``max_order``, and at least 1.

    Why not the MIGP spectrum? The issue asks to fit the eigenvalues of the
    MIGP-reduced concatenation, corrected for smoothness. That works when the
    noise is temporally white and fails when it is not, because the T x T gram
    of the concatenation mixes the subjects' time axes and the temporal
    whitening (point 2 of the module docstring) cannot be applied to it.
    Measured on 8 subjects x 120 volumes, 4304 voxels, k = 5 planted blob
    sources (amplitude 2), MIGP with pca_dim 20 (40 of 960 eigenvalues kept,
    the tail filled from the total sum of squares), :func:`estimate_order`
    with N = V / N = N_eff (median of the subjects' :func:`effective_samples`):

    ===========================  =============  =============  ==============
    noise                        MIGP "lap"     MIGP "mdl"     this function
    ===========================  =============  =============  ==============
    white                        5 / 5          5 / 5          5
    smooth (FWHM 2.5 voxels)     39 / 6         39 / 5         5
    AR(1) rho = 0.6              39 / 39        39 / 39        5
    band-pass + FWHM 2.5         39 / 13        39 / 5         5
    ===========================  =============  =============  ==============

    (39 is the largest admissible order.) So the group order is the median of
    per-subject estimates, each on its own whitened spectrum with its own
    N_eff, where p (20-120 whitened dof) / N_eff stays small; GIFT offers the
    same median of subject estimates. When ``migp_result`` is given its
    eigenvalues are kept as the scree-plot ``spectrum`` only.

    Parameters
    ----------
    subject_loader : callable
        ``subject_loader(i) -> (T_i, V)`` in-mask data for ``i`` in
        ``range(n_subjects)`` (C order of ``mask_3d``'s True voxels).
    n_subjects : int
    mask_3d : array_like of bool, optional
        Group mask; needed for the smoothness correction (N_eff). Without it
        N = V and the estimate is biased upward on smoothed data.
    method : {"lap", "bic", "mdl", "aic"}
    max_order : int, optional
        Extra cap (``max_components``).
    pca_dim : int, optional
        Cap by ``--pca-dim``.
    migp_result : object with ``.eigenvalues``, optional
        :class:`dpnbids.analysis.ica._MIGPResult`; its eigenvalues become ``spectrum``.
    whiten, smoothness_correction : bool
        See :func:`estimate_subject_order` (switching them off reproduces the
        naive estimators, for comparison).

    Returns
    -------
    GroupOrderEstimate
    """
    if int(n_subjects) < 1:
        raise ValueError(f"need at least one subject; received n_subjects={n_subjects}.")
    if mask_3d is None and smoothness_correction:
        warnings.warn("no mask geometry given: the model order uses N = number of voxels "
                      "(no smoothness correction) and will be biased upward on smoothed data.",
                      RuntimeWarning, stacklevel=2)
    subs = [estimate_subject_order(subject_loader(i), mask_3d, method=method,
                                   max_order=max_order, whiten=whiten,
                                   smoothness_correction=smoothness_correction)
            for i in range(int(n_subjects))]
    migp_eigs = getattr(migp_result, "eigenvalues", None) if migp_result is not None else None
    return combine_subject_orders(subs, method=method, max_order=max_order, pca_dim=pca_dim,
                                  migp_eigenvalues=migp_eigs)
