"""Leakage-free nested cross-validation of the VoxNet and baselines on identical folds.

Outer loop: stratified K folds at subject level, repeated with derived seeds.
Inside each outer training fold only (never the outer test fold):

1. component selection (``select_fn(train_idx)``; SSC uses
   :func:`dpnbids.analysis.stats.select_components` on the training subjects);
2. feature scaling (per-channel z-score over the training subjects' brain voxels);
3. an inner stratified validation split that drives early stopping;
4. with ``tune=True``, a grid search over hyperparameters (:data:`TUNE_GRID`) judged on
   the inner validation subjects only.

Baselines (linear SVM, L2 logistic regression, majority class) see the same
selected, scaled features of the same folds. The folds come from
:func:`dpnbids.learn.splits.make_outer_splits`; :func:`~dpnbids.learn.splits.check_no_leakage`
raises :class:`~dpnbids.exceptions.DataLeakageError` on any overlap of training,
validation and test subjects; it is called for every fold before training.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import expit

from dpnbids.exceptions import InputError
from dpnbids.learn.calibration import fit_calibration
from dpnbids.learn.linear import BASELINES, GramCache, decision_values, inner_decision_values
from dpnbids.learn.model import predict_logit
from dpnbids.learn.params import ModelParams, TrainParams, checked, with_overrides
from dpnbids.learn.scaling import ChannelScaler
from dpnbids.learn.splits import Fold, check_calibration_leakage, check_no_leakage
from dpnbids.learn.train import FoldNetwork, _fit_cnn, fit_fold_network

LOGGER = logging.getLogger(__name__)

#: The paper's hyperparameter grids (48 fits per fold; pass as ``tune_grid``). A grid's keys
#: are fields of :class:`~dpnbids.learn.params.ModelParams` or
#: :class:`~dpnbids.learn.params.TrainParams` (:func:`~dpnbids.learn.params.with_overrides`).
PAPER_GRID = {"learning_rate": (1e-4, 1e-3, 1e-2), "epsilon": (0.1, 1.0),
              "dropout": (0.3, 0.5), "batch_size": (4, 8), "epochs": (50, 100)}
#: What ``tune=True`` searches by default (16 fits per fold): the choices that
#: benchmarks/results/2026-12-07-cnn-vs-linear.md found to matter for a VoxNet trained on about 40 subjects.
TUNE_GRID = {"epsilon": (1e-3, 0.1), "dropout": (0.3, 0.5), "weight_decay": (0.0, 1e-3),
             "augment": (False, True)}


def _tune(x_tr, y_tr, x_val, y_val, model_params, train_params, grid, seed):
    """Pick hyperparameters on the inner validation subjects only (the early-stopping
    metric: best AUC, or lowest loss)."""
    keys = sorted(grid)
    monitor = str(train_params.monitor)
    sign = -1.0 if monitor == "val_auc" else 1.0
    best, best_score = None, np.inf
    for values in itertools.product(*(grid[k] for k in keys)):
        cand = dict(zip(keys, values))
        mp, tp = with_overrides(model_params, train_params, cand)
        _, hist, _ = _fit_cnn(x_tr, y_tr, x_val, y_val, mp, tp, seed)
        score = min(sign * np.asarray(hist.get(monitor) or hist["val_loss"]))
        if best is None or score < best_score:
            best, best_score = (mp, tp, cand), score
    return best


@dataclass(frozen=True)
class FoldModel:
    """What one outer fold trained, handed to ``run_nested_cv``'s ``on_fold`` hook.

    ``x_train`` (outer-training subjects: inner training then validation) and ``x_test``
    (the outer test subjects) are the scaled CNN inputs exactly as the model saw them;
    ``channels`` are the indices of the input set's maps that were used.
    """

    input_set: str
    fold: Fold
    model: object
    channels: np.ndarray
    scaler: ChannelScaler
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_ids: tuple[str, ...]


@dataclass
class CVResult:
    """Predictions, fold manifests, learning curves and timings of one nested CV."""

    predictions: pd.DataFrame
    manifests: list = field(default_factory=list)
    histories: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


def run_nested_cv(x, y, subject_ids, folds, *, input_set="ASC", select_fn=None,
                  model_params: ModelParams | None = None,
                  train_params: TrainParams | None = None, tune=False, tune_grid=None,
                  baselines=BASELINES, threshold_rule="youden", random_state=None,
                  progress=None, on_fold=None, gram=None, deconfound=None) -> CVResult:
    """Nested CV of the VoxNet (and baselines) on ``x`` (S, X, Y, Z, C) with labels ``y``.

    ``model_params`` and ``train_params``: the network and its training
    (:mod:`dpnbids.learn.params`; None: the defaults). ``on_fold(FoldModel)``, if given, is
    called once per outer fold with the fold's trained CNN and its scaled inputs, before the
    model is discarded (e.g. for attribution maps of the held-out subjects). ``gram``: the
    baselines' :class:`GramCache` of ``x``, when the caller already has it (it is built here
    otherwise). ``deconfound``: a fold-wise :class:`~dpnbids.learn.confounds.FoldDeconfounder`
    for the CNN and the baselines.

    Every model's outer-test probabilities are calibrated and thresholded with what was
    fitted inside the outer training fold (:func:`_calibrate`): the CNN on its inner
    validation subjects, the baselines on inner cross-validated scores of the outer
    training subjects. ``predictions`` holds ``raw_score`` (the CNN's sigmoid output, the
    baselines' decision value), the calibrated ``probability``, the fold's ``threshold``
    and the ``predicted_label``.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    ids = list(subject_ids)
    if x.ndim != 5 or x.shape[0] != len(ids) or y.size != len(ids):
        raise InputError(f"features {x.shape}, {y.size} labels and {len(ids)} subjects do not "
                         "agree; expected (subjects, X, Y, Z, channels)")
    index = {s: i for i, s in enumerate(ids)}
    model_params, train_params = checked(model_params, train_params)
    rows, manifests, histories = [], [], {}
    fold_seconds, epoch_seconds = [], []
    if baselines and gram is None and not deconfound:
        gram = GramCache(x)
    for fold in folds:
        check_no_leakage(fold)
        tr = np.array([index[s] for s in fold.train_ids])
        va = np.array([index[s] for s in fold.val_ids])
        te = np.array([index[s] for s in fold.test_ids])
        outer = np.concatenate([tr, va])
        started = time.perf_counter()
        channels, scaler, xs_outer, xs_test, deconf = _fold_inputs(x, outer, te, select_fn,
                                                                   fold, input_set, deconfound)
        n_tr = tr.size
        x_tr, x_val = xs_outer[:n_tr], xs_outer[n_tr:]
        mp, tp, chosen = model_params, train_params, None
        if tune:
            mp, tp, chosen = _tune(x_tr, y[tr], x_val, y[va], model_params, train_params,
                                   tune_grid or TUNE_GRID, fold.seed)
        net = fit_fold_network(xs_outer, y[outer], n_tr, mp, tp, fold.seed)
        z_test = predict_logit(net.model, xs_test)
        raw = expit(z_test)
        if on_fold is not None:
            on_fold(FoldModel(input_set, fold, net.model, channels, scaler, xs_outer, y[outer],
                              xs_test, y[te], tuple(fold.test_ids)))
        net = net._replace(model=None)  # free the network(s) before the next fold trains
        epoch_seconds.append(net.seconds / sum(net.member_epochs))
        histories.update(_fold_histories(fold, net))
        test_subjects = [ids[i] for i in te]
        cal = _calibrate(net.calibration_scores, y[outer][net.calibration_rows],
                         threshold_rule, fold, [ids[i] for i in outer[net.calibration_rows]])
        calibration = {"cnn": cal}
        rows.extend(_prediction_rows(fold, input_set, "cnn", test_subjects, y[te], raw, cal,
                                     z_test))
        base = (gram, outer, te, y, ids, channels) if not deconf else \
            GramCache.of_fold(deconf, y, ids, outer, te)
        for name in baselines:
            calibration[name], dv = _baseline_fold(base[0], name, fold, *base[1:], threshold_rule)
            rows.extend(_prediction_rows(fold, input_set, name, test_subjects, y[te], dv,
                                         calibration[name], dv))
        fold_seconds.append(time.perf_counter() - started)
        manifests.append(_fold_manifest(fold, channels, net, chosen, calibration,
                                        threshold_rule))
        manifests[-1].update({"deconfounding": deconf["record"]} if deconf else {})
        if progress:
            progress(f"repeat {fold.repeat} fold {fold.fold}: {net.epochs} epochs, "
                     f"{fold_seconds[-1]:.1f} s")
    timings = {"seconds_per_fold_mean": float(np.mean(fold_seconds)) if fold_seconds else 0.0,
               "seconds_per_epoch_mean": float(np.mean(epoch_seconds)) if epoch_seconds else 0.0,
               "seconds_per_fold": [float(v) for v in fold_seconds]}
    return CVResult(pd.DataFrame(rows), manifests, histories, timings)


def _fold_histories(fold: Fold, net: FoldNetwork) -> dict:
    """Learning curves keyed (repeat, fold), or (repeat, fold, member) for an ensemble."""
    if len(net.histories) == 1:
        return {(fold.repeat, fold.fold): net.histories[0]}
    return {(fold.repeat, fold.fold, k): h for k, h in enumerate(net.histories)}


def _fold_manifest(fold: Fold, channels, net: FoldNetwork, chosen, calibration,
                   threshold_rule) -> dict:
    """What one outer fold used and fitted: subjects, components, seeds, epochs, tuned
    hyperparameters and every model's calibration with the subjects it was fitted on."""
    members = len(net.histories)
    return {"repeat": fold.repeat, "fold": fold.fold,
            "train_ids": list(fold.train_ids), "val_ids": list(fold.val_ids),
            "test_ids": list(fold.test_ids),
            "selected_components": [int(c) for c in channels],
            "seed": int(fold.seed), "epochs_trained": net.epochs,
            **({"inner_folds": members, "epochs_trained_per_member": net.member_epochs}
               if members > 1 else {}),
            "training_restarts": [r for h in net.histories for r in h.get("restarts", [])],
            "training_flags": [f for h in net.histories for f in h.get("flags", [])],
            "tuned_hyperparameters": chosen,
            "calibration": {m: {**c["platt"].to_dict(), "threshold": c["threshold"],
                                "threshold_rule": threshold_rule, "fitted_on": c["fitted_on"]}
                            for m, c in calibration.items()},
            "scaling": "per-channel z-score fitted on the outer training fold"}


def _fold_inputs(x, outer, test, select_fn, fold: Fold, input_set: str, deconfound=None):
    """The fold's channels (selected on its outer-training subjects), the scaler fitted on
    them, the scaled outer-training and test inputs, and ``deconfound.fold``'s result."""
    channels = np.arange(x.shape[-1])
    if select_fn is not None:
        channels = np.asarray(select_fn(np.sort(outer)), dtype=int)
        if channels.size == 0:
            raise InputError(f"{input_set}: component selection returned no component "
                             f"in repeat {fold.repeat} fold {fold.fold}")
    xs_outer, xs_test = x[outer][..., channels], x[test][..., channels]
    deconf = deconfound.fold(xs_outer, xs_test, outer, test, fold) if deconfound else None
    if deconf:
        xs_outer, xs_test = deconf["outer"], deconf["test"]
    scaler = ChannelScaler.fit(xs_outer)
    return channels, scaler, scaler.transform(xs_outer), scaler.transform(xs_test), deconf


def _calibrate(scores, y, rule, fold: Fold, fitted_on) -> dict:
    """Platt scaling and the operating threshold, fitted on outer-training subjects only."""
    check_calibration_leakage(fold, fitted_on)
    platt, threshold = fit_calibration(scores, y, rule)
    return {"platt": platt, "threshold": threshold, "fitted_on": list(fitted_on)}


def _baseline_fold(gram, name, fold, outer, test, y, ids, channels, rule):
    """One baseline in one outer fold: calibration and threshold from inner cross-validated
    decision values of the outer training subjects, then decision values of the test ones."""
    inner = inner_decision_values(gram, name, outer, y, channels, fold.seed)
    cal = _calibrate(inner, y[outer], rule, fold, [ids[i] for i in outer])
    return cal, decision_values(gram, name, outer, test, y, channels)


def _prediction_rows(fold, input_set, model, subjects, y, raw, cal, scores) -> list[dict]:
    prob = cal["platt"](scores)
    return [{"participant_id": f"sub-{s}", "repeat": fold.repeat, "fold": fold.fold,
             "input_set": input_set, "model": model, "true_label": int(t),
             "raw_score": float(r), "probability": float(p), "threshold": cal["threshold"],
             "predicted_label": int(p >= cal["threshold"])}
            for s, t, r, p in zip(subjects, y, raw, prob)]


def permutation_test(run_fn, y, *, n_permutations: int, random_state=None, observed=None):
    """Label-permutation test: ``run_fn(labels) -> auc`` reruns the whole CV.

    p = (1 + #{null >= observed}) / (1 + n_permutations).
    """
    y = np.asarray(y, dtype=int)
    if observed is None:
        observed = run_fn(y)
    rng = np.random.default_rng(random_state)
    null = np.array([run_fn(rng.permutation(y)) for _ in range(int(n_permutations))])
    return float(observed), null, permutation_p(observed, null)


def permutation_p(observed, null) -> float:
    """(1 + #{null >= observed}) / (1 + #null)."""
    null = np.asarray(null, dtype=float)
    return float((1.0 + np.sum(null >= observed)) / (1.0 + null.size))
