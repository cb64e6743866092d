"""Dual regression: exact recovery of planted maps/time courses, lstsq reference, t->z."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from dpnbids.analysis.dual_regression import dual_regression, dual_regression_many, t_to_z
from dpnbids.exceptions import DimensionError, InputError


def scipy_t_to_z(t, dof):
    """t -> z with scipy, on the upper tail of |t| (1 - cdf loses the lower tail)."""
    return np.sign(t) * sps.norm.isf(sps.t.sf(np.abs(t), dof))


def reference(data, maps, *, des_norm=True):
    """Direct numpy.linalg.lstsq implementation of FSL dual regression (demean=True)."""
    y = np.asarray(data, dtype=np.float64)
    g = np.asarray(maps, dtype=np.float64)
    g_c = g - g.mean(axis=1, keepdims=True)
    y_s = y - y.mean(axis=1, keepdims=True)  # each volume demeaned over voxels
    tc = np.linalg.lstsq(g_c.T, y_s.T, rcond=None)[0].T  # (T, K)
    x = tc - tc.mean(axis=0)
    if des_norm:
        x = x / x.std(axis=0, ddof=1)
    y_t = y - y.mean(axis=0)
    beta, rss, *_ = np.linalg.lstsq(x, y_t, rcond=None)
    t, k = x.shape
    dof = t - k - 1
    sigma2 = ((y_t - x @ beta) ** 2).sum(axis=0) / dof
    se = np.sqrt(np.outer(np.diag(np.linalg.inv(x.T @ x)), sigma2))
    tstat = beta / se
    z = scipy_t_to_z(tstat, dof)
    return tc, beta, z, dof


def planted(rng, t=53, k=4, v=977):
    maps = rng.normal(size=(k, v))
    maps -= maps.mean(axis=1, keepdims=True)
    tcs = rng.normal(size=(t, k)) * rng.uniform(0.5, 3, size=k)
    tcs -= tcs.mean(axis=0)
    return maps, tcs


def test_matches_lstsq_reference(rng):
    maps, tcs = planted(rng)
    data = tcs @ maps + 0.7 * rng.normal(size=(53, 977)) + rng.normal(size=(1, 977)) * 5
    res = dual_regression(data, maps)
    tc_ref, beta_ref, z_ref, dof = reference(data, maps)
    assert res.dof == dof == 53 - 4 - 1
    np.testing.assert_allclose(res.timecourses, tc_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.maps, beta_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res.zmaps, z_ref, rtol=1e-6, atol=1e-8)
    _, beta_raw, _, _ = reference(data, maps, des_norm=False)
    np.testing.assert_allclose(dual_regression(data, maps, des_norm=False).maps, beta_raw,
                               rtol=1e-8, atol=1e-10)


def test_noise_free_exact_recovery(rng):
    maps, tcs = planted(rng)
    data = tcs @ maps + 3.0  # a global offset is removed by demeaning
    with pytest.warns(RuntimeWarning, match="leaves none for the residuals"):
        res = dual_regression(data, maps, des_norm=False)  # rank K: no residual dof
    assert res.dof == 0 and not res.zmaps.any()
    np.testing.assert_allclose(res.timecourses, tcs, atol=1e-9)
    np.testing.assert_allclose(res.maps, maps, atol=1e-9)
    # with des_norm the maps carry each time course's standard deviation
    with pytest.warns(RuntimeWarning):
        res_n = dual_regression(data, maps, des_norm=True)
    np.testing.assert_allclose(res_n.maps, maps * tcs.std(axis=0, ddof=1)[:, None], atol=1e-9)


def test_float32_in_float32_out(rng):
    maps, tcs = planted(rng, t=40, k=3, v=500)
    data = (tcs @ maps + 0.5 * rng.normal(size=(40, 500))).astype(np.float32)
    res = dual_regression(data, maps.astype(np.float32))
    assert res.maps.dtype == res.zmaps.dtype == res.timecourses.dtype == np.float32
    ref = dual_regression(data.astype(np.float64), maps)
    np.testing.assert_allclose(res.maps, ref.maps, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(res.zmaps, ref.zmaps, rtol=1e-3, atol=1e-3)


def test_t_to_z_matches_scipy_and_keeps_tails():
    t = np.array([-8.0, -2.5, -0.3, 0.0, 0.4, 1.96, 6.0])
    for dof in (5, 37, 200):
        np.testing.assert_allclose(t_to_z(t, dof), scipy_t_to_z(t, dof), atol=1e-10)
        # moderate values also agree with the textbook one-sided formula
        mid = t[np.abs(t) < 3]
        np.testing.assert_allclose(t_to_z(mid, dof), sps.norm.isf(sps.t.sf(mid, dof)),
                                   atol=1e-9)
    # large arrays take the interpolated path: same values to 1e-7
    many = np.random.default_rng(1).standard_t(4, 200_003) * 4
    many[:3] = [0.0, 55.0, -41.0]
    np.testing.assert_allclose(t_to_z(many, 4), scipy_t_to_z(many, 4), atol=1e-7)
    # far negative tail: isf(sf(t)) overflows to -inf, ours stays finite and symmetric
    big = t_to_z(np.array([40.0, -40.0]), 100)
    assert np.isneginf(sps.norm.isf(sps.t.sf(-40.0, 100)))
    assert np.all(np.isfinite(big)) and big[0] > 10 and big[0] == -big[1]


def test_shape_checks(rng):
    maps, tcs = planted(rng, t=30, k=3, v=200)
    data = tcs @ maps
    with pytest.raises(DimensionError, match="200 voxels.*have 150"):
        dual_regression(data, maps[:, :150])
    with pytest.raises(DimensionError, match="received shape \\(30, 10, 20\\)"):
        dual_regression(data.reshape(30, 10, 20), maps)
    with pytest.raises(DimensionError, match="at least 5 time points; received 4"):
        dual_regression(data[:4], maps)
    with pytest.raises(InputError, match="linearly dependent"):
        dual_regression(data, np.vstack([maps, maps[:1] * 2]))


def test_many_equals_single(rng):
    maps, _ = planted(rng, t=30, k=3, v=300)
    subjects = [rng.normal(size=(t, 300)) for t in (31, 44, 27)]
    out = list(dual_regression_many(lambda i: subjects[i], 3, maps))
    assert [i for i, _ in out] == [0, 1, 2]
    for (_, res), data in zip(out, subjects):
        np.testing.assert_allclose(res.maps, dual_regression(data, maps).maps)
        assert res.timecourses.shape == (data.shape[0], 3)


# --------------------------------------------------------------------------- temporal dof
def _denoised_run(rng, t=110, v=900, k=4, n_confounds=17):
    """A run band-passed (0.008-0.09 Hz, TR 2 s) and confound-regressed as the participant
    level does: about 19 of its 110 volumes' degrees of freedom are left."""
    from dpnbids.preproc.signal import fft_bandpass

    maps = rng.normal(size=(k, v))
    x = rng.normal(size=(t, k)) @ maps + rng.normal(size=(t, v))
    x = fft_bandpass(x, 2.0, high_pass=0.008, low_pass=0.09)
    conf = fft_bandpass(rng.normal(size=(t, n_confounds)), 2.0, high_pass=0.008,
                        low_pass=0.09)
    q, _ = np.linalg.qr(conf)
    return (x - q @ (q.T @ x)).astype(np.float32), maps


def test_dual_regression_uses_the_runs_temporal_dof(rng):
    from dpnbids.analysis.dual_regression import temporal_rank

    data, maps = _denoised_run(rng)
    r = temporal_rank(data)
    assert 15 <= r <= 25  # not 109
    res = dual_regression(data, maps)
    assert res.dof == r - maps.shape[0]
    # the same z as the GLM with the residual dof counted in the run's span
    assert dual_regression(data, maps, dof=r).dof == res.dof
    # a dof the participant level recorded is taken as given
    assert dual_regression(data, maps, dof=r - 2).dof == r - 2 - maps.shape[0]
    # z under the null: unit variance only with the right dof (T - K - 1 would shrink it)
    null = _denoised_run(rng, k=0)[0]  # noise only
    z = dual_regression(null, maps).zmaps
    assert 0.8 < float(z.std()) < 1.25


def test_dual_regression_refuses_components_beyond_the_dof(rng):
    from dpnbids.analysis.dual_regression import temporal_rank

    data, _ = _denoised_run(rng, k=2)
    r = temporal_rank(data)
    maps = rng.normal(size=(r + 1, data.shape[1]))
    with pytest.raises(DimensionError, match=rf"{r + 1} components.*keeps {r} \(dof.*`n_components`"):
        dual_regression(data, maps)
    with pytest.warns(RuntimeWarning, match="none for the residuals"):
        assert dual_regression(data, maps[:r]).dof == 0  # K == dof: says so
    with pytest.raises(InputError, match="dof=500"):
        dual_regression(data, maps[:3], dof=500)
