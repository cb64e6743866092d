"""Automatic ICA model order: planted spatial sources in smooth/coloured/band-passed noise."""
from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.signal import lfilter

from dpnbids.analysis.decomposition import GroupICA
from dpnbids.analysis.model_order import (METHODS, effective_samples, estimate_group_order,
                                 estimate_order, estimate_subject_order, mp_expected_spectrum,
                                 smoothness, temporal_whiten)
from dpnbids.preproc.signal import fft_bandpass

SHAPE = (20, 24, 20)
TR = 2.0


@pytest.fixture(scope="module")
def mask():
    g = np.indices(SHAPE).astype(float)
    r = sum(((g[i] - (s - 1) / 2) / (s / 2 - 0.5)) ** 2 for i, s in enumerate(SHAPE))
    return r <= 1.0  # ellipsoid, 4304 voxels


def blobs(rng, mask, k, sigma=2.0):
    """k spatial sources, each two Gaussian blobs (sigma 2 voxels), peak 1."""
    idx = np.argwhere(mask)
    maps = np.zeros((k, int(mask.sum())))
    for j in range(k):
        vol = np.zeros(mask.shape)
        for c in idx[rng.integers(len(idx), size=2)]:
            vol[tuple(c)] = 1.0
        m = gaussian_filter(vol, sigma)[mask]
        maps[j] = m / m.max()
    return maps


def bandpass(x):
    return fft_bandpass(x, TR, high_pass=0.008, low_pass=0.09)


def planted(rng, mask, k, *, t=120, amp=2.0, fwhm=0.0, ar=0.0, band=False, n_confounds=0):
    """(T, V) data: amp * random time courses x blob maps + unit-variance noise.

    fwhm: Gaussian spatial smoothing of the noise (voxels); ar: AR(1) coefficient
    of the noise; band: the pipeline's band-pass (0.008-0.09 Hz at TR 2 s) of
    noise and time courses; n_confounds: band-passed random confounds regressed out.
    """
    v = int(mask.sum())
    maps = blobs(rng, mask, max(k, 1)) * (k > 0)
    tcs = rng.normal(size=(t, maps.shape[0]))
    e = rng.normal(size=(t, v))
    if ar:
        e = lfilter([1.0], [1.0, -ar], e, axis=0) * np.sqrt(1 - ar ** 2)
    if fwhm:
        vol = np.zeros((t,) + mask.shape)
        vol[:, mask] = e
        s = fwhm / np.sqrt(8 * np.log(2))
        e = gaussian_filter(vol, (0, s, s, s))[:, mask]
        e /= e.std()
    if band:
        tcs = bandpass(tcs)
        tcs /= tcs.std(axis=0)
        e = bandpass(e)
    x = amp * tcs @ maps + e
    if n_confounds:
        conf = bandpass(rng.normal(size=(t, n_confounds)))
        q, _ = np.linalg.qr(conf)
        x = x - q @ (q.T @ x)
    return x.astype(np.float32)


def within(k_hat, k, tol=0.2):
    return abs(k_hat - k) <= tol * k


# --------------------------------------------------------------------------- estimator
def test_estimate_order_known_spectrum():
    # sample covariance of N = 5000 draws from 4 spikes over a unit floor (d = 50)
    rng = np.random.default_rng(0)
    sd = np.sqrt(np.concatenate([[50.0, 30.0, 20.0, 10.0], np.ones(46)]))
    y = sd[:, None] * rng.normal(size=(50, 5000))
    lam_noisy = np.linalg.eigvalsh(y @ y.T / 5000)
    lam = np.concatenate([[50.0, 30.0, 20.0, 10.0], np.ones(46)])
    for m in ("lap", "bic", "mdl"):
        est = estimate_order(lam_noisy, 5000, method=m)
        assert est.n_components == 4, m
        assert est.criterion.shape == est.candidates.shape
        assert est.n_features == 50
    # scale invariance
    a = estimate_order(lam_noisy, 5000, "lap")
    b = estimate_order(lam_noisy * 1e-6, 5000, "lap")
    assert a.n_components == b.n_components
    with pytest.raises(ValueError):
        estimate_order(lam, 100, method="nope")


def test_estimate_order_zero_and_truncated_spectrum():
    lam = np.concatenate([[40.0, 20.0, 9.0], np.ones(30), np.zeros(20), [-1e-12, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log(0) / divide warnings
        for m in METHODS:
            est = estimate_order(lam, 2000, method=m)
            assert est.n_features == 33 and np.all(est.eigenvalues > 0)
            assert np.all(np.isfinite(est.criterion[est.criterion > -np.inf]))
    assert estimate_order(lam, 2000, "lap").n_components == 3
    # truncated: top 10 of 200 known, the tail from the total variance
    full = np.concatenate([[40.0, 20.0, 9.0], np.ones(197)])
    est = estimate_order(full[:10], 2000, "lap", n_features=200, total_variance=full.sum())
    assert est.n_components == 3 and est.n_features == 200 and est.n_known == 10
    # all zero / empty spectra
    assert estimate_order(np.zeros(5), 100).n_components == 0
    assert estimate_order([], 100).n_components == 0


def test_mp_expected_spectrum():
    p = mp_expected_spectrum(100, 400)
    assert p.shape == (100,) and np.all(np.diff(p) <= 0)
    assert p[0] < (1 + 0.5) ** 2 and p[-1] > (1 - 0.5) ** 2
    assert abs(p.mean() - 1) < 0.02


# --------------------------------------------------------------------------- N_eff
def test_effective_samples_white_and_smooth(rng, mask):
    v = int(mask.sum())
    white = rng.normal(size=(40, v))
    rho, fwhm = smoothness(white, mask)
    assert np.all(rho < 0.05)
    assert effective_samples(white, mask) > 0.9 * v
    smooth = planted(rng, mask, 0, t=40, fwhm=2.5)
    rho, fwhm = smoothness(smooth, mask)
    assert np.all(np.abs(fwhm - 2.5) < 0.6), fwhm
    n_eff = effective_samples(smooth, mask)
    # Gaussian theory: V / prod(sqrt(pi / (4 ln 2)) * FWHM) = 4304 / 18.8 ~ 229
    assert 150 < n_eff < 330, n_eff
    with pytest.raises(ValueError):
        smoothness(smooth[:, :-1], mask)


# --------------------------------------------------------------------------- subjects
@pytest.mark.parametrize("k", [5, 12])
def test_planted_white_noise(mask, k):
    x = planted(np.random.default_rng(k), mask, k)
    for m in ("lap", "mdl"):
        assert within(estimate_subject_order(x, mask, method=m).n_components, k), m


@pytest.mark.parametrize("k", [5, 12])
def test_planted_smooth_noise_needs_correction(mask, k):
    x = planted(np.random.default_rng(10 + k), mask, k, amp=3.0, fwhm=2.5)
    naive = estimate_subject_order(x, mask, method="lap", smoothness_correction=False)
    assert naive.n_components > 3 * k  # N = V: the sampling noise looks like signal
    for m in ("lap", "mdl"):
        est = estimate_subject_order(x, mask, method=m)
        assert within(est.n_components, k), (m, est.n_components)
        assert est.n_eff < 0.1 * x.shape[1]


@pytest.mark.parametrize("k", [5, 12])
@pytest.mark.parametrize("noise", ["ar1", "band"])
def test_planted_coloured_noise(mask, k, noise):
    kw = {"ar": 0.6} if noise == "ar1" else {"band": True}
    x = planted(np.random.default_rng(20 + k), mask, k, **kw)
    for m in ("lap", "mdl"):
        est = estimate_subject_order(x, mask, method=m)
        assert within(est.n_components, k), (m, est.n_components)
    if noise == "ar1":  # without whitening the low-frequency noise counts as signal
        naive = estimate_subject_order(x, mask, whiten=False)
        assert naive.n_components > 3 * k


@pytest.mark.parametrize("kw", [{}, {"fwhm": 2.5}, {"ar": 0.6}, {"band": True}])
def test_pure_noise_gives_zero(rng, mask, kw):
    """The minimum order is 0 (no component above the isotropic noise floor)."""
    x = planted(rng, mask, 0, **kw)
    for m in ("lap", "bic", "mdl"):
        assert estimate_subject_order(x, mask, method=m).n_components == 0, m


def test_rank_deficient_band_passed_never_exceeds_rank(rng, mask):
    # T = 110 at TR 2 s: 36 bins in 0.008-0.09 Hz, 10 confounds regressed -> rank 26
    x = planted(rng, mask, 30, t=110, band=True, n_confounds=10, amp=3.0)
    rank = np.linalg.matrix_rank(x.astype(np.float64) - x.mean(0), tol=1e-3 * np.abs(x).max())
    assert 20 <= rank <= 30
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for m in METHODS:
            est = estimate_subject_order(x, mask, method=m)
            assert est.dof <= rank
            assert 0 <= est.n_components <= est.dof - 2
    w, kept = temporal_whiten(x)
    assert kept.size <= 36


# --------------------------------------------------------------------------- group
def _group(rng, mask, k, n_subjects, **kw):
    v = int(mask.sum())
    maps = blobs(rng, mask, k)
    subs = []
    for _ in range(n_subjects):
        t = int(rng.integers(90, 121))
        tcs = bandpass(rng.normal(size=(t, k)))
        tcs /= tcs.std(axis=0)
        vol = np.zeros((t,) + mask.shape)
        vol[:, mask] = rng.normal(size=(t, v))
        e = gaussian_filter(vol, (0, 1.0, 1.0, 1.0))[:, mask]
        e = bandpass(e / e.std())
        subs.append((3.0 * tcs @ maps + e).astype(np.float32))
    return maps, subs


@pytest.mark.filterwarnings("ignore:FastICA did not converge")
def test_group_order_and_groupica_auto(mask):
    k = 6
    maps, subs = _group(np.random.default_rng(7), mask, k, 5)
    grp = estimate_group_order(lambda i: subs[i], len(subs), mask, method="lap")
    assert within(grp.n_components, k), grp.subject_n_components
    assert grp.subject_n_components.shape == (5,) and grp.n_eff.shape == (5,)
    assert grp.cap == min(grp.dof)
    assert grp.criterion.ndim == 1 and grp.spectrum.ndim == 1
    ica = GroupICA(n_components="auto", pca_dim=20, random_state=0, mask=mask)
    ica.fit_arrays(lambda i: subs[i], len(subs))
    assert within(ica.n_components_, k)
    assert ica.order_estimate_.n_components == ica.n_components_
    assert ica.components_.shape == (ica.n_components_, int(mask.sum()))
    r = np.abs(np.corrcoef(np.vstack([maps, ica.components_]))[:k, k:]).max(axis=1)
    assert np.median(r) > 0.8
    # the caps: max_components and pca_dim
    capped = GroupICA(n_components="auto", pca_dim=20, random_state=0, mask=mask,
                      max_components=3).fit_arrays(lambda i: subs[i], len(subs))
    assert capped.n_components_ == 3 and capped.order_estimate_.capped
    capped = GroupICA(n_components="auto", pca_dim=4, random_state=0, mask=mask,
                      dim_est="mdl").fit_arrays(lambda i: subs[i], len(subs))
    assert capped.n_components_ == 4 and capped.order_estimate_.cap == 4
    # integer n_components: no estimate
    fixed = GroupICA(n_components=4, pca_dim=8, random_state=0).fit_arrays(lambda i: subs[i], 5)
    assert fixed.order_estimate_ is None and fixed.n_components_ == 4


def test_groupica_auto_without_mask_warns_and_bad_params(mask):
    _, subs = _group(np.random.default_rng(3), mask, 3, 2)
    with pytest.warns(RuntimeWarning, match="without a mask"):
        GroupICA(n_components="auto", pca_dim=10, random_state=0).fit_arrays(lambda i: subs[i], 2)
    from dpnbids.exceptions import InputError
    with pytest.raises(InputError):
        GroupICA(n_components="auto", dim_est="xyz").fit_arrays(lambda i: subs[i], 2)
    with pytest.raises(InputError):
        GroupICA(n_components="auto", max_components=0).fit_arrays(lambda i: subs[i], 2)


def test_model_order_is_pure():
    code = ("import sys, dpnbids.analysis.model_order; "
            "bad = [m for m in sys.modules if m.startswith(('nipype', 'dpnbids.workflows'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("fwhm", [0.0, 2.5])
def test_denoised_like_series_band_passed_and_regressed(mask, fwhm):
    """What the pipeline hands group ICA: band-pass, then 17 band-limited confounds
    regressed (110 volumes at TR 2 s: rank ~19). Whitening the DCT bins by their median
    power would colour this projected noise; "auto" reduces it to its rank instead."""
    rng = np.random.default_rng(11)
    x = planted(rng, mask, 5, t=110, amp=3.0, band=True, n_confounds=17, fwhm=fwhm)
    for m in ("lap", "mdl"):
        est = estimate_subject_order(x, mask, method=m)
        assert within(est.n_components, 5), (m, est.n_components, est.dof)
        assert est.dof <= 20
