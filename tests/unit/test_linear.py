"""Linear baselines in kernel space: the same decision values as the explicit features,
and a permutation test that finds planted signal and nothing under the null."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from dpnbids.learn.scaling import ChannelScaler
from dpnbids.learn.splits import stratified_folds
from dpnbids.learn.linear import GramCache, decision_values, permutation_nulls, primal_weights

GRID = (9, 10, 8)


def _maps(rng, n=24, channels=4, amplitude=0.0, holes=False):
    mask = np.zeros(GRID, bool)
    mask[1:8, 2:9, 1:7] = True
    x = rng.normal(size=(n,) + GRID + (channels,)).astype(np.float32) + 0.3
    y = np.array([1, 1, 0] * (n // 3))
    x[y == 1, 2:5, 3:6, 2:5, 1] += amplitude
    x *= mask[None, ..., None]
    if holes:  # one subject's map is zero at some in-mask voxels: fold supports differ
        x[0, 1, 2:5, 1:3, :] = 0.0
    return x, y


@pytest.mark.parametrize("holes", [False, True])
def test_kernel_space_equals_the_explicit_features(rng, holes):
    x, y = _maps(rng, amplitude=0.7, holes=holes)
    gram = GramCache(x)
    assert gram.exact_support is (not holes)
    tr, te, ch = np.arange(3, 24), np.arange(3), [0, 1, 3]
    sc = ChannelScaler.fit(x[tr][..., ch])
    z_tr = sc.transform(x[tr][..., ch]).reshape(tr.size, -1)
    z_te = sc.transform(x[te][..., ch]).reshape(te.size, -1)
    svm = LinearSVC(C=1.0, max_iter=20000, random_state=0).fit(z_tr, y[tr])
    np.testing.assert_allclose(decision_values(gram, "svm", tr, te, y, ch),
                               svm.decision_function(z_te), rtol=1e-3, atol=1e-4)
    lr = LogisticRegression(C=1.0, max_iter=100000, tol=1e-12).fit(z_tr, y[tr])
    np.testing.assert_allclose(decision_values(gram, "logreg", tr, te, y, ch),
                               lr.decision_function(z_te), rtol=1e-3, atol=1e-3)
    prior = decision_values(gram, "majority", tr, te, y, ch)
    assert np.ptp(prior) == 0 and prior[0] == pytest.approx(np.log(14 / 7))
    # the primal weights (saliency's Haufe pattern uses them) give the same decisions
    for name, ref in (("svm", svm), ("logreg", lr)):
        w, b = primal_weights(name, z_tr, y[tr])
        assert w.shape == (z_tr.shape[1],)
        np.testing.assert_allclose(z_te @ w + b, decision_values(gram, name, tr, te, y, ch),
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w, ref.coef_.ravel(), rtol=2e-2, atol=2e-3)


def _nulls(x, y, n_perm, seed):
    return permutation_nulls(GramCache(x), y, n_permutations=n_perm, random_state=seed,
                             splits_fn=lambda yp: stratified_folds(yp, 4, 1),
                             select_fn_for=lambda yp: None)


def test_permutation_null_is_centred_near_chance_and_seeded(rng):
    x, y = _maps(rng, n=24)
    null = _nulls(x, y, 60, 3)
    for m in ("svm", "logreg"):
        assert null[m].shape == (60,)
        assert 0.35 < np.mean(null[m]) < 0.6
    again = _nulls(x, y, 60, 3)
    np.testing.assert_array_equal(null["svm"], again["svm"])


def test_fold_auc_matches_scikit_learn_with_ties(rng):
    from sklearn.metrics import roc_auc_score

    from dpnbids.learn.linear import fold_auc

    y = np.array([1, 0, 1, 1, 0, 0, 1])
    s = np.round(rng.normal(size=7), 1)
    s[1] = s[0]  # a tie across classes
    assert fold_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(fold_auc(np.ones(3, int), [0.1, 0.2, 0.3]))


def test_planted_signal_gives_a_small_permutation_p(rng):
    x, y = _maps(rng, n=24, amplitude=2.0)
    null = _nulls(x, y, 40, 5)
    from dpnbids.learn.linear import decision_values, fold_auc

    gram = GramCache(x)
    for m in ("svm", "logreg"):
        obs = np.mean([fold_auc(y[te], decision_values(gram, m, tr, te, y, np.arange(4)))
                       for tr, te in stratified_folds(y, 4, 1)])
        p = (1 + np.sum(null[m] >= obs)) / 41
        assert obs > 0.8 and p < 0.05, (m, obs, p)
