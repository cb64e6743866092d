"""Component statistics: planted group difference found, null calibrated, subsets honoured."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.analysis.stats import compare_groups, component_summary, select_components


def test_component_summary_is_mean_within_positive_lobe(rng):
    group = rng.normal(size=(3, 401))
    group[1, :] = np.minimum(group[1], 1.0)  # component 1 never exceeds z = 2
    maps = rng.normal(size=(5, 3, 401))
    with pytest.warns(RuntimeWarning, match="component 1 has no voxel above z = 2.0"):
        out = component_summary(maps, group, threshold_z=2.0)
    assert out.shape == (5, 3)
    for k in (0, 2):
        region = group[k] > 2.0
        assert region.sum() > 3
        np.testing.assert_allclose(out[:, k], maps[:, k, region].mean(axis=1))
    top = group[1] >= np.quantile(group[1], 0.99)
    np.testing.assert_allclose(out[:, 1], maps[:, 1, top].mean(axis=1))
    # negative lobe ignored: changing values where the group map is < -2 changes nothing
    neg = group[0] < -2.0
    maps2 = maps.copy()
    maps2[:, 0, neg] += 100
    with pytest.warns(RuntimeWarning):
        np.testing.assert_allclose(component_summary(maps2, group), out)
    with pytest.warns(RuntimeWarning):
        single = component_summary(maps[2], group)
    np.testing.assert_allclose(single, out[2])
    with pytest.raises(DimensionError, match="received maps \\(5, 3, 400\\)"):
        component_summary(maps[..., :400], group)


def test_planted_group_difference_found(rng):
    n = 31
    labels = np.array([1] * 14 + [0] * 17)
    rng.shuffle(labels)
    summaries = rng.normal(size=(n, 6))
    summaries[:, 2] += 1.5 * labels  # responders higher on component 2
    summaries[:, 4] -= 1.5 * labels  # and lower on component 4
    table = compare_groups(summaries, labels)
    assert list(table.columns[:6]) == ["component", "t", "p", "r", "mean_responders",
                                       "mean_nonresponders"]
    assert table.loc[2, "p"] < 1e-3 and table.loc[2, "t"] > 0 and table.loc[2, "r"] > 0.4
    assert table.loc[4, "p"] < 1e-3 and table.loc[4, "t"] < 0 and table.loc[4, "r"] < -0.4
    # Student t and point-biserial r agree with scipy
    t, p = sps.ttest_ind(summaries[labels == 1], summaries[labels == 0])
    np.testing.assert_allclose(table["t"], t)
    np.testing.assert_allclose(table["p"], p)
    r = [sps.pearsonr(labels, summaries[:, k])[0] for k in range(6)]
    np.testing.assert_allclose(table["r"], r, atol=1e-12)
    welch = compare_groups(summaries, labels, equal_var=False)
    tw, pw = sps.ttest_ind(summaries[labels == 1], summaries[labels == 0], equal_var=False)
    np.testing.assert_allclose(welch["p"], pw)
    sel = select_components(summaries, labels, p_threshold=0.01)
    assert set(sel.tolist()) >= {2, 4}


def test_null_p_values_are_uniform(rng):
    labels = np.array([1] * 20 + [0] * 23)
    p = compare_groups(rng.normal(size=(43, 2000)), labels)["p"].to_numpy()
    assert sps.kstest(p, "uniform").pvalue > 0.01
    assert 0.07 < np.mean(p < 0.1) < 0.13


def test_subset_ignores_excluded_subjects(rng):
    labels = np.array([1, 0] * 12)
    summaries = rng.normal(size=(24, 5))
    train = np.arange(0, 24, 3)
    train = np.union1d(train, [1, 4])  # both classes present
    base = compare_groups(summaries, labels, subjects_idx=train)
    changed = summaries.copy()
    test = np.setdiff1d(np.arange(24), train)
    changed[test] = rng.normal(50, 10, size=(test.size, 5))
    again = compare_groups(changed, labels, subjects_idx=train)
    np.testing.assert_array_equal(base[["t", "p", "r"]].to_numpy(),
                                  again[["t", "p", "r"]].to_numpy())
    assert int(base["n_responders"][0] + base["n_nonresponders"][0]) == train.size
    mask = np.isin(np.arange(24), train)
    np.testing.assert_array_equal(
        compare_groups(summaries, labels, subjects_idx=mask)["p"], base["p"])
    np.testing.assert_array_equal(
        select_components(summaries, labels, subjects_idx=train),
        select_components(changed, labels, subjects_idx=train))
    # and it differs from using everybody (the subset is really applied)
    assert not np.allclose(compare_groups(changed, labels)["p"], base["p"])


def test_select_fallback_and_errors(rng):
    labels = np.array([1] * 10 + [0] * 10)
    summaries = rng.normal(size=(20, 7))
    table = compare_groups(summaries, labels)
    sel = select_components(summaries, labels, p_threshold=1e-9, min_components=2)
    np.testing.assert_array_equal(sel, np.sort(np.argsort(table["p"].to_numpy())[:2]))
    with pytest.raises(InputError, match="0 responders and 10 non-responders"):
        compare_groups(summaries, labels, subjects_idx=np.arange(10, 20))
    with pytest.raises(InputError, match="labels must be 0"):
        compare_groups(summaries, np.array([2] * 20))
    with pytest.raises(DimensionError, match="one entry per subject \\(20\\)"):
        compare_groups(summaries, labels[:19])
    with pytest.raises(InputError, match="repeated"):
        compare_groups(summaries, labels, subjects_idx=[0, 0, 1, 11, 12])
