"""Noise models behind the automatic ICA model order: pure numpy/scipy.

* :func:`temporal_whiten` - DCT-domain temporal whitening of coloured
  (AR(1), band-passed) noise, so that its eigenvalues form a flat floor.
* :func:`smoothness` and :func:`effective_samples` - the spatial smoothness of
  the residuals and the effective number of independent voxels N_eff that the
  order estimators take instead of the voxel count (Li et al. 2007; Forman et
  al. 1995).

See :mod:`dpnbids.analysis.model_order` for how they are combined.
"""
from __future__ import annotations

import numpy as np
from scipy.fft import dct
from scipy.ndimage import median_filter


def noise_power(coefs: np.ndarray, rtol: float, smooth_bins: int
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
    kept, noise = noise_power(cn, rtol, smooth_bins)
    return c[kept] / np.sqrt(noise)[:, None], kept


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
