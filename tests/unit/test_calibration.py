"""Calibration and operating thresholds fitted inside the training folds."""
from __future__ import annotations

import numpy as np
import pytest

from dpnbids.exceptions import InputError
from dpnbids.learn.calibration import (MIN_SLOPE, Platt, choose_threshold, fit_platt, logit,
                                       net_benefit, parse_threshold_rule, reliability_curve)


def test_platt_recovers_a_known_sigmoid(rng):
    s = rng.normal(size=20000)
    y = (rng.random(s.size) < 1 / (1 + np.exp(-(1.7 * s - 0.4)))).astype(int)
    cal = fit_platt(s * 3.0 + 2.0, y)  # any affine score scale
    assert cal.slope * 3.0 == pytest.approx(1.7, rel=0.05)
    assert cal.intercept + cal.slope * 2.0 == pytest.approx(-0.4, abs=0.05)


def test_platt_never_flips_the_ranking_and_avoids_certainty():
    scores = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    y = np.array([1, 1, 1, 0, 0, 0])  # validation subjects ranked the wrong way round
    cal = fit_platt(scores, y)
    assert cal.slope >= MIN_SLOPE
    p = cal(scores)
    assert np.all(np.diff(p) >= 0)  # order kept
    assert np.ptp(p) < 0.01  # and nearly flat: no validated signal
    sep = fit_platt(scores, 1 - y)  # perfectly separated: smoothed targets, no 0/1
    assert 0.0 < sep(scores).min() and sep(scores).max() < 1.0


def test_platt_with_one_class_returns_the_smoothed_prior():
    cal = fit_platt([0.1, 0.5, 2.0], [1, 1, 1])
    assert cal([0.3])[0] == pytest.approx(4 / 5, abs=1e-3)


def test_platt_round_trips_through_a_dict():
    cal = Platt(0.8, -0.3)
    assert Platt.from_dict(cal.to_dict()) == cal


@pytest.mark.parametrize("rule, expected", [
    ("youden", ("youden", None)), ("Balanced", ("balanced", None)),
    ("fixed:0.3", ("fixed", 0.3)), ("sensitivity:0.9", ("sensitivity", 0.9))])
def test_threshold_rules_parse(rule, expected):
    assert parse_threshold_rule(rule) == expected


@pytest.mark.parametrize("rule", ["", "youdn", "fixed", "fixed:1.5", "sensitivity:0", "fixed:x"])
def test_bad_threshold_rules_are_refused_with_the_forms(rule):
    with pytest.raises(InputError, match="youden|fixed|sensitivity"):
        parse_threshold_rule(rule)


def test_youden_cuts_between_separated_classes():
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    t = choose_threshold(p, y, "youden")
    assert 0.3 < t <= 0.6
    assert choose_threshold(p, y, "fixed:0.25") == 0.25
    assert choose_threshold(p, np.ones(6, int), "youden") == 0.5  # one class: no trade-off


def test_sensitivity_rule_keeps_sensitivity_and_balanced_equalises():
    p = np.array([0.05, 0.2, 0.35, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8, 0.95])
    y = np.array([0, 0, 1, 0, 1, 0, 1, 1, 1, 1])
    t = choose_threshold(p, y, "sensitivity:0.9")
    sens = ((p >= t) & (y == 1)).sum() / (y == 1).sum()
    assert sens >= 0.9
    # the highest such threshold: the next cut up (between the next two scores) loses it
    u = np.unique(p)
    nxt = ((u[:-1] + u[1:]) / 2)[((u[:-1] + u[1:]) / 2) > t][0]
    assert ((p >= nxt) & (y == 1)).sum() / 6 < 0.9
    t = choose_threshold(p, y, "balanced")
    sens = ((p >= t) & (y == 1)).mean() / (y == 1).mean()
    spec = ((p < t) & (y == 0)).mean() / (y == 0).mean()
    assert abs(sens - spec) <= 0.2


def test_decision_curve_and_reliability():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    perfect = y.astype(float)
    nb = net_benefit(y, perfect, [0.1, 0.5, 0.8])
    assert nb["model"] == pytest.approx([3 / 8] * 3)  # no false positive: NB = prevalence
    odds = np.array([0.1, 0.5, 0.8]) / (1 - np.array([0.1, 0.5, 0.8]))
    assert nb["treat_all"] == pytest.approx(3 / 8 - 5 / 8 * odds)
    assert nb["treat_none"] == [0, 0, 0]
    rel = reliability_curve(y, np.linspace(0.1, 0.9, 8), n_bins=4)
    assert sum(rel["count"]) == 8 and len(rel["observed"]) == 4
    assert rel["mean_predicted"] == sorted(rel["mean_predicted"])


def test_logit_is_finite_at_the_edges():
    assert np.all(np.isfinite(logit([0.0, 1.0, 0.5])))


def test_calibrated_probabilities_stay_inside_a_margin_set_by_the_validation_size():
    """Smoothed targets bound the fit, not a far-away new score: 1e-14 and 1.0 were reported."""
    from dpnbids.learn.calibration import margin_for

    scores, y = np.array([-3.0, -1.0, 2.0]), np.array([0, 0, 1])
    cal = fit_platt(scores, y)
    far = cal(np.array([-1e6, -50.0, 0.0, 50.0, 1e6]))
    assert cal.margin == margin_for(3) == pytest.approx(0.2)
    assert far.min() >= 0.2 and far.max() <= 0.8
    assert np.all(np.diff(far[1:-1]) > 0)  # still strictly increasing: rankings kept
    again = Platt.from_dict(cal.to_dict())
    assert again == cal and again(np.array([1e6]))[0] < 1.0


def test_an_older_record_without_margin_still_never_reaches_0_or_1():
    cal = Platt.from_dict({"method": "platt", "slope": 5.0, "intercept": 0.0})
    p = cal(np.array([-1e6, 1e6]))
    assert 0.0 < p[0] < 0.01 and 0.99 < p[1] < 1.0


@pytest.mark.slow
def test_seven_subjects_three_folds_gives_no_certain_probability_and_a_report_note():
    """The reported case: 7 subjects, 3 outer folds, a cleanly separable CNN input."""
    from dpnbids.learn.calibration import calibration_note
    from dpnbids.learn.cv import run_nested_cv
    from dpnbids.learn.params import TrainParams
    from dpnbids.learn.splits import make_outer_splits
    from dpnbids.learn.metrics import binary_metrics

    rng = np.random.default_rng(7)
    y = np.array([1, 0, 1, 0, 1, 0, 1])
    x = rng.normal(size=(7, 12, 14, 11, 2)).astype(np.float32)
    x[y == 1, 3:9, 4:10, 3:8, 0] += 6.0
    ids = [f"{i:02d}" for i in range(1, 8)]
    folds = make_outer_splits(ids, y, n_folds=3, random_state=2)
    res = run_nested_cv(x, y, ids, folds, train_params=TrainParams(epochs=2, batch_size=4),
                        baselines=("svm",), random_state=2)
    pred = res.predictions
    for manifest in res.manifests:
        for model, cal in manifest["calibration"].items():
            fold_p = pred[(pred.fold == manifest["fold"]) & (pred.model == model)].probability
            m = 1.0 / (cal["n_fitted"] + 2)  # Laplace: n subjects, no more certainty
            assert fold_p.between(m, 1 - m).all(), (model, fold_p.tolist(), m)
    assert pred.probability.between(1e-3, 1 - 1e-3).all()
    # a new subject may score anywhere: the network's most confident outputs (a sigmoid of
    # 1e-6 or 1 - 1e-6, logits -13.8 / 13.8) must still map inside the margin
    for manifest in res.manifests:
        cal = manifest["calibration"]["cnn"]
        m = 1.0 / (cal["n_fitted"] + 2)  # Laplace: n subjects, no more certainty
        extreme = Platt.from_dict(cal)(logit(np.array([0.0, 1.0])))
        assert extreme.min() >= m and extreme.max() <= 1 - m, (cal, extreme)
    slopes = [m["calibration"]["cnn"]["slope"] for m in res.manifests]
    assert max(slopes) > 0.3  # the calibrators are not flat: the bound does the work
    cnn = pred[pred.model == "cnn"]
    worst = -np.log(min(1.0 / (c["calibration"]["cnn"]["n_fitted"] + 2)
                         for c in res.manifests))
    assert binary_metrics(cnn.true_label, cnn.probability)["log_loss"] <= worst
    note = calibration_note(res.manifests)
    assert note and "validation subjects" in note and "fewer than 10" in note


def test_no_calibration_note_when_every_fold_has_enough_subjects():
    from dpnbids.learn.calibration import calibration_note

    manifests = [{"calibration": {"cnn": {"n_fitted": 12}, "svm": {"n_fitted": 30}}}]
    assert calibration_note(manifests) is None
    assert calibration_note([]) is None
