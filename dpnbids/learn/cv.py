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
selected, scaled features of the same folds.  :func:`check_no_leakage` raises
:class:`~dpnbids.exceptions.DataLeakageError` on any overlap of training,
validation and test subjects; it is called for every fold before training.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import expit

from dpnbids.config import derive_seed
from dpnbids.exceptions import DataLeakageError, InputError
from dpnbids.learn.calibration import fit_calibration
from dpnbids.learn.linear import BASELINES, GramCache, decision_values, inner_decision_values
from dpnbids.learn.model import predict_logit

LOGGER = logging.getLogger(__name__)

#: The paper's hyperparameter grids (48 fits per fold; pass as ``tune_grid``).
PAPER_GRID = {"learning_rate": (1e-4, 1e-3, 1e-2), "epsilon": (0.1, 1.0),
              "dropout": (0.3, 0.5), "batch_size": (4, 8), "epochs": (50, 100)}
#: What ``tune=True`` searches by default (16 fits per fold): the choices that
#: benchmarks/README.md found to matter for a VoxNet trained on about 40 subjects.
TUNE_GRID = {"epsilon": (1e-3, 0.1), "dropout": (0.3, 0.5), "weight_decay": (0.0, 1e-3),
             "augment": (False, True)}
#: Keys of a tuning grid that are :func:`dpnbids.learn.model.build_voxnet` arguments;
#: the others are training options of :func:`_fit_cnn`.
MODEL_KEYS = ("learning_rate", "epsilon", "dropout", "weight_decay", "dense_units")


@dataclass(frozen=True)
class Fold:
    """One outer fold: subject IDs of the inner-training, validation and test sets."""

    repeat: int
    fold: int
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    seed: int

    @property
    def outer_train_ids(self) -> tuple:
        return tuple(self.train_ids) + tuple(self.val_ids)


def check_no_leakage(fold: Fold) -> None:
    """Raise DataLeakageError if a subject is in two of train/val/test, or duplicated."""
    sets = {"train": list(fold.train_ids), "validation": list(fold.val_ids),
            "test": list(fold.test_ids)}
    for name, ids in sets.items():
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DataLeakageError(f"repeat {fold.repeat} fold {fold.fold}: subject(s) {dup} "
                                   f"appear more than once in the {name} set")
    for (a, ia), (b, ib) in itertools.combinations(sets.items(), 2):
        overlap = sorted(set(ia) & set(ib))
        if overlap:
            raise DataLeakageError(
                f"repeat {fold.repeat} fold {fold.fold}: subject(s) {overlap} are in both the "
                f"{a} and {b} sets; the outer test fold must never be seen in training, "
                "selection, scaling or early stopping.")


def stratified_folds(y, n_folds: int, seed: int) -> list:
    """(training, test) index arrays of one seeded, shuffled stratified K-fold split: the
    outer folds of repeat ``r`` are ``stratified_folds(y, K, derive_seed(random_state, r))``."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=int(seed) % (2**31))
    return list(skf.split(np.zeros((len(y), 1)), np.asarray(y, dtype=int)))


def make_outer_splits(subject_ids, labels, *, n_folds: int = 10, n_repeats: int = 1,
                      val_fraction: float = 0.2, random_state=None) -> list[Fold]:
    """Stratified, seeded subject-level outer folds with an inner validation split."""
    from sklearn.model_selection import train_test_split

    ids = np.asarray(list(subject_ids))
    y = np.asarray(labels, dtype=int)
    if ids.size != y.size:
        raise InputError(f"{ids.size} subject IDs but {y.size} labels")
    if len(set(ids.tolist())) != ids.size:
        raise DataLeakageError("duplicated subject IDs: splits must be at subject level")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"only one class among the labelled subjects ({n_pos} responders, "
                         f"{n_neg} non-responders); cross-validation needs both.")
    if min(n_pos, n_neg) < n_folds:
        raise InputError(f"{n_pos} responders and {n_neg} non-responders, but --folds "
                         f"{n_folds} needs at least {n_folds} per class; use --folds "
                         f"{max(2, min(n_pos, n_neg))} or fewer.")
    folds = []
    for repeat in range(n_repeats):
        seed = derive_seed(random_state, repeat, bits=32)
        for k, (train, test) in enumerate(stratified_folds(y, n_folds, seed)):
            fold_seed = derive_seed(seed, k, bits=32)
            n_val = max(2, int(round(val_fraction * train.size)))
            ytr = y[train]
            strat = ytr if min((ytr == 1).sum(), (ytr == 0).sum()) >= 2 else None
            inner, val = train_test_split(train, test_size=n_val, stratify=strat,
                                          random_state=fold_seed % (2**31))
            fold = Fold(repeat, k, tuple(ids[np.sort(inner)].tolist()),
                        tuple(ids[np.sort(val)].tolist()), tuple(ids[np.sort(test)].tolist()),
                        fold_seed)
            check_no_leakage(fold)
            folds.append(fold)
    return folds


def splits_to_dataframe(folds) -> pd.DataFrame:
    """One row per (repeat, fold, subject) with its role: train, validation or test."""
    rows = []
    for f in folds:
        for role, ids in (("train", f.train_ids), ("validation", f.val_ids),
                          ("test", f.test_ids)):
            rows.extend({"repeat": f.repeat, "fold": f.fold, "participant_id": f"sub-{i}",
                         "role": role, "seed": f.seed} for i in ids)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- scaling
def fit_scaler(x: np.ndarray) -> dict:
    """Per-channel mean/SD over subjects and non-zero (in-brain) voxels of ``x`` (S,X,Y,Z,C)."""
    nz = np.any(x != 0, axis=(0, 4))
    vals = x[:, nz, :]  # (S, V, C)
    mean = vals.mean(axis=(0, 1))
    sd = vals.std(axis=(0, 1))
    sd[sd == 0] = 1.0
    return {"mean": mean.astype(np.float32).tolist(), "sd": sd.astype(np.float32).tolist(),
            "support": nz}


def apply_scaler(x: np.ndarray, scaler: dict) -> np.ndarray:
    out = (x - np.asarray(scaler["mean"], np.float32)) / np.asarray(scaler["sd"], np.float32)
    out[:, ~np.asarray(scaler["support"], bool), :] = 0.0
    return out.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- training
def mixed_precision_policy() -> str:
    """Keras dtype policy for ``--mixed-precision``: float16 on a GPU, bfloat16 on a CPU.

    float16 needs loss scaling and is what GPUs' tensor cores run; on CPUs with
    AVX-512 BF16 or AMX (Intel Sapphire Rapids and later, AMD Zen 4 and later),
    oneDNN runs bfloat16 convolutions several times faster than float32, and
    bfloat16 keeps float32's exponent range, so no loss scaling is needed. The
    sigmoid output stays float32 either way (:func:`dpnbids.learn.model.build_voxnet`).
    """
    import keras

    try:
        has_gpu = bool(keras.distribution.list_devices("gpu"))
    except Exception:  # noqa: BLE001 - a backend without GPU support raises here
        has_gpu = False
    return "mixed_float16" if has_gpu else "mixed_bfloat16"


def augment_batch(x: np.ndarray, rng: np.random.Generator, *, max_shift: int = 1,
                  jitter: float = 0.05) -> np.ndarray:
    """Anatomy-preserving augmentation of a batch ``(N, X, Y, Z, C)``.

    Each sample is shifted by up to ``max_shift`` voxels along each axis (zero-filled,
    no wrap-around and never mirrored: left and right are different brains) and each of
    its channels is scaled by a factor drawn from N(1, ``jitter``).
    """
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        shifts = rng.integers(-max_shift, max_shift + 1, size=3)
        src, dst = [], []
        for axis, d in enumerate(shifts):
            n = x.shape[axis + 1]
            src.append(slice(max(0, -d), n - max(0, d)))
            dst.append(slice(max(0, d), n - max(0, -d)))
        out[(i, *dst)] = x[(i, *src)]
        out[i] *= rng.normal(1.0, jitter, size=x.shape[-1]).astype(x.dtype)
    return out


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Per-sample weights giving both classes the same total weight (mean weight 1)."""
    y = np.asarray(y, dtype=int)
    counts = np.bincount(y, minlength=2).astype(float)
    w = np.where(y == 1, y.size / (2 * max(counts[1], 1)), y.size / (2 * max(counts[0], 1)))
    return w.astype(np.float32)


def _training_batches(x, y, train_params, seed):
    """A seeded keras PyDataset of shuffled (optionally augmented, weighted) batches."""
    import keras

    batch = int(train_params.get("batch_size", 4))
    augment = bool(train_params.get("augment", False))
    weights = balanced_weights(y) if train_params.get("balanced") else None
    rng = np.random.default_rng(int(seed) % (2**32))

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = rng.permutation(len(y))

        def __len__(self):
            return int(np.ceil(len(y) / batch))

        def __getitem__(self, i):
            idx = self.order[i * batch:(i + 1) * batch]
            xb = augment_batch(x[idx], rng) if augment else x[idx]
            yb = y[idx].astype(np.float32)
            return (xb, yb) if weights is None else (xb, yb, weights[idx])

        def on_epoch_end(self):
            self.order = rng.permutation(len(y))

    return Batches()


def _fit_cnn(x_tr, y_tr, x_val, y_val, model_params, train_params, seed):
    """Train one VoxNet; early stopping on the inner validation subjects.

    ``train_params``: epochs, batch_size, patience, min_epochs, mixed_precision,
    ``monitor`` ("val_loss", the default, or "val_auc"), ``augment`` (shifts and
    intensity jitter, :func:`augment_batch`), ``balanced`` (class-balanced weights),
    ``jit_compile`` and ``max_restarts``.

    The network is trained on its logit (:func:`dpnbids.learn.model.logit_model`,
    cross-entropy ``from_logits``), under a :class:`dpnbids.learn.guard.TrainingGuard`:
    an attempt whose initial loss is not sane, whose loss turns NaN or diverges, or whose
    validation loss sits flat at a saturated value is abandoned, and training restarts
    from a new seeded initialisation at half the learning rate (at most ``max_restarts``
    times). The history's ``restarts`` lists every abandoned attempt and why.
    """
    from dpnbids.learn.guard import GuardTripped

    restarts = []
    lr = float(model_params.get("learning_rate", 1e-3))
    for attempt in range(int(train_params.get("max_restarts", 2)) + 1):
        attempt_seed = seed if attempt == 0 else derive_seed(seed, f"restart{attempt}", bits=32)
        try:
            model, history, seconds = _fit_cnn_once(
                x_tr, y_tr, x_val, y_val, {**model_params, "learning_rate": lr},
                train_params, attempt_seed, final=attempt == int(train_params.get(
                    "max_restarts", 2)))
        except GuardTripped as trip:
            restarts.append({"attempt": attempt, "seed": int(attempt_seed),
                             "learning_rate": lr, **trip.record})
            LOGGER.warning("CNN training attempt %d abandoned (%s); restarting from a new "
                           "seeded initialisation at learning rate %g", attempt,
                           trip.record["reason"], lr / 2)
            lr /= 2.0
            continue
        history["restarts"] = restarts
        return model, history, seconds
    raise AssertionError("unreachable: the last attempt never trips the guard")


def _fit_cnn_once(x_tr, y_tr, x_val, y_val, model_params, train_params, seed, *, final):
    """One training attempt (see :func:`_fit_cnn`); ``final``: report, never trip."""
    import keras

    from dpnbids.learn.guard import TrainingGuard
    from dpnbids.learn.model import build_voxnet, logit_model

    keras.utils.set_random_seed(int(seed) % (2**31))
    if train_params.get("mixed_precision"):
        keras.mixed_precision.set_global_policy(mixed_precision_policy())
    try:
        model = build_voxnet(x_tr.shape[1:], **model_params)
    finally:  # the policy is global: never let it leak into the next model or the baselines
        keras.mixed_precision.set_global_policy("float32")
    trainer = logit_model(model)
    trainer.compile(optimizer=model.optimizer,
                    loss=keras.losses.BinaryCrossentropy(from_logits=True),
                    metrics=[keras.metrics.AUC(name="auc", from_logits=True)],
                    jit_compile=train_params.get("jit_compile", "auto"))
    monitor = str(train_params.get("monitor", "val_loss"))
    guard = TrainingGuard(x_tr, y_tr, x_val, y_val, trip=not final)
    guard.check_initial(trainer)
    callbacks = [guard,
                 keras.callbacks.EarlyStopping(monitor=monitor,
                                               mode="max" if monitor == "val_auc" else "min",
                                               patience=int(train_params.get("patience", 10)),
                                               start_from_epoch=int(
                                                   train_params.get("min_epochs", 0)),
                                               restore_best_weights=True)]
    started = time.perf_counter()
    data = {}
    if train_params.get("augment") or train_params.get("balanced"):
        data["x"] = _training_batches(x_tr, y_tr, train_params, seed)
    else:
        data.update(x=x_tr, y=y_tr.astype(np.float32), shuffle=True,
                    batch_size=int(train_params.get("batch_size", 4)))
    hist = trainer.fit(**data, validation_data=(x_val, y_val.astype(np.float32)),
                       epochs=int(train_params.get("epochs", 100)), callbacks=callbacks,
                       verbose=0)
    guard.raise_if_tripped()
    seconds = time.perf_counter() - started
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()
               if k in ("loss", "val_loss", "val_auc")}
    history.update(guard.summary())
    return model, history, seconds


class FoldNetwork(NamedTuple):
    """What :func:`fit_fold_network` trained on one set of training subjects.

    ``model``: one Keras model (a single network, or the inner-fold ensemble as one model,
    :func:`dpnbids.learn.model.build_ensemble`); ``calibration_scores``: held-out logits of
    the rows ``calibration_rows`` of the training set (the validation subjects, or every
    subject's out-of-inner-fold logit), on which Platt scaling and the threshold are fitted.
    """

    model: object
    histories: list
    seconds: float
    calibration_scores: np.ndarray
    calibration_rows: np.ndarray

    @property
    def member_epochs(self) -> list:
        return [len(h.get("loss", [])) or 1 for h in self.histories]

    @property
    def epochs(self):
        e = self.member_epochs
        return e[0] if len(e) == 1 else float(np.mean(e))


def fit_fold_network(xs, y, n_train, model_params, train_params, seed) -> FoldNetwork:
    """Train the CNN on the training subjects ``xs`` (S, X, Y, Z, C), labels ``y``.

    With ``train_params["inner_folds"]`` K <= 1 (the default), one network trains on the
    first ``n_train`` rows and early-stops on the others (the validation subjects). With
    K >= 2, the rows are split into K stratified inner folds (seeded by ``seed``); member k
    trains on the other K - 1 folds and early-stops on fold k, so every subject gets one
    held-out logit for calibration, and the K members are averaged on the logit scale into
    one model (:func:`dpnbids.learn.model.build_ensemble`). The fixed validation split is
    then not used. K is lowered to the smaller class's count where that is below K.
    """
    from dpnbids.learn.model import build_ensemble

    y = np.asarray(y, dtype=int)
    k = min(int(train_params.get("inner_folds", 1)), int(np.bincount(y, minlength=2).min()))
    if k < 2:
        model, hist, seconds = _fit_cnn(xs[:n_train], y[:n_train], xs[n_train:], y[n_train:],
                                        model_params, train_params, seed)
        rows = np.arange(n_train, len(y))
        scores = predict_logit(model, xs[rows])
        return FoldNetwork(model, [hist], seconds, scores, rows)
    members, histories, seconds = [], [], 0.0
    scores = np.empty(len(y))
    for j, (a, b) in enumerate(stratified_folds(y, k, derive_seed(seed, "inner", bits=32))):
        model, hist, sec = _fit_cnn(xs[a], y[a], xs[b], y[b], model_params, train_params,
                                    derive_seed(seed, j, bits=32))
        scores[b] = predict_logit(model, xs[b])
        members.append(model)
        histories.append(hist)
        seconds += sec
    return FoldNetwork(build_ensemble(members), histories, seconds, scores, np.arange(len(y)))


def _tune(x_tr, y_tr, x_val, y_val, model_params, train_params, grid, seed):
    """Pick hyperparameters on the inner validation subjects only (the early-stopping
    metric: best AUC, or lowest loss)."""
    keys = sorted(grid)
    monitor = str(train_params.get("monitor", "val_loss"))
    sign = -1.0 if monitor == "val_auc" else 1.0
    best, best_score = None, np.inf
    for values in itertools.product(*(grid[k] for k in keys)):
        cand = dict(zip(keys, values))
        mp = {**model_params, **{k: v for k, v in cand.items() if k in MODEL_KEYS}}
        tp = {**train_params, **{k: v for k, v in cand.items() if k not in MODEL_KEYS}}
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
    scaler: dict
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
                  model_params=None, train_params=None, tune=False, tune_grid=None,
                  baselines=BASELINES, threshold_rule="youden", random_state=None,
                  progress=None, on_fold=None, gram=None) -> CVResult:
    """Nested CV of the VoxNet (and baselines) on ``x`` (S, X, Y, Z, C) with labels ``y``.

    ``on_fold(FoldModel)``, if given, is called once per outer fold with the fold's trained
    CNN and its scaled inputs, before the model is discarded (e.g. for attribution maps of
    the held-out subjects). ``gram``: the baselines' :class:`GramCache` of ``x``, when the
    caller already has it (it is built here otherwise).

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
    model_params = dict(model_params or {})
    train_params = dict(train_params or {})
    rows, manifests, histories = [], [], {}
    fold_seconds, epoch_seconds = [], []
    if baselines and gram is None:
        gram = GramCache(x)
    for fold in folds:
        check_no_leakage(fold)
        tr = np.array([index[s] for s in fold.train_ids])
        va = np.array([index[s] for s in fold.val_ids])
        te = np.array([index[s] for s in fold.test_ids])
        outer = np.concatenate([tr, va])
        started = time.perf_counter()
        channels, scaler, xs_outer, xs_test = _fold_inputs(x, outer, te, select_fn, fold,
                                                           input_set)
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
        for name in baselines:
            calibration[name], dv = _baseline_fold(gram, name, fold, outer, te, y, ids,
                                                   channels, threshold_rule)
            rows.extend(_prediction_rows(fold, input_set, name, test_subjects, y[te], dv,
                                         calibration[name], dv))
        fold_seconds.append(time.perf_counter() - started)
        manifests.append(_fold_manifest(fold, channels, net, chosen, calibration,
                                        threshold_rule))
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


def _fold_inputs(x, outer, test, select_fn, fold: Fold, input_set: str):
    """The fold's channels (selected on its outer-training subjects), the scaler fitted on
    them, and the scaled outer-training and test inputs."""
    channels = np.arange(x.shape[-1])
    if select_fn is not None:
        channels = np.asarray(select_fn(np.sort(outer)), dtype=int)
        if channels.size == 0:
            raise InputError(f"{input_set}: component selection returned no component "
                             f"in repeat {fold.repeat} fold {fold.fold}")
    xs = x[..., channels]
    scaler = fit_scaler(xs[outer])
    return channels, scaler, apply_scaler(xs[outer], scaler), apply_scaler(xs[test], scaler)


def check_calibration_leakage(fold: Fold, calibration_ids) -> None:
    """Raise DataLeakageError if calibration or threshold choice saw an outer test subject."""
    overlap = sorted(set(calibration_ids) & set(fold.test_ids))
    if overlap:
        raise DataLeakageError(
            f"repeat {fold.repeat} fold {fold.fold}: calibration or threshold choice used "
            f"outer test subject(s) {overlap}; they must be fitted on the outer training "
            "fold only.")


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


class FinalModel(NamedTuple):
    """The model trained on all labelled subjects, its input scaling, the channels it uses,
    its learning curve, and the calibration and threshold fitted on its validation subjects."""

    model: object
    scaling: dict
    channels: list | None
    history: dict
    calibration: dict


def fit_final_model(x, y, *, channels=None, model_params=None, train_params=None,
                    val_fraction=0.2, threshold_rule="youden", random_state=None) -> FinalModel:
    """Train on all labelled subjects; the inner validation split drives early stopping,
    Platt scaling and the threshold (``threshold_rule``), as in every outer fold."""
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    if channels is not None:
        x = x[..., np.asarray(channels, dtype=int)]
    seed = derive_seed(random_state, 0, bits=32)
    scaler = fit_scaler(x)
    xs = apply_scaler(x, scaler)
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=max(2, int(round(val_fraction * len(y)))),
                              stratify=y, random_state=seed % (2**31))
    order = np.concatenate([tr, va])
    net = fit_fold_network(xs[order], y[order], tr.size, dict(model_params or {}),
                           dict(train_params or {}), seed)
    platt, threshold = fit_calibration(net.calibration_scores, y[order][net.calibration_rows],
                                       threshold_rule)
    n_members = len(net.histories)
    fitted_on = (f"{len(va)} validation subjects of the final training set" if n_members == 1
                 else f"out-of-inner-fold logits of all {len(y)} subjects ({n_members} "
                      "inner folds)")
    calibration = {**platt.to_dict(), "threshold_rule": str(threshold_rule),
                   "threshold": threshold,
                   "score": "logit of the network's sigmoid output", "fitted_on": fitted_on}
    history = net.histories[0] if n_members == 1 else {
        **net.histories[0], "members": net.histories}
    model = net.model
    scaling = {"mean": scaler["mean"], "sd": scaler["sd"],
               "support": np.asarray(scaler["support"], bool)}
    return FinalModel(model, scaling, None if channels is None else [int(c) for c in channels],
                      history, calibration)
