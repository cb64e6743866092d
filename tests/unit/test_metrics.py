"""Metrics against scikit-learn, single-class folds, bootstrap CIs, Table 2 layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from dpnbids.learn.metrics import binary_metrics, bootstrap_ci, summarise_folds, table2


def _toy(rng, n=37):
    y = rng.integers(0, 2, n)
    prob = np.clip(0.5 * y + rng.uniform(0, 0.6, n), 0, 1)
    return y, prob


def test_binary_metrics_match_sklearn(rng):
    y, prob = _toy(rng)
    pred = (prob >= 0.5).astype(int)
    m = binary_metrics(y, prob)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["tp"] + m["tn"] + m["fp"] + m["fn"] == m["n"] == y.size


def test_single_class_fold_has_nan_auc():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert np.isnan(m["auc"]) and np.isnan(m["specificity"])
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="3 values"):
        binary_metrics([0, 1, 1], [0.1, 0.2])


def test_bootstrap_ci_contains_estimate_and_is_seeded(rng):
    y, prob = _toy(rng, 43)
    auc = skm.roc_auc_score(y, prob)
    lo, hi = bootstrap_ci(y, prob, n_boot=300, random_state=3)
    assert lo <= auc <= hi and hi - lo > 0
    assert (lo, hi) == bootstrap_ci(y, prob, n_boot=300, random_state=3)
    assert (lo, hi) != bootstrap_ci(y, prob, n_boot=300, random_state=4)
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci(y, prob, metric="kappa")


def _predictions(rng):
    rows = []
    y, prob = _toy(rng, 40)
    for model, p in (("cnn", prob), ("svm", rng.uniform(size=40))):
        for i in range(40):
            rows.append({"participant_id": f"sub-{i:02d}", "repeat": 0, "fold": i % 4,
                         "input_set": "ASC", "model": model, "true_label": int(y[i]),
                         "probability": float(p[i])})
    return pd.DataFrame(rows), y, prob


def test_summarise_folds_mean_sd_and_pooled(rng):
    df, y, prob = _predictions(rng)
    summary = summarise_folds(df)
    row = summary[(summary.model == "cnn")].iloc[0]
    assert row["auc"] == pytest.approx(skm.roc_auc_score(y, prob))
    folds = [skm.roc_auc_score(y[np.arange(40) % 4 == k], prob[np.arange(40) % 4 == k])
             for k in range(4)]
    assert row["auc_mean"] == pytest.approx(np.mean(folds))
    assert row["auc_sd"] == pytest.approx(np.std(folds, ddof=1))
    assert row["n_folds"] == 4 and row["n_subjects"] == 40


def test_table2_layout(rng):
    df, y, prob = _predictions(rng)
    summary = summarise_folds(df)
    ci = pd.DataFrame([{"input_set": "ASC", "model": "cnn", "metric": "auc",
                        "ci_low": 0.5, "ci_high": 0.95}])
    perm = pd.DataFrame([{"input_set": "ASC", "model": "cnn", "p_value": 0.012}])
    table = table2(summary, ci, perm)
    assert list(table.columns) == ["ASC", "ASC svm"]
    assert {"accuracy", "auc", "specificity", "permutation_p_auc"} <= set(table.index)
    assert table.loc["auc", "ASC"] == f"{skm.roc_auc_score(y, prob):.2f} [0.50, 0.95]"
    assert table.loc["permutation_p_auc", "ASC"] == "0.012"
    assert table.loc["permutation_p_auc", "ASC svm"] == "n/a"


def test_constant_score_baseline_has_auc_one_half_not_a_fold_prior_artefact():
    """Fold-wise priors pooled over folds must not be read as a ranking (0.40 on 29/14)."""
    rows, y = [], np.array([1] * 29 + [0] * 14)
    folds = np.arange(43) % 10
    for f in range(10):
        test = folds == f
        train_prior = (y[~test] == 1).mean()
        rows += [{"input_set": "ASC", "model": "majority", "repeat": 0, "fold": f,
                  "participant_id": f"sub-{i:02d}", "true_label": int(y[i]),
                  "probability": train_prior, "predicted_label": 1}
                 for i in np.flatnonzero(test)]
    df = pd.DataFrame(rows)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(df.true_label, df.probability) != 0.5  # the artefact exists
    row = summarise_folds(df).iloc[0]
    assert row["constant_score"] and row["auc"] == 0.5
    assert row["sensitivity"] == 1.0 and row["specificity"] == 0.0
    assert row["brier"] == pytest.approx(np.mean((df.probability - df.true_label) ** 2))


def test_metrics_at_given_labels_include_npv_brier_and_log_loss():
    y = np.array([1, 1, 0, 0, 1])
    p = np.array([0.9, 0.4, 0.3, 0.6, 0.8])
    m = binary_metrics(y, p, pred=[1, 1, 0, 0, 0])  # labels from an in-fold threshold
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 1, 2, 0)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == 1.0
    assert m["ppv"] == 1.0 and m["npv"] == pytest.approx(2 / 3)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
