"""Training the VoxNet: one network under the training guard, or an inner-fold ensemble.

:func:`fit_fold_network` trains what one outer fold (or the final model,
:func:`fit_final_model`) needs from its training subjects; :func:`_fit_cnn` trains one network on its logit under a
:class:`dpnbids.learn.guard.TrainingGuard` and restarts a collapsed attempt. The batches
(:func:`augment_batch`, :func:`balanced_weights`) and the dtype policy live here too.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple

import numpy as np

from dpnbids.config import derive_seed
from dpnbids.learn.calibration import fit_calibration
from dpnbids.learn.model import predict_logit
from dpnbids.learn.params import ModelParams, TrainParams, checked
from dpnbids.learn.scaling import ChannelScaler
from dpnbids.learn.splits import stratified_folds

LOGGER = logging.getLogger(__name__)


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


def _training_batches(x, y, train_params: TrainParams, seed):
    """A seeded keras PyDataset of shuffled (optionally augmented, weighted) batches."""
    import keras

    batch = int(train_params.batch_size)
    augment = bool(train_params.augment)
    weights = balanced_weights(y) if train_params.balanced else None
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


def _fit_cnn(x_tr, y_tr, x_val, y_val, model_params: ModelParams, train_params: TrainParams,
             seed):
    """Train one VoxNet; early stopping on the inner validation subjects.

    ``train_params`` (:class:`dpnbids.learn.params.TrainParams`): epochs, batch_size,
    patience, min_epochs, mixed_precision, ``monitor`` ("val_loss" or "val_auc"),
    ``augment`` (shifts and intensity jitter, :func:`augment_batch`), ``balanced``
    (class-balanced weights), ``jit_compile`` and ``max_restarts``.

    The network is trained on its logit (:func:`dpnbids.learn.model.logit_model`,
    cross-entropy ``from_logits``), under a :class:`dpnbids.learn.guard.TrainingGuard`:
    an attempt whose initial loss is not sane, whose loss turns NaN or diverges, or whose
    validation loss sits flat at a saturated value is abandoned, and training restarts
    from a new seeded initialisation at half the learning rate (at most ``max_restarts``
    times). The history's ``restarts`` lists every abandoned attempt and why.
    """
    from dpnbids.learn.guard import GuardTripped

    restarts = []
    lr = float(model_params.learning_rate)
    last = int(train_params.max_restarts)
    for attempt in range(last + 1):
        attempt_seed = seed if attempt == 0 else derive_seed(seed, f"restart{attempt}", bits=32)
        try:  # the last attempt only records what the guard sees: it never trips
            model, history, seconds = _fit_cnn_once(
                x_tr, y_tr, x_val, y_val, dataclasses.replace(model_params, learning_rate=lr),
                train_params, attempt_seed, final=attempt == last)
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


def _fit_cnn_once(x_tr, y_tr, x_val, y_val, model_params: ModelParams,
                  train_params: TrainParams, seed, *, final):
    """One training attempt (see :func:`_fit_cnn`); ``final``: report, never trip."""
    import keras

    from dpnbids.learn.guard import TrainingGuard
    from dpnbids.learn.model import build_voxnet, logit_model

    keras.utils.set_random_seed(int(seed) % (2**31))
    if train_params.mixed_precision:
        keras.mixed_precision.set_global_policy(mixed_precision_policy())
    try:
        model = build_voxnet(x_tr.shape[1:], **model_params.to_mapping())
    finally:  # the policy is global: never let it leak into the next model or the baselines
        keras.mixed_precision.set_global_policy("float32")
    trainer = logit_model(model)
    trainer.compile(optimizer=model.optimizer,
                    loss=keras.losses.BinaryCrossentropy(from_logits=True),
                    metrics=[keras.metrics.AUC(name="auc", from_logits=True)],
                    jit_compile=train_params.jit_compile)
    monitor = str(train_params.monitor)
    guard = TrainingGuard(x_tr, y_tr, x_val, y_val, trip=not final)
    guard.check_initial(trainer)
    callbacks = [guard,
                 keras.callbacks.EarlyStopping(monitor=monitor,
                                               mode="max" if monitor == "val_auc" else "min",
                                               patience=int(train_params.patience),
                                               start_from_epoch=int(train_params.min_epochs),
                                               restore_best_weights=True)]
    started = time.perf_counter()
    data = {}
    if train_params.augment or train_params.balanced:
        data["x"] = _training_batches(x_tr, y_tr, train_params, seed)
    else:
        data.update(x=x_tr, y=y_tr.astype(np.float32), shuffle=True,
                    batch_size=int(train_params.batch_size))
    hist = trainer.fit(**data, validation_data=(x_val, y_val.astype(np.float32)),
                       epochs=int(train_params.epochs), callbacks=callbacks,
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


def fit_fold_network(xs, y, n_train, model_params: ModelParams, train_params: TrainParams,
                     seed) -> FoldNetwork:
    """Train the CNN on the training subjects ``xs`` (S, X, Y, Z, C), labels ``y``.

    With ``train_params.inner_folds`` K <= 1 (the default), one network trains on the
    first ``n_train`` rows and early-stops on the others (the validation subjects). With
    K >= 2, the rows are split into K stratified inner folds (seeded by ``seed``); member k
    trains on the other K - 1 folds and early-stops on fold k, so every subject gets one
    held-out logit for calibration, and the K members are averaged on the logit scale into
    one model (:func:`dpnbids.learn.model.build_ensemble`). The fixed validation split is
    then not used. K is lowered to the smaller class's count where that is below K.
    """
    from dpnbids.learn.model import build_ensemble

    y = np.asarray(y, dtype=int)
    k = min(int(train_params.inner_folds), int(np.bincount(y, minlength=2).min()))
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


class FinalModel(NamedTuple):
    """The model trained on all labelled subjects, its input scaling, the channels it uses,
    its learning curve, and the calibration and threshold fitted on its validation subjects."""

    model: object
    scaling: ChannelScaler
    channels: list | None
    history: dict
    calibration: dict


def fit_final_model(x, y, *, channels=None, model_params: ModelParams | None = None,
                    train_params: TrainParams | None = None, val_fraction=0.2,
                    threshold_rule="youden", random_state=None) -> FinalModel:
    """Train on all labelled subjects; the inner validation split drives early stopping,
    Platt scaling and the threshold (``threshold_rule``), as in every outer fold."""
    from sklearn.model_selection import train_test_split

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    if channels is not None:
        x = x[..., np.asarray(channels, dtype=int)]
    seed = derive_seed(random_state, 0, bits=32)
    scaler = ChannelScaler.fit(x)
    xs = scaler.transform(x)
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=max(2, int(round(val_fraction * len(y)))),
                              stratify=y, random_state=seed % (2**31))
    order = np.concatenate([tr, va])
    model_params, train_params = checked(model_params, train_params)
    net = fit_fold_network(xs[order], y[order], tr.size, model_params, train_params, seed)
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
    return FinalModel(net.model, scaler, None if channels is None else [int(c) for c in channels],
                      history, calibration)
