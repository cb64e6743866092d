"""Group model order from the whole cohort's spectrum: pure numpy/scipy.

The per-run estimate (:func:`dpnbids.analysis.model_order.estimate_group_order`,
the median over runs) cannot find a network that is too weak to stand out of
one 110-volume run but stands out of 43 runs together: on a cohort with 11
planted networks it returned 8. This module pools the runs instead, in four
steps (Li, Adali & Calhoun 2007 pool the group-reduced data in GIFT; the noise
model and the null are chosen so that coloured and smooth noise do not
inflate the count):

1. **Per-run temporal whitening inside the run's own subspace**
   (:func:`whiten_run`). A denoised run lives in the ``r``-dimensional span that
   the band-pass and the confound regression left (an orthogonal projection
   ``Q`` in the DCT domain). Its noise covariance there is ``Q D Q`` with ``D``
   the (smooth) noise power per DCT bin, measured as the median over voxels of
   each bin's power divided by the bin's leverage ``Q_ff``. The run is
   expressed in an orthonormal basis ``U`` of its span and multiplied by
   ``(U^T D U)^(-1/2)``: white noise stays white (dividing the bins by their
   power alone would colour it, because the regression removes different
   fractions of different bins) and AR(1), ``1/f`` and band-passed noise
   become white. Each run is scaled to unit noise variance.
2. **Pooling**: the whitened runs are stacked (``sum_i r_i`` rows, at most
   :data:`MAX_POOLED_ROWS`; every second voxel on large masks) and the eigenvalues
   of the stack's covariance are taken. A network shared by the runs is one
   direction of the stack whose eigenvalue grows with the number of runs; the
   noise forms a bulk.
3. **A null with the data's smoothness** (parallel analysis): spatially smooth
   noise widens the bulk far beyond the Marchenko-Pastur edge of independent
   voxels, so white noise smoothed by the kernel whose noise *measures* the
   data's smoothness (:func:`matched_fwhm`) is stacked the same way, and its
   eigenvalues are mapped onto the data's bulk by a quantile-quantile line
   fitted on the middle ranks (scale and spread; the networks are at the top).
4. **Decision**: eigenvalues above the null's largest (+5%) count; below it, an
   eigenvalue still counts while it exceeds the null's eigenvalue of the same
   rank within the bulk (Horn's parallel analysis; ranks shifted by the count
   above the edge) and stays within 10% of that edge.

Without a mask (no geometry for the null), the bulk is matched to a
Marchenko-Pastur law by its moments instead (:func:`edge_count`, iterated as
Kritchman & Nadler 2008 do), which counts spatially smooth noise as components.
See ``docs/model-order.md`` for the comparison with the per-run median.

References
----------
.. [Li2007b] Li, Y.-O., Adali, T., Calhoun, V. D. (2007). Estimating the number
   of independent components for functional magnetic resonance imaging data.
   Hum. Brain Mapp. 28(11), 1251-1266.
.. [KN2008] Kritchman, S., Nadler, B. (2008). Determining the number of
   components in a factor model from limited noisy data. Chemometr. Intell.
   Lab. Syst. 94(1), 19-32.
.. [Johnstone2001] Johnstone, I. M. (2001). On the distribution of the largest
   eigenvalue in principal components analysis. Ann. Stat. 29(2), 295-327.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from scipy.fft import dct
from scipy.ndimage import median_filter

from dpnbids.analysis.noise import smoothness

__all__ = ["PooledOrderEstimate", "edge_count", "estimate_pooled_order", "null_spectrum",
           "order_warnings", "pooled_group_estimate", "whiten_run"]

#: Median of a chi-square variable with one degree of freedom: median(x^2) = 0.4549 var(x).
_CHI2_1_MEDIAN = 0.454936
#: 99% quantile of the Tracy-Widom (beta = 1) law of the largest noise eigenvalue.
_TW1_99 = 2.0234
#: Most rows the pooled stack keeps (runs beyond it are subsampled evenly).
MAX_POOLED_ROWS = 1200
#: A kernel narrower than this FWHM (in units of the pooled voxels' spacing) correlates
#: neighbouring pooled voxels by less than 0.05, so the null draws them independent
#: (white noise measures ~0.5 spacing with the lag-1 estimator).
_MIN_FWHM = 0.68
#: Leading eigenvalues kept for the scree plot and the components JSON.
_SCREE_LENGTH = 100


def _median_power(c: np.ndarray, chunk: int = 64, max_voxels: int = 8192) -> np.ndarray:
    """Median over voxels of each row's power (on at most ``max_voxels`` evenly spaced
    voxels: a median of thousands is as good as of all, and costs less)."""
    step = max(1, c.shape[1] // max_voxels)
    return np.concatenate([np.median(c[i:i + chunk, ::step] ** 2, axis=1)
                           for i in range(0, c.shape[0], chunk)])


def whiten_run(data_tv, *, bin_rtol: float = 0.05, rank_rtol: float = 1e-2,
               smooth_bins: int = 9, n_iter: int = 2) -> np.ndarray:
    """One run's data in its own temporal subspace, with white, unit-variance noise.

    Parameters
    ----------
    data_tv : array_like, shape (T, V)
        In-mask data of one run (denoised or not).
    bin_rtol : float
        DCT bins whose median power is ``<= bin_rtol * max`` are outside the
        band the run kept (dropped).
    rank_rtol : float
        Directions with eigenvalues ``<= rank_rtol * median`` are outside the
        run's span (removed by the confound regression; dropped).
    smooth_bins : int
        Running median over frequency of the noise power (noise spectra are
        smooth; a network's periodogram is not).
    n_iter : int
        Noise measurements: the second is made on the residual after the
        run's strongest directions are projected out (1: no re-measurement).

    Returns
    -------
    ndarray, shape (r, V), float32
        ``r`` = the run's temporal degrees of freedom.
    """
    x = np.asarray(data_tv, dtype=np.float32)
    x = x - x.mean(axis=0, keepdims=True)
    sd = x.std(axis=0)
    x /= np.where(sd > 0, sd, 1.0)
    c = dct(x, type=2, axis=0, norm="ortho")
    power = _median_power(c)
    if not power.size or not power.max() > 0:
        return np.zeros((0, x.shape[1]), np.float32)
    c = c[power > bin_rtol * power.max()]
    power = power[power > bin_rtol * power.max()]
    gram = (c @ c.T).astype(np.float64) / c.shape[1]
    lam, vecs = np.linalg.eigh((gram + gram.T) / 2)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    pos = lam > 1e-6 * lam[0]
    keep = pos & (lam > rank_rtol * np.median(lam[pos]))
    u = vecs[:, keep]
    lev = np.sum(u * u, axis=1)
    w, sqrt_sigma = _whiten(c, u, power, lev, smooth_bins)
    for _ in range(int(n_iter) - 1):
        # Networks raise the median power of the bins their time courses occupy, so
        # the first pass under-whitens those bins. Re-measure each bin's noise on the
        # residual after projecting out the directions that stand above a single run's
        # Marchenko-Pastur edge, with the leverage they take (Q_ff - h_f) divided out.
        top = _run_signal(w)
        if top.shape[1] == 0:
            break
        b, _ = np.linalg.qr(u @ (sqrt_sigma @ top))
        c_res = c - (b @ (b.T @ c)).astype(np.float32)
        w, sqrt_sigma = _whiten(c, u, _median_power(c_res), lev - np.sum(b * b, axis=1),
                                smooth_bins)
    scale = np.median(w * w) / _CHI2_1_MEDIAN
    return w / np.float32(np.sqrt(scale) if scale > 0 else 1.0)


def _whiten(c, u, power, lev, smooth_bins):
    """``(U^T D U)^(-1/2) U^T c`` with D = power / leverage (smoothed over bins), and
    ``(U^T D U)^(1/2)``."""
    noise = power / np.clip(lev, 0.1, 1.0)
    if smooth_bins > 1 and noise.size > smooth_bins:
        noise = median_filter(noise, size=int(smooth_bins), mode="nearest")
    sigma = u.T @ (noise[:, None] * u)
    s_val, s_vec = np.linalg.eigh((sigma + sigma.T) / 2)
    s_val = np.maximum(s_val, s_val.max() * 1e-9)
    inv_sqrt = (s_vec / np.sqrt(s_val)) @ s_vec.T
    return (inv_sqrt @ u.T).astype(np.float32) @ c, (s_vec * np.sqrt(s_val)) @ s_vec.T


def _run_signal(w) -> np.ndarray:
    """Eigenvectors (r x m) of a whitened run above its own noise bulk (:func:`edge_count`:
    the bulk's width is fitted, so spatially smooth noise is not taken as signal); m <= r / 2."""
    r, v = w.shape
    gram = (w @ w.T).astype(np.float64) / v
    lam, vecs = np.linalg.eigh((gram + gram.T) / 2)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    m = min(edge_count(lam)[0], r // 2)
    return vecs[:, :m]


def pool_stride(mask_3d, max_rows: int = None) -> int:
    """Voxel stride of the pooled estimate: 2 (every second voxel along each axis, 1/8
    of them) when that still leaves twice ``max_rows`` voxels, else 1. The runs are
    whitened on those voxels only, so the estimate costs 1/8 on a 4 mm brain."""
    if mask_3d is None:
        return 1
    rows = MAX_POOLED_ROWS if max_rows is None else int(max_rows)
    return 2 if int(np.asarray(mask_3d).sum()) / 8 >= 2 * rows else 1


def pool_index(mask_3d, n_voxels: int, stride: int) -> np.ndarray:
    """Columns of the in-mask data (C order) that the pooled estimate uses."""
    return _subsample_index(mask_3d, n_voxels, stride)


def _subsample_index(mask_3d, n_voxels: int, stride: int) -> np.ndarray:
    if stride <= 1 or mask_3d is None:
        return np.arange(n_voxels)
    mask = np.asarray(mask_3d, dtype=bool)
    on = np.ones(mask.shape, dtype=bool)
    for g in np.indices(mask.shape):
        on &= (g % stride) == 0
    return np.flatnonzero(on[mask])


def _eigenvalues(stack: np.ndarray) -> np.ndarray:
    """Descending eigenvalues of ``stack stack^T / n_columns`` (via the smaller gram)."""
    small = stack @ stack.T if stack.shape[0] <= stack.shape[1] else stack.T @ stack
    return np.linalg.eigvalsh((small + small.T) / 2)[::-1] / stack.shape[1]


def _smoothed_noise(n, mask, fwhm, rng) -> np.ndarray:
    """(n, V) white noise smoothed by a Gaussian of ``fwhm`` voxels per axis, then masked
    and variance-normalised per voxel (as the runs are)."""
    from scipy.ndimage import gaussian_filter

    sig = [float(f) / np.sqrt(8 * np.log(2)) if f >= _MIN_FWHM else 0.0 for f in fwhm]
    # only the mask's bounding box (plus the kernel's reach) is drawn
    lo = [max(int(np.min(ix)) - int(np.ceil(4 * sg)), 0) for ix, sg in zip(np.nonzero(mask), sig)]
    hi = [min(int(np.max(ix)) + int(np.ceil(4 * sg)) + 1, n_ax)
          for ix, sg, n_ax in zip(np.nonzero(mask), sig, mask.shape)]
    box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    e = rng.standard_normal((int(n),) + box.shape, dtype=np.float32)
    if any(sg > 0 for sg in sig):
        e = gaussian_filter(e, [0.0] + sig, mode="constant")
    e = e[:, box]
    e /= np.where(e.std(axis=0) > 0, e.std(axis=0), 1.0)
    return e


def matched_fwhm(data_fwhm, mask_3d, rng, *, index=None, stride: int = 1, n: int = 24,
                 n_iter: int = 3) -> np.ndarray:
    """The kernel FWHM (voxels) whose smoothed noise *measures* ``data_fwhm`` with
    :func:`dpnbids.analysis.noise.smoothness` on the pooled voxels (``index``, every
    ``stride``-th voxel). Its lag-1 estimator is biased low for small FWHM on a voxel
    grid (a 1.5-voxel kernel measures 1.4), which would shrink the null's eigenvalue
    spread and let smooth noise through as components; matching what is measured
    removes the bias, on the subsampled grid as on the full one."""
    mask = np.asarray(mask_3d, dtype=bool)
    index = np.arange(int(mask.sum())) if index is None else index
    sub = mask[::stride, ::stride, ::stride]
    target = np.asarray(data_fwhm, dtype=float)
    f = target * stride
    for _ in range(int(n_iter)):
        if not np.all(target * stride > 0.6):
            break
        _, got = smoothness(_smoothed_noise(n, mask, f, rng)[:, index], sub)
        f = np.where(got > 0, f * target / np.where(got > 0, got, 1.0), f)
    return f


def null_spectrum(n_rows: int, mask_3d, fwhm, index, rng, *, stride: int = 1,
                  chunk: int = 64) -> np.ndarray:
    """Eigenvalues of ``n_rows`` rows of white noise smoothed to ``fwhm`` (voxels, per axis).

    The parallel-analysis null of :func:`estimate_pooled_order`: noise that is
    white in time (as the whitened runs are) with the spatial smoothness
    measured on the data, masked and subsampled like them (``index``).
    """
    mask = np.asarray(mask_3d, dtype=bool)
    if all(float(f) < _MIN_FWHM * stride for f in fwhm):  # independent: draw only those used
        rows = [rng.standard_normal((int(n_rows), int(np.size(index))), dtype=np.float32)]
    else:
        rows = [_smoothed_noise(min(chunk, int(n_rows) - start), mask, fwhm, rng)[:, index]
                for start in range(0, int(n_rows), chunk)]
    null = np.concatenate(rows).astype(np.float64)
    null /= null.std()
    return _eigenvalues(null)


def edge_count(eigenvalues, *, alpha_quantile: float = _TW1_99, max_iter: int = 50
               ) -> tuple[int, float, float]:
    """Number of eigenvalues above a Marchenko-Pastur bulk fitted to the others.

    The bulk (all eigenvalues but the top ``k``) is matched to a
    Marchenko-Pastur law by its first two moments: scale ``s2 = mean``, ratio
    ``g = var / mean^2`` (for ``p`` dimensions and ``n`` i.i.d. samples,
    ``g = p / n``). An eigenvalue counts when it exceeds the bulk's largest
    value expected under that law at the Tracy-Widom quantile
    ``alpha_quantile`` (Johnstone 2001, with ``n = p / g``). Starting from
    ``k = 0`` the count and the fit alternate until ``k`` repeats.

    Returns
    -------
    k : int
    threshold : float
        The last threshold (same units as the eigenvalues).
    ratio : float
        The fitted ``g``.
    """
    lam = np.sort(np.asarray(eigenvalues, dtype=np.float64))[::-1]
    lam = lam[lam > (lam[0] * 1e-9 if lam.size else 0)]
    p = lam.size
    k, thr, g = 0, np.inf, np.nan
    for _ in range(max_iter):
        bulk = lam[k:]
        if bulk.size < 3:
            break
        m = bulk.mean()
        g = max(bulk.var() / (m * m), 1e-6)
        n = p / g
        a, b = np.sqrt(n - 0.5), np.sqrt(p - 0.5)
        mu = (a + b) ** 2
        sig = (a + b) * (1 / a + 1 / b) ** (1 / 3)
        thr = m * (mu + alpha_quantile * sig) / n
        k_new = int(np.sum(lam > thr))
        k_new = min(k_new, p - 3)
        if k_new == k:
            break
        k = k_new
    return k, float(thr), float(g)


@dataclass(frozen=True)
class PooledOrderEstimate:
    """Result of :func:`estimate_pooled_order`.

    Attributes
    ----------
    n_components : int
        Number of eigenvalues above the noise bulk (0 for pure noise).
    eigenvalues : ndarray
        Descending eigenvalues of the pooled covariance (the scree plot).
    threshold : float
        The null eigenvalue (scaled, plus margin) that stopped the count, on the
        scale of ``eigenvalues``.
    ratio : float
        The null's top eigenvalue after matching it to the data's bulk, over its
        raw value; without a mask the fitted Marchenko-Pastur ratio.
    dof : ndarray of int
        Each run's temporal degrees of freedom after denoising (rows it added).
    stride : int
        Voxel subsampling stride.
    n_voxels : int
        Voxels pooled.
    fwhm : ndarray, shape (3,)
        Spatial smoothness (voxels per axis) of the null.
    n_edge : int
        Eigenvalues above the null's *largest* one (the stricter edge rule,
        kept for comparison; it misses networks near the bulk's edge).
    null : ndarray or None
        The null's eigenvalues, scaled and with the margin: the thresholds.
    """

    n_components: int
    eigenvalues: np.ndarray = field(repr=False)
    threshold: float
    ratio: float
    dof: np.ndarray = field(repr=False)
    stride: int
    n_voxels: int
    fwhm: np.ndarray = field(repr=False)
    n_edge: int = -1
    null: np.ndarray = field(default=None, repr=False)


def estimate_pooled_order(subject_loader: Callable[[int], np.ndarray], n_subjects: int,
                          mask_3d=None, *, max_rows: int = MAX_POOLED_ROWS,
                          whitened: Optional[list] = None, random_state=None,
                          n_null: int = 1, margin: float = 0.05, soft: float = 0.1
                          ) -> PooledOrderEstimate:
    """Group model order from the pooled, whitened runs (module docstring).

    Parameters
    ----------
    subject_loader : callable
        ``subject_loader(i) -> (T_i, V)`` in-mask data; each run is loaded once.
    n_subjects : int
    mask_3d : array_like of bool, optional
        Group mask (its True voxels, C order, are the columns): gives the
        geometry for the smoothness-based voxel stride. Without it every voxel
        is kept.
    max_rows : int
        Cap on the pooled rows: if the runs' dof add up to more, an evenly
        spaced subset of the runs is pooled. Bounds time and memory.
    random_state : int, Generator or None
        Seed of the null noise.
    n_null : int
        Null spectra drawn; the threshold uses the largest top eigenvalue.
    margin : float
        Relative margin above the null's eigenvalues.
    soft : float
        Below the null's largest eigenvalue, eigenvalues within this fraction of
        it still count when they exceed the null's eigenvalue of their rank.
    whitened : list, optional
        Runs already whitened by :func:`whiten_run` on the columns
        ``pool_index(mask_3d, V, pool_stride(mask_3d, max_rows))`` (then the loader
        is not called).

    Returns
    -------
    PooledOrderEstimate
    """
    n_subjects = int(n_subjects)
    if n_subjects < 1:
        raise ValueError(f"need at least one run; received n_subjects={n_subjects}.")
    n_vox = int(np.asarray(mask_3d).sum()) if mask_3d is not None else None
    stride = pool_stride(mask_3d, max_rows)
    if whitened is not None:
        runs = whitened
        n_vox = n_vox if n_vox is not None else runs[0].shape[1]
    else:
        first = subject_loader(0)
        n_vox = first.shape[1] if n_vox is None else n_vox
        idx = pool_index(mask_3d, n_vox, stride)
        runs = [whiten_run((first if i == 0 else subject_loader(i))[:, idx])
                for i in range(n_subjects)]
    idx = pool_index(mask_3d, n_vox, stride)
    if runs[0].shape[1] != idx.size:
        raise ValueError(f"the whitened runs have {runs[0].shape[1]} columns; the pooled "
                         f"estimate uses {idx.size} (pool_index of the mask, stride {stride}).")
    dof = np.array([w.shape[0] for w in runs], dtype=int)
    n_used = max(1, min(len(runs), int(max_rows) // max(int(np.median(dof)), 1)))
    used = np.unique(np.linspace(0, len(runs) - 1, n_used).round().astype(int))
    n_rows = int(dof[used].sum())
    stack = np.concatenate([runs[i] for i in used]).astype(np.float64)
    lam = _eigenvalues(stack)
    del stack
    if mask_3d is None:
        k, thr, g = edge_count(lam)
        return PooledOrderEstimate(int(k), lam, thr, g, dof, stride, int(idx.size),
                                   np.zeros(3), int(k))
    mask = np.asarray(mask_3d, dtype=bool)
    _, fwhm = smoothness(_residual(runs[used[0]]), mask[::stride, ::stride, ::stride])
    rng = np.random.default_rng(random_state)
    fwhm = matched_fwhm(fwhm, mask, rng, index=idx, stride=stride)
    null = np.max([null_spectrum(n_rows, mask, fwhm, idx, rng, stride=stride)
                   for _ in range(n_null)], axis=0)
    thr = _fit_null(lam, null) * (1.0 + margin)
    scale = float(thr[0] / null[0] / (1.0 + margin))
    k = _rankwise_count(lam, thr, soft)
    return PooledOrderEstimate(k, lam, float(thr[min(k, thr.size - 1)]), float(scale), dof,
                               stride, int(idx.size), np.asarray(fwhm, dtype=float),
                               int(np.sum(lam > thr[0])), thr)


def _residual(w: np.ndarray) -> np.ndarray:
    """A whitened run without the directions above its own noise bulk: the networks'
    smooth maps would otherwise raise the measured smoothness of the noise."""
    top = _run_signal(w).astype(w.dtype)
    return w - top @ (top.T @ w) if top.shape[1] else w


def _fit_null(lam: np.ndarray, null: np.ndarray, lo: float = 0.2, hi: float = 0.8
              ) -> np.ndarray:
    """The null's eigenvalues mapped onto the data's bulk: ``a + b * null``, fitted by least
    squares on the ranks between the ``lo`` and ``hi`` quantiles of the spectrum (a
    quantile-quantile line: the networks, at the top, do not enter it). Scale *and* spread
    are matched, so a bulk that residual temporal colour widened is not counted as networks."""
    n = min(lam.size, null.size)
    sel = slice(int(lo * n), max(int(hi * n), int(lo * n) + 3))
    x, y = null[:n][sel], lam[:n][sel]
    b, a = np.polyfit(x, y, 1) if np.ptp(x) > 0 else (np.mean(y) / max(np.mean(x), 1e-12), 0.0)
    b = max(float(b), 1e-6)
    return a + b * null[:n]


def _rankwise_count(lam: np.ndarray, thr: np.ndarray, soft: float) -> int:
    """Leading eigenvalues above the null's largest (the edge); then, below the edge but
    within ``soft`` of it, eigenvalues that exceed the null's eigenvalue of the same rank
    *within the bulk* (Horn's parallel analysis, with the ranks shifted by the ``k`` above
    the edge, which displace the data's bulk by ``k`` places). The count stops at the
    first that fails."""
    n = min(lam.size, thr.size)
    k = 0
    while k < n and lam[k] > thr[0]:
        k += 1
    shift = k
    while k < n and lam[k] > (1.0 - soft) * thr[0] and lam[k] > thr[k - shift]:
        k += 1
    return k


def pooled_group_estimate(pooled: PooledOrderEstimate, *, max_order: Optional[int] = None,
                          pca_dim: Optional[int] = None):
    """The :class:`dpnbids.analysis.model_order.GroupOrderEstimate` of a pooled estimate:
    capped by the smallest run's dof, ``pca_dim`` and ``max_order``; at least 1."""
    from dpnbids.analysis.model_order import GroupOrderEstimate

    cap = int(pooled.dof.min()) if pooled.dof.size else 1
    for c in (max_order, pca_dim):
        if c is not None:
            cap = min(cap, int(c))
    cap = max(cap, 1)
    k = max(1, min(int(pooled.n_components), cap))
    lam = pooled.eigenvalues[pooled.eigenvalues > 0]
    thr = pooled.null if pooled.null is not None else np.full(lam.size, pooled.threshold)
    n = min(lam.size, thr.size, _SCREE_LENGTH)
    empty = np.zeros(0)
    return GroupOrderEstimate(k, float(pooled.n_components), "pooled", cap,
                              pooled.n_components > cap, (), empty.astype(int), empty,
                              pooled.dof, lam[:n] / lam.sum(), lam[:n] / thr[:n], pooled)


def order_warnings(n_components: int, *, estimate=None, stability=None, expected=None,
                   min_stability: float = 0.7) -> list:
    """Plain-language warnings about the components a group ICA kept.

    Parameters
    ----------
    n_components : int
        Components fitted.
    estimate : GroupOrderEstimate, optional
        The automatic estimate (``--n-components auto``).
    stability : array_like, optional
        ICASSO stability index per component (NaN without ``--ica-repeats``).
    expected : int, optional
        Networks expected (e.g. the reference templates the components are
        matched to, or a fixed ``--n-components``).
    min_stability : float
        Iq below which a component is reported as unstable.

    Returns
    -------
    list of str
    """
    out = []
    if estimate is not None:
        raw = float(estimate.raw_n_components)
        if estimate.capped:
            out.append(f"the data support {raw:g} components but only {estimate.cap} fit the "
                       "shortest run's temporal degrees of freedom (or `pca_dim`): networks "
                       "beyond the cap are merged. Longer runs or a lighter `denoise_strategy` "
                       "keep more.")
        if expected is not None and raw < int(expected):
            out.append(f"the data support {raw:g} components above the noise, fewer than the "
                       f"{int(expected)} networks expected: weak networks may be missing or "
                       "merged with others. More runs or longer runs make weak networks "
                       "detectable; a fixed `n_components` above the estimate splits the "
                       "maps further but cannot add information.")
    elif expected is not None and int(n_components) < int(expected):
        out.append(f"{int(n_components)} components were requested (`n_components`), fewer "
                   f"than the {int(expected)} networks expected: some networks will be merged.")
    if stability is not None:
        iq = np.asarray(stability, dtype=float)
        weak = np.flatnonzero(np.isfinite(iq) & (iq < min_stability))
        if weak.size:
            listing = ", ".join(f"#{i} (Iq {iq[i]:.2f})" for i in weak[:10])
            out.append(f"{weak.size} of {iq.size} components are unstable across the ICASSO "
                       f"runs (stability Iq < {min_stability:g}): {listing}. Treat them with "
                       "caution; fewer components or more `ica_repeats` may stabilise them.")
    return out
