"""Pooled group model order on cohorts of dpnbids.sim.planted (not dpnbids-synth's 5 networks)."""
from __future__ import annotations

import numpy as np
import pytest

from dpnbids.analysis.decomposition import GroupICA
from dpnbids.analysis.group_order import (edge_count, estimate_pooled_order,
                                          pooled_group_estimate, whiten_run)
from dpnbids.analysis.model_order import estimate_group_order
from dpnbids.analysis.noise import smoothness
from dpnbids.sim.planted import planted_cohort, recovery

SHAPE = (16, 20, 16)  # 2224 voxels
DENOISED = dict(band=(0.008, 0.09), n_confounds=17)  # ~19 of 110 dof left


def _lag1(runs):
    x = np.concatenate([r - r.mean(axis=0) for r in runs], axis=1)
    return float(np.sum(x[1:] * x[:-1]) / np.sum(x * x))


def test_planted_cohort_parameters_shape_the_data():
    c = planted_cohort(3, n_subjects=2, n_volumes=60, shape=SHAPE, seed=5)
    again = planted_cohort(3, n_subjects=2, n_volumes=60, shape=SHAPE, seed=5)
    assert len(c.runs) == 2 and c.runs[0].shape == (60, int(c.mask.sum())) == (60, 2224)
    assert c.maps.shape == (3, 2224) and np.allclose(c.maps.max(axis=1), 1.0)
    np.testing.assert_array_equal(c.runs[1], again.runs[1])
    noise = {name: planted_cohort(0, n_subjects=1, n_volumes=200, shape=SHAPE, noise=name,
                                  ar=0.5, seed=1).runs for name in ("white", "ar1", "pink")}
    assert abs(_lag1(noise["white"])) < 0.05
    assert 0.42 < _lag1(noise["ar1"]) < 0.58
    assert _lag1(noise["pink"]) > 0.3
    smooth = planted_cohort(0, n_subjects=1, n_volumes=40, shape=SHAPE, fwhm=2.0, seed=1)
    assert np.all(np.abs(smoothness(smooth.runs[0], smooth.mask)[1] - 2.0) < 0.35)
    den = planted_cohort(0, n_subjects=1, n_volumes=110, shape=SHAPE, seed=1, **DENOISED)
    assert 15 <= np.linalg.matrix_rank(den.runs[0].astype(np.float64), tol=1e-3) <= 22
    weak = planted_cohort(10, n_subjects=1, n_volumes=20, shape=SHAPE, weak_fraction=0.3,
                          weak_amplitude=0.2, seed=2)
    assert np.sum(weak.amplitudes == 0.2) == 3
    with pytest.raises(ValueError, match="noise must be one of"):
        planted_cohort(2, noise="brown")


@pytest.mark.parametrize("kw", [dict(noise="ar1", ar=0.6, fwhm=1.5, **DENOISED),
                                dict(noise="pink", fwhm=1.5, **DENOISED),
                                dict(noise="ar1", ar=0.6, n_volumes=60)])
def test_whitened_noise_is_white_and_unit(kw):
    run = planted_cohort(0, n_subjects=1, shape=SHAPE, seed=3, **kw).runs[0]
    w = whiten_run(run)
    r, v = w.shape
    assert r <= (22 if "band" in kw else 59)
    lam = np.linalg.eigvalsh((w.astype(np.float64) @ w.T) / v)
    # white, unit-variance noise: the spread of a Marchenko-Pastur bulk (smoothness widens it)
    assert 0.85 < lam.mean() < 1.15
    assert lam.max() / lam.min() < (1 + np.sqrt(r / v)) ** 2 / (1 - np.sqrt(r / v)) ** 2 * 3


@pytest.mark.parametrize("kw", [dict(noise="pink", fwhm=1.5, **DENOISED),
                                dict(noise="ar1", ar=0.6, fwhm=1.5, n_volumes=60)])
def test_pooled_order_of_pure_noise_is_small(kw):
    c = planted_cohort(0, n_subjects=12, shape=SHAPE, seed=4, **kw)
    est = estimate_pooled_order(c.loader, len(c.runs), c.mask, random_state=0)
    assert est.n_components <= 1
    grp = pooled_group_estimate(est, pca_dim=30)
    assert grp.n_components == max(1, est.n_components) and grp.method == "pooled"


@pytest.mark.parametrize("k, kw", [
    (11, dict(noise="ar1", ar=0.5, fwhm=1.5, n_subjects=20, **DENOISED)),
    (20, dict(noise="white", n_subjects=10, n_volumes=60)),
    (8, dict(noise="pink", fwhm=1.0, sizes=(1.0, 1.5), n_subjects=16, **DENOISED)),
])
def test_pooled_order_finds_the_planted_count(k, kw):
    c = planted_cohort(k, shape=SHAPE, amplitude=(1.2, 2.0), seed=3, **kw)
    est = estimate_pooled_order(c.loader, len(c.runs), c.mask, random_state=0)
    assert abs(est.n_components - k) <= 0.3 * k, est.n_components
    # the stricter edge rule never counts more than the rank-wise count
    assert est.n_edge <= est.n_components


def test_pooled_order_uses_what_one_run_cannot_see():
    """Networks too weak for one 110-volume denoised run stand out of 20 runs pooled."""
    c = planted_cohort(11, shape=SHAPE, amplitude=(0.8, 1.2), noise="ar1", fwhm=1.5,
                       n_subjects=20, seed=3, **DENOISED)
    per_run = estimate_group_order(c.loader, len(c.runs), c.mask).n_components
    pooled = estimate_pooled_order(c.loader, len(c.runs), c.mask, random_state=0).n_components
    assert per_run <= 8 < pooled <= 14, (per_run, pooled)


def test_groupica_auto_recovers_a_seven_network_cohort():
    c = planted_cohort(7, shape=SHAPE, amplitude=(1.5, 2.5), noise="ar1", ar=0.4,
                       n_subjects=12, n_volumes=80, seed=1)
    ica = GroupICA("auto", pca_dim=30, random_state=0, mask=c.mask).fit_arrays(
        c.loader, len(c.runs))
    assert ica.order_estimate_.method == "pooled"
    assert 5 <= ica.n_components_ <= 9
    assert recovery(ica.components_, c.maps).min() >= 0.8


def test_edge_count_on_a_known_spectrum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2000))
    x[:3] *= 3.0  # three spikes
    lam = np.linalg.eigvalsh(x @ x.T / 2000)[::-1]
    assert edge_count(lam)[0] == 3
    y = rng.normal(size=(200, 2000))
    assert edge_count(np.linalg.eigvalsh(y @ y.T / 2000))[0] <= 1


def test_order_warnings_name_the_problem():
    from dpnbids.analysis.group_order import order_warnings
    from dpnbids.analysis.model_order import GroupOrderEstimate

    e = np.zeros(0)
    capped = GroupOrderEstimate(17, 23.0, "pooled", 17, True, (), e, e, e, e, e)
    texts = order_warnings(17, estimate=capped, stability=[0.95, 0.4, np.nan], expected=25)
    assert len(texts) == 3
    assert "support 23 components but only 17 fit" in texts[0]
    assert "fewer than the 25 networks expected" in texts[1]
    assert "1 of 3 components are unstable" in texts[2] and "#1 (Iq 0.40)" in texts[2]
    fine = GroupOrderEstimate(11, 11.0, "pooled", 19, False, (), e, e, e, e, e)
    assert order_warnings(11, estimate=fine, stability=[0.9] * 11, expected=11) == []
    assert "requested" in order_warnings(8, expected=14)[0]
    # the report shows them above the model-order table
    from dpnbids.reports.group import _model_order

    html = _model_order({"NumberOfComponents": 17, "Warnings": texts})
    assert html.count("Warning: ") == 3


@pytest.mark.parametrize("k, kw", [(8, dict(noise="ar1", ar=0.4)),
                                   (0, dict(noise="pink", fwhm=2.0))])
def test_pooled_order_on_every_second_voxel(k, kw):
    """Large masks pool every second voxel along each axis (the runs are whitened on those
    only); the null is then drawn on the same subsampled grid."""
    from dpnbids.analysis.group_order import pool_stride

    c = planted_cohort(k, shape=(28, 34, 28), n_subjects=8, n_volumes=60, seed=2,
                       amplitude=(1.2, 2.0), **kw)
    assert pool_stride(c.mask, 400) == 2
    est = estimate_pooled_order(c.loader, len(c.runs), c.mask, max_rows=400, random_state=0)
    assert est.stride == 2 and est.n_voxels < c.mask.sum() / 7
    assert abs(est.n_components - k) <= max(1, 0.3 * k), est.n_components
