"""Group ICA: planted spatial sources recovered, MIGP ~ exact PCA, ICASSO, GICA1, errors."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.linalg import subspace_angles

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.analysis.decomposition import GroupICA
from dpnbids.analysis.ica import (fastica, flip_signs, gica1_backproject, icasso, migp,
                                  variance_normalise)


def planted(rng, *, n_subjects=7, n_sources=5, n_voxels=2311, t_range=(41, 63),
            support=280, shared_tc=False):
    """Sparse non-negative spatial sources; voxel noise keeps each voxel's variance ~1,
    so variance normalisation does not distort the planted maps."""
    maps = np.zeros((n_sources, n_voxels))
    for k in range(n_sources):
        idx = rng.choice(n_voxels, support, replace=False)
        maps[k, idx] = rng.uniform(0.3, 0.9, support)
    noise_sd = np.sqrt(np.clip(1 - (maps ** 2).sum(0), 0.05, None))
    subjects = []
    for _ in range(n_subjects):
        t = int(rng.integers(*t_range))
        tcs = rng.normal(size=(t, n_sources))
        subjects.append((tcs @ maps + noise_sd * rng.normal(size=(t, n_voxels)))
                        .astype(np.float32))
    return maps, subjects


def best_abs_r(estimated, truth):
    k = truth.shape[0]
    r = np.corrcoef(np.vstack([truth, estimated]))[:k, k:]
    return np.abs(r).max(axis=1)


def test_variance_normalise_constant_voxels_and_dtype(rng):
    x = rng.normal(3, 2, size=(17, 9)).astype(np.float32)
    x[:, 4] = 7.5
    out = variance_normalise(x)
    assert out.dtype == np.float32
    assert np.all(out[:, 4] == 0)
    keep = np.arange(9) != 4
    np.testing.assert_allclose(out[:, keep].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out[:, keep].std(0), 1, rtol=1e-5)
    np.testing.assert_allclose(variance_normalise(out), out, atol=1e-6)  # idempotent
    assert np.isfinite(out).all()


def test_groupica_recovers_planted_sources(rng):
    maps, subjects = planted(rng)
    ica = GroupICA(n_components=5, pca_dim=10, random_state=3).fit_arrays(lambda i: subjects[i],
                                                                    len(subjects))
    assert ica.components_.shape == (5, maps.shape[1])
    assert ica.n_components_ == 5
    assert np.all(best_abs_r(ica.components_, maps) > 0.9)
    # z-scored, peak positive (planted maps are positive, so r must be positive too)
    np.testing.assert_allclose(ica.components_.mean(1), 0, atol=1e-4)
    np.testing.assert_allclose(ica.components_.std(1), 1, rtol=1e-4)
    assert np.all(ica.components_.max(1) >= -ica.components_.min(1))
    r = np.corrcoef(np.vstack([maps, ica.components_]))[:5, 5:]
    assert np.all(r[np.arange(5), np.abs(r).argmax(1)] > 0.9)
    assert np.isnan(ica.stability_).all()
    assert ica.mixing_.shape == (10, 5) and ica.unmixing_.shape == (5, 10)
    # the 5 planted sources dominate the spectrum; the rest is noise
    ratio = ica.explained_variance_ratio_
    assert ratio[4] > 2 * ratio[5]
    assert 0 < ratio.sum() <= 1
    assert np.all(np.diff(ica.explained_variance_) <= 1e-9)


def test_groupica_with_migp_truncation_many_subjects(rng):
    # internal_dim far below the 600+ concatenated time points: MIGP truncates
    # after every subject and must still find the sources.
    maps, subjects = planted(rng, n_subjects=24, n_voxels=1777, t_range=(23, 31))
    ica = GroupICA(n_components=5, pca_dim=8, internal_dim=16, random_state=0)
    ica.fit_arrays(lambda i: subjects[i], len(subjects))
    assert ica.n_timepoints_ == sum(s.shape[0] for s in subjects)
    assert np.all(best_abs_r(ica.components_, maps) > 0.9)


def test_migp_subspace_matches_full_pca(rng):
    maps, subjects = planted(rng, n_subjects=12, n_voxels=1500, t_range=(30, 45))
    normed = [variance_normalise(s) for s in subjects]
    full = np.vstack(normed).astype(np.float64)
    _, sv, vt = np.linalg.svd(full, full_matrices=False)
    w = migp(lambda i: normed[i], len(normed), dim=10, internal_dim=20, random_state=5)
    assert w.shape == (20, 1500)
    angles = np.degrees(subspace_angles(w[:5].T.astype(np.float64), vt[:5].T))
    assert angles.max() < 5
    # rows are weighted eigenmaps: norms ~ singular values of the strong components
    np.testing.assert_allclose(np.linalg.norm(w[:5], axis=1), sv[:5], rtol=0.02)
    # exact when nothing is ever truncated
    w_exact = migp(lambda i: normed[i], len(normed), dim=10, internal_dim=full.shape[0],
                   random_state=5)
    angles = np.degrees(subspace_angles(w_exact[:10].T.astype(np.float64), vt[:10].T))
    assert angles.max() < 0.5


def test_migp_order_is_seeded(rng):
    _, subjects = planted(rng, n_subjects=5, n_voxels=400, t_range=(20, 25))
    seen = []

    def loader(i):
        seen.append(i)
        return subjects[i]

    migp(loader, 5, dim=4, random_state=11)
    first = list(seen)
    seen.clear()
    migp(loader, 5, dim=4, random_state=11)
    assert seen == first and sorted(first) == list(range(5))


def test_fewer_timepoints_error_names_subject(rng):
    _, subjects = planted(rng, n_subjects=4, n_voxels=300, t_range=(30, 35))
    subjects[2] = subjects[2][:6]
    ica = GroupICA(n_components=5, pca_dim=8, random_state=0)
    with pytest.raises(DimensionError, match=r"sub-C \(index 2\) has 6 time points.*`pca_dim`"):
        ica.fit_arrays(lambda i: subjects[i], 4, subject_ids=["sub-A", "sub-B", "sub-C", "sub-D"])
    with pytest.raises(DimensionError, match=r"subject index 2 has 6 time points"):
        migp(lambda i: subjects[i], 4, dim=8)


def test_voxel_mismatch_error_names_subjects(rng):
    _, subjects = planted(rng, n_subjects=3, n_voxels=300, t_range=(30, 35))
    subjects[1] = subjects[1][:, :250]
    with pytest.raises(DimensionError, match=r"sub-2 \(index 1\) has 250 in-mask voxels"):
        migp(lambda i: subjects[i], 3, dim=8, random_state=0,
             subject_ids=["sub-1", "sub-2", "sub-3"])


def test_pca_dim_below_n_components_is_input_error():
    with pytest.raises(InputError, match="`pca_dim` \\(4\\) must be at least `n_components`"):
        GroupICA(n_components=5, pca_dim=4).fit_arrays(lambda i: np.zeros((10, 10)), 1)


def test_icasso_stability_and_determinism(rng):
    maps, subjects = planted(rng, n_subjects=6, n_voxels=1900)
    x = np.vstack([variance_normalise(s) for s in subjects]).astype(np.float64)
    _, sv, vt = np.linalg.svd(x, full_matrices=False)
    reduced = sv[:8, None] * vt[:8]
    comps, stab = icasso(reduced, 5, n_repeats=6, random_state=2)
    assert comps.shape == (5, 1900) and stab.shape == (5,)
    assert np.all(best_abs_r(comps, maps) > 0.9)
    assert np.all(stab > 0.8)
    assert np.all(np.diff(stab) <= 0)  # sorted by stability
    comps2, stab2 = icasso(reduced, 5, n_repeats=6, random_state=2)
    np.testing.assert_array_equal(comps, comps2)
    np.testing.assert_array_equal(stab, stab2)
    # Gaussian data have no independent directions: runs disagree, stability drops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # FastICA may not converge on noise
        _, stab_noise = icasso(rng.normal(size=(8, 1900)), 5, n_repeats=6, random_state=2)
    assert stab_noise.max() < stab.min() - 0.1


def test_groupica_same_seed_identical(rng):
    _, subjects = planted(rng, n_subjects=4, n_voxels=800)

    def fit(seed):
        return GroupICA(n_components=4, pca_dim=6, n_repeats=3, random_state=seed).fit_arrays(
            lambda i: subjects[i], 4)

    a, b, c = fit(7), fit(7), fit(8)
    np.testing.assert_array_equal(a.components_, b.components_)
    np.testing.assert_array_equal(a.stability_, b.stability_)
    np.testing.assert_array_equal(a.subject_order_, b.subject_order_)
    assert not np.array_equal(a.subject_order_, c.subject_order_) or \
        not np.array_equal(a.components_, c.components_)


def test_flip_signs():
    comps = np.array([[0.1, -3.0, 1.0, 0.5], [0.2, 2.0, -1.0, 0.0], [-1.0, -1.0, 0.5, 0.2]])
    flipped, signs = flip_signs(comps)
    np.testing.assert_array_equal(signs, [-1, 1, -1])
    np.testing.assert_array_equal(flipped, comps * signs[:, None])
    assert np.all(flipped.max(1) >= -flipped.min(1))


def test_fastica_mixing_reconstructs(rng):
    s = rng.laplace(size=(3, 2003))
    x = rng.normal(size=(3, 3)) @ s
    comps, mixing = fastica(x, 3, random_state=0)
    np.testing.assert_allclose(mixing @ comps, x - x.mean(1, keepdims=True), atol=1e-8)
    assert np.all(best_abs_r(comps, s) > 0.99)
    with pytest.raises(InputError, match="n_components <= 3"):
        fastica(x, 4, random_state=0)


def test_gica1_subject_maps_sum_to_group_and_reconstruct(rng):
    maps, subjects = planted(rng, n_subjects=5, n_voxels=1200, t_range=(45, 55))
    total = sum(s.shape[0] for s in subjects)
    ica = GroupICA(n_components=5, pca_dim=8, internal_dim=total, random_state=1, max_iter=2000)
    ica.fit_arrays(lambda i: subjects[i], len(subjects))
    outs = [ica.backproject_gica1(s) for s in subjects]
    summed = np.sum([m for m, _ in outs], axis=0)
    np.testing.assert_allclose(summed, ica.components_, atol=2e-3)
    for (m, tc), s in zip(outs, subjects):
        assert m.shape == (5, 1200) and tc.shape == (s.shape[0], 5)
        assert np.all(best_abs_r(m, maps) > 0.5)
    # noise-free subject: A_i S_i reproduces the subject's signal subspace part
    p = ica.pca_components_.astype(np.float64)
    y = variance_normalise(subjects[0].astype(np.float64))
    m, tc = gica1_backproject(y, p, ica.singular_values_, ica.unmixing_, ica.mixing_)
    recon = tc @ m
    assert np.corrcoef(recon.ravel(), (y @ p.T @ p).ravel())[0, 1] > 0.8
    # subject-level PCA with all time points is the identity
    m_full, tc_full = ica.backproject_gica1(subjects[0], subject_pca_dim=subjects[0].shape[0])
    np.testing.assert_allclose(m_full, outs[0][0], atol=1e-3)
    with pytest.raises(DimensionError, match="subject-level PCA dimension"):
        ica.backproject_gica1(subjects[0], subject_pca_dim=1000)
    with pytest.raises(DimensionError, match="voxels"):
        ica.backproject_gica1(subjects[0][:, :100])


def test_planted_seitzman_networks_recovered_and_labelled():
    """Template-space data with four planted Seitzman networks (6 mm grid): each is
    recovered with |r| >= 0.9 and match_networks gives its component the right name."""
    from dpnbids.analysis.networks import match_networks, network_templates
    from dpnbids.templates import load_template

    mask_img = load_template("MNI152NLin2009aSym", 6, "mask")
    mask = np.asarray(mask_img.dataobj) > 0.5
    planted_names = ["default_mode", "visual", "sensorimotor", "fronto_parietal"]
    tpl, names = network_templates(mask_img, networks=planted_names, mask=mask)
    assert names == planted_names
    maps = 0.9 * np.moveaxis(np.asarray(tpl.dataobj), -1, 0)[:, mask]
    noise_sd = np.sqrt(np.clip(1 - (maps ** 2).sum(0), 0.1, None))
    rng = np.random.default_rng(0)
    subjects = [(rng.standard_normal((t, 4)) @ maps
                 + noise_sd * rng.standard_normal((t, maps.shape[1]))).astype(np.float32)
                for t in (77, 80, 83, 79, 81, 78)]
    ica = GroupICA(n_components=6, pca_dim=10, random_state=0)
    ica.fit_arrays(lambda i: subjects[i], len(subjects))
    r = np.corrcoef(np.vstack([maps, ica.components_]))[:4, 4:]
    best = np.abs(r).argmax(axis=1)
    assert np.all(np.abs(r).max(axis=1) >= 0.9)
    assert len(set(best.tolist())) == 4
    all_tpl, all_names = network_templates(mask_img, mask=mask)
    table = match_networks(ica.components_,
                           np.moveaxis(np.asarray(all_tpl.dataobj), -1, 0)[:, mask], all_names)
    assert table.loc[best, "network"].tolist() == planted_names
    assert table.loc[best, "matched"].all()


def test_negentropy_zero_for_gaussian_positive_otherwise(rng):
    from dpnbids.analysis.ica import negentropy

    gauss = rng.normal(size=(2, 200_000))
    assert np.all(negentropy(gauss) < 2e-5)
    others = np.vstack([rng.laplace(size=200_000), rng.exponential(size=200_000),
                        rng.uniform(size=200_000)])
    assert np.all(negentropy(others) > 10 * negentropy(gauss).max())
    np.testing.assert_allclose(negentropy(3 * others + 5), negentropy(others))  # scale-free


@pytest.mark.parametrize("kind", ["laplace", "exponential"])
def test_fastica_auto_keeps_the_more_non_gaussian_solution(rng, kind):
    """'auto' runs skew; on symmetric (Laplace) sources, where skew has nothing to grip,
    it runs cube from the same seed too and keeps the larger total negentropy (cube); on
    one-sided sources skew separates them and cube is not run."""
    from dpnbids.analysis.ica import negentropy

    s = getattr(rng, kind)(size=(4, 5001))
    x = rng.normal(size=(6, 4)) @ s
    runs = {fun: fastica(x, 4, random_state=0, fun=fun, max_iter=1000)
            for fun in ("auto", "skew", "cube")}
    scores = {fun: negentropy(c).sum() for fun, (c, _) in runs.items()}
    best = max(("skew", "cube"), key=scores.get) if kind == "laplace" else "skew"
    np.testing.assert_array_equal(runs["auto"][0], runs[best][0])
    assert np.all(best_abs_r(runs["auto"][0], s) > 0.98)
    if kind == "laplace":
        assert best == "cube" and scores["skew"] < scores["cube"]
    with pytest.raises(InputError, match="fun must be one of"):
        fastica(x, 4, fun="tanh")
