"""Leakage-free nested CV: splits, leakage checks, in-fold selection, learning, determinism."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dpnbids.config import derive_seed
from dataclasses import replace

from dpnbids.learn.cv import permutation_test, run_nested_cv
from dpnbids.learn.params import ModelParams, TrainParams
from dpnbids.learn.splits import Fold, check_no_leakage, make_outer_splits, splits_to_dataframe
from dpnbids.learn.train import fit_final_model
from dpnbids.exceptions import DataLeakageError, InputError

GRID = (14, 16, 13)
FAST = TrainParams(epochs=10, batch_size=4, patience=10)


def _ids(n):
    return [f"{i:02d}" for i in range(1, n + 1)]


def _planted(rng, n=20, channels=2, amplitude=3.0):
    """Responders carry a blob in channel 0; everything else is noise."""
    y = np.array([1, 0] * (n // 2))
    x = rng.normal(size=(n,) + GRID + (channels,)).astype(np.float32)
    x[y == 1, 4:10, 5:11, 4:9, 0] += amplitude
    return x, y


def test_splits_are_stratified_disjoint_and_seeded():
    ids, y = _ids(23), np.array([1] * 11 + [0] * 12)
    folds = make_outer_splits(ids, y, n_folds=5, n_repeats=2, random_state=7)
    assert len(folds) == 10
    for r in range(2):
        tests = [s for f in folds if f.repeat == r for s in f.test_ids]
        assert sorted(tests) == ids  # every subject tested exactly once per repeat
    lab = dict(zip(ids, y))
    for f in folds:
        check_no_leakage(f)
        assert set(f.train_ids) | set(f.val_ids) | set(f.test_ids) == set(ids)
        n_pos = sum(lab[s] for s in f.test_ids)
        assert n_pos in (2, 3) and len(f.test_ids) - n_pos in (2, 3)
        assert {lab[s] for s in f.val_ids} == {0, 1}
    assert [f.test_ids for f in folds[:5]] != [f.test_ids for f in folds[5:]]
    again = make_outer_splits(ids, y, n_folds=5, n_repeats=2, random_state=7)
    assert again == folds
    assert make_outer_splits(ids, y, n_folds=5, random_state=8) != folds[:5]
    df = splits_to_dataframe(folds)
    assert len(df) == 10 * 23 and set(df.role) == {"train", "validation", "test"}
    children = [derive_seed(3, i, bits=32) for i in range(50)]
    assert len(set(children)) == 50 and children[:4] == [derive_seed(3, i, bits=32) for i in range(4)]


def test_too_few_per_class_suggests_folds():
    y = np.array([1] * 6 + [0] * 14)
    with pytest.raises(InputError, match=r"6 responders and 14 non-responders.*`folds` 6"):
        make_outer_splits(_ids(20), y, n_folds=10, random_state=0)


def test_single_class_and_mismatched_labels():
    with pytest.raises(InputError, match="only one class.*0 responders, 12 non-responders"):
        make_outer_splits(_ids(12), np.zeros(12), n_folds=3, random_state=0)
    with pytest.raises(InputError, match="12 subject IDs but 11 labels"):
        make_outer_splits(_ids(12), np.zeros(11), n_folds=3, random_state=0)
    with pytest.raises(DataLeakageError, match="duplicated"):
        make_outer_splits(["01", "01", "02", "03"], [0, 1, 0, 1], n_folds=2, random_state=0)


@pytest.mark.parametrize("fold,msg", [
    (Fold(0, 1, ("a", "b"), ("c",), ("b", "d"), 1), r"\['b'\].*train and test"),
    (Fold(0, 1, ("a", "b"), ("a",), ("d",), 1), r"\['a'\].*train and validation"),
    (Fold(0, 1, ("a",), ("c",), ("c", "d"), 1), r"\['c'\].*validation and test"),
    (Fold(0, 1, ("a", "a"), ("c",), ("d",), 1), "more than once in the train"),
])
def test_leakage_raises(fold, msg):
    with pytest.raises(DataLeakageError, match=msg):
        check_no_leakage(fold)


def test_run_nested_cv_refuses_a_leaky_fold(rng):
    x, y = _planted(rng, n=8)
    ids = _ids(8)
    leaky = Fold(0, 0, tuple(ids[:5]), (ids[5],), (ids[4], ids[6], ids[7]), 1)
    with pytest.raises(DataLeakageError):
        run_nested_cv(x, y, ids, [leaky], train_params=FAST, baselines=())


@pytest.mark.slow
def test_planted_blob_is_learned_and_test_fold_never_seen(rng):
    x, y = _planted(rng)
    ids = _ids(len(y))
    folds = make_outer_splits(ids, y, n_folds=4, random_state=11)
    seen = []

    def spy(train_idx):
        seen.append(np.asarray(train_idx).copy())
        return [0, 1]

    res = run_nested_cv(x, y, ids, folds, input_set="SSC", select_fn=spy, train_params=FAST,
                        random_state=11)
    index = {s: i for i, s in enumerate(ids)}
    assert len(seen) == len(folds)
    for f, got in zip(folds, seen):
        assert set(got.tolist()) == {index[s] for s in f.train_ids + f.val_ids}
        assert not set(got.tolist()) & {index[s] for s in f.test_ids}
    pred = res.predictions
    assert set(pred.model) == {"cnn", "svm", "logreg", "majority"}
    assert list(pred.columns) == ["participant_id", "repeat", "fold", "input_set", "model",
                                  "true_label", "raw_score", "probability", "threshold",
                                  "predicted_label"]
    assert ((pred.probability >= pred.threshold) == pred.predicted_label.astype(bool)).all()
    for model in ("cnn", "svm", "logreg"):
        p = pred[pred.model == model].sort_values("participant_id")
        assert len(p) == len(ids)
        assert roc_auc_score(p.true_label, p.probability) > 0.9, model
    maj = pred[pred.model == "majority"]
    assert maj.groupby("fold").probability.nunique().max() == 1
    m = res.manifests[0]
    assert m["selected_components"] == [0, 1] and m["test_ids"] == list(folds[0].test_ids)
    assert set(res.histories) == {(0, k) for k in range(4)}
    assert all(len(h["val_loss"]) == len(h["loss"]) >= 1 for h in res.histories.values())
    assert len(res.timings["seconds_per_fold"]) == 4


def _cnn_probs(x, y, seed):
    ids = _ids(len(y))
    folds = make_outer_splits(ids, y, n_folds=2, random_state=seed)
    res = run_nested_cv(x, y, ids, folds, train_params=TrainParams(epochs=2, batch_size=8),
                        baselines=(), random_state=seed)
    return res.predictions.sort_values("participant_id").probability.to_numpy()


@pytest.mark.slow
def test_same_seed_same_predictions(rng):
    x, y = _planted(rng, n=12)
    a, b = _cnn_probs(x, y, 5), _cnn_probs(x, y, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _cnn_probs(x, y, 6))


@pytest.mark.slow  # about 15 s of CPU, 54 s on shared cores (2026-12-07)
def test_tuning_picks_from_the_grid(rng):
    x, y = _planted(rng, n=12)
    ids = _ids(12)
    folds = make_outer_splits(ids, y, n_folds=2, random_state=2)[:1]
    grid = {"learning_rate": (1e-3, 1e-2), "epochs": (2,)}
    res = run_nested_cv(x, y, ids, folds, train_params=TrainParams(batch_size=8), tune=True,
                        tune_grid=grid, baselines=(), random_state=2)
    chosen = res.manifests[0]["tuned_hyperparameters"]
    assert chosen["learning_rate"] in (1e-3, 1e-2) and chosen["epochs"] == 2


def test_permutation_test(rng):
    y = np.array([1, 0] * 15)
    signal = y + rng.normal(scale=0.3, size=y.size)
    noise = rng.normal(size=y.size)
    obs, null, p = permutation_test(lambda lab: roc_auc_score(lab, signal), y,
                                    n_permutations=99, random_state=0)
    assert obs > 0.9 and null.shape == (99,) and p == pytest.approx(0.01)
    _, _, p_null = permutation_test(lambda lab: roc_auc_score(lab, noise), y,
                                    n_permutations=99, random_state=0)
    assert p_null > 0.05
    again = permutation_test(lambda lab: roc_auc_score(lab, noise), y, n_permutations=99,
                             random_state=0)
    assert again[2] == p_null


def test_fit_final_model(rng):
    x, y = _planted(rng, n=16, channels=3)
    model, scaling, channels, history, calibration = fit_final_model(
        x, y, channels=[0, 2], train_params=TrainParams(epochs=2, batch_size=8), random_state=1)
    assert model.input_shape == (None,) + GRID + (2,)
    assert channels == [0, 2] and len(scaling.mean) == 2
    assert scaling.support.shape == GRID and len(history["val_loss"]) == 2
    assert calibration["method"] == "platt" and calibration["slope"] > 0
    assert 0 < calibration["threshold"] < 1 and calibration["threshold_rule"] == "youden"


@pytest.mark.slow  # bfloat16 is emulated on CPUs without AVX-512 BF16/AMX: over 7 min on the AMD EPYC
def test_mixed_precision_bfloat16_on_cpu_learns_and_resets_the_policy(rng):
    import keras

    from dpnbids.learn.train import mixed_precision_policy

    assert mixed_precision_policy() == "mixed_bfloat16"  # the test machines have no GPU
    x, y = _planted(rng)
    ids = _ids(len(y))
    folds = make_outer_splits(ids, y, n_folds=4, random_state=3)
    res = run_nested_cv(x, y, ids, folds, train_params=replace(FAST, mixed_precision=True),
                        baselines=(), random_state=3)
    assert keras.mixed_precision.global_policy().name == "float32"
    p = res.predictions.sort_values("participant_id")
    assert p.probability.between(0, 1).all()
    assert roc_auc_score(p.true_label, p.probability) > 0.9
    model, *_ = fit_final_model(x, y, channels=[0], random_state=1,
                                train_params=TrainParams(epochs=2, batch_size=8,
                                                         mixed_precision=True))
    assert model.layers[1].compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"  # the sigmoid output stays float32


def test_augmentation_shifts_without_wrapping_or_mirroring():
    from dpnbids.learn.train import augment_batch

    x = np.zeros((1, 6, 6, 6, 2), np.float32)
    x[0, 0, 2, 3, :] = 1.0  # on the low X edge
    x[0, 4, 1, 1, :] = 2.0
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = augment_batch(x, rng, max_shift=1, jitter=0.0)
        assert out.shape == x.shape
        # a shift moves a voxel by at most 1 voxel per axis and never to the far side
        pos = np.argwhere(out[0, ..., 0] == 2.0)
        assert len(pos) == 1 and np.all(np.abs(pos[0] - [4, 1, 1]) <= 1)
        assert not np.any(out[0, 5, :, :, 0] == 1.0)  # nothing wrapped around X
        assert set(np.unique(out).tolist()) <= {0.0, 1.0, 2.0}
    jittered = augment_batch(np.ones((3, 4, 4, 4, 5), np.float32), rng, max_shift=0,
                             jitter=0.1)
    scale = jittered[:, 1, 1, 1, :]
    assert np.allclose(jittered, scale[:, None, None, None, :])  # one factor per channel
    assert 0.02 < scale.std() < 0.3


def test_balanced_weights_equalise_the_classes():
    from dpnbids.learn.train import balanced_weights

    y = np.array([1] * 29 + [0] * 14)
    w = balanced_weights(y)
    assert np.isclose(w[y == 1].sum(), w[y == 0].sum())
    assert np.isclose(w.mean(), 1.0)


@pytest.mark.slow  # about 80 s of CPU each (3 folds of a 24-subject CV), measured 2026-12-07
@pytest.mark.parametrize("train", [{"monitor": "val_auc"}, {"augment": True, "balanced": True}])
def test_training_options_still_learn_the_planted_blob(rng, train):
    x, y = _planted(rng, n=24, amplitude=3.0)
    ids = _ids(24)
    folds = make_outer_splits(ids, y, n_folds=3, random_state=0)
    res = run_nested_cv(x, y, ids, folds, baselines=(), random_state=0,
                        model_params=ModelParams(epsilon=1e-3),
                        train_params=replace(FAST, min_epochs=0, **train))
    pred = res.predictions
    assert roc_auc_score(pred["true_label"], pred["probability"]) > 0.8


@pytest.mark.slow  # about 16 s of CPU, 62 s on shared cores (2026-12-07)
def test_on_fold_hook_sees_each_fold_model_and_its_held_out_subjects(rng):
    x, y = _planted(rng, n=12)
    ids = _ids(12)
    folds = make_outer_splits(ids, y, n_folds=3, random_state=2)
    seen = []
    res = run_nested_cv(x, y, ids, folds, train_params=TrainParams(epochs=1, batch_size=8),
                        baselines=(), random_state=2, on_fold=seen.append)
    assert [f.fold.fold for f in seen] == [0, 1, 2]
    for fm, fold in zip(seen, folds):
        assert fm.test_ids == fold.test_ids and fm.x_test.shape[0] == len(fold.test_ids)
        assert fm.x_train.shape[0] == len(fold.train_ids) + len(fold.val_ids)
        assert not set(fm.test_ids) & set(fold.outer_train_ids)
        # the hook's model is the fold's model: it reproduces the fold's test predictions
        got = np.asarray(fm.model.predict(fm.x_test, verbose=0)).ravel()
        want = (res.predictions.query("fold == @fold.fold and model == 'cnn'")
                .sort_values("participant_id").raw_score.to_numpy())
        np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.slow
def test_inner_fold_ensemble_calibrates_on_every_outer_training_subject(rng):
    """--inner-folds K: K networks per outer fold, each early-stopped on its own inner fold;
    calibration sees every outer-training subject (out-of-inner-fold logits) and no test
    subject; the hook's model is the ensemble that made the test predictions; the final
    model is the same kind of ensemble."""
    x, y = _planted(rng, n=24)
    ids = _ids(24)
    folds = make_outer_splits(ids, y, n_folds=3, random_state=5)
    seen = []
    train = replace(FAST, epochs=6, inner_folds=3)
    res = run_nested_cv(x, y, ids, folds, train_params=train, baselines=(), random_state=5,
                        on_fold=seen.append)
    for m, fold, fm in zip(res.manifests, folds, seen):
        cal = m["calibration"]["cnn"]
        assert set(cal["fitted_on"]) == set(fold.outer_train_ids)
        assert m["inner_folds"] == 3 and len(m["epochs_trained_per_member"]) == 3
        assert {(fold.repeat, fold.fold, k) for k in range(3)} <= set(res.histories)
        got = np.asarray(fm.model.predict(fm.x_test, verbose=0)).ravel()
        want = (res.predictions.query("fold == @fold.fold")
                .sort_values("participant_id").raw_score.to_numpy())
        np.testing.assert_allclose(got, want, rtol=1e-5)
    pred = res.predictions
    assert roc_auc_score(pred["true_label"], pred["probability"]) > 0.8
    again = run_nested_cv(x, y, ids, folds, train_params=train, baselines=(), random_state=5)
    np.testing.assert_array_equal(again.predictions["probability"], pred["probability"])
    final = fit_final_model(x, y, train_params=train, random_state=5)
    assert "all 24 subjects (3 inner folds)" in final.calibration["fitted_on"]
    assert len(final.history["members"]) == 3


def _imbalanced(rng, n_pos=20, n_neg=10, amplitude=1.5):
    y = np.array([1] * n_pos + [0] * n_neg)
    x = rng.normal(size=(y.size,) + GRID + (2,)).astype(np.float32)
    x[y == 1, 4:10, 5:11, 4:9, 0] += amplitude
    return x, y


@pytest.mark.slow
def test_calibrated_decisions_on_a_planted_imbalanced_cohort(rng):
    """2:1 like the paper's cohort: every model's in-fold threshold gives sensitivity and
    specificity above 0.5, and calibration never saw an outer test subject."""
    from dpnbids.learn.metrics import summarise_folds

    x, y = _imbalanced(rng)
    ids = _ids(y.size)
    folds = make_outer_splits(ids, y, n_folds=5, random_state=4)
    res = run_nested_cv(x, y, ids, folds, train_params=FAST, random_state=4)
    summary = summarise_folds(res.predictions).set_index("model")
    for model in ("cnn", "svm", "logreg"):
        assert summary.loc[model, "sensitivity"] > 0.5, model
        assert summary.loc[model, "specificity"] > 0.5, model
    assert summary.loc["majority", "auc"] == 0.5 and summary.loc["majority", "constant_score"]
    for m, fold in zip(res.manifests, folds):
        for model, cal in m["calibration"].items():
            assert not set(cal["fitted_on"]) & set(fold.test_ids), model
            assert cal["threshold_rule"] == "youden" and cal["slope"] > 0
        assert set(m["calibration"]["cnn"]["fitted_on"]) == set(fold.val_ids)
        assert set(m["calibration"]["svm"]["fitted_on"]) == set(fold.outer_train_ids)


def test_calibration_on_a_test_subject_is_refused():
    from dpnbids.learn.cv import _calibrate
    from dpnbids.learn.splits import check_calibration_leakage

    fold = Fold(0, 0, ("01", "02"), ("03",), ("04", "05"), 1)
    check_calibration_leakage(fold, ["01", "02", "03"])
    with pytest.raises(DataLeakageError, match="calibration or threshold.*'05'"):
        _calibrate(np.zeros(3), np.array([0, 1, 1]), "youden", fold, ["01", "03", "05"])


def test_null_cohort_balanced_accuracy_interval_contains_chance(rng):
    """Linear baselines on pure noise (2:1): the bootstrap CI of balanced accuracy at the
    in-fold thresholds contains 0.5."""
    from dpnbids.learn.metrics import bootstrap_ci, pooled_predictions

    x, y = _imbalanced(rng, n_pos=26, n_neg=13, amplitude=0.0)
    ids = _ids(y.size)
    folds = make_outer_splits(ids, y, n_folds=5, random_state=8)
    from dpnbids.learn import cv

    rows = []
    gram = cv.GramCache(x)
    index = {s: i for i, s in enumerate(ids)}
    for fold in folds:
        outer = np.array([index[s] for s in fold.outer_train_ids])
        te = np.array([index[s] for s in fold.test_ids])
        for name in ("svm", "logreg"):
            cal, dv = cv._baseline_fold(gram, name, fold, outer, te, y, ids, np.arange(2),
                                        "youden")
            rows += cv._prediction_rows(fold, "ASC", name, [ids[i] for i in te], y[te], dv,
                                        cal, dv)
    import pandas as pd

    pred = pd.DataFrame(rows)
    for name, g in pred.groupby("model"):
        pooled = pooled_predictions(g)
        lo, hi = bootstrap_ci(pooled.true_label, pooled.probability, metric="balanced_accuracy",
                              pred=pooled.predicted_label, n_boot=500, random_state=1)
        assert lo <= 0.5 <= hi, (name, lo, hi)
