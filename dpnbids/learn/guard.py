"""A training guard for the CNN: a sane start, and no silent collapse, divergence or NaN.

With 30-40 training subjects, a VoxNet can saturate in its first epochs: every subject is
given one class with a probability that rounds to 0 or 1 in float32. On a backend whose
cross-entropy clips probabilities (Keras' JAX and PyTorch losses on a sigmoid output)
the gradient is then exactly zero and the network never moves again; its validation loss
sits flat at ``-log(1.19e-7) * share of the other class`` (5.978 for 3 of 8). dpnbids
trains on logits (:func:`dpnbids.learn.model.logit_model`), which keeps a gradient, and
this guard watches every attempt:

* **initial loss**: the cross-entropy of the untrained network on its training subjects
  must be finite and below ``INITIAL_LOSS_MAX`` (a zero-initialised logit layer gives
  exactly log 2);
* **NaN**: a non-finite training loss;
* **divergence**: a training loss above ``DIVERGED_LOSS`` for ``STALL_EPOCHS`` epochs
  running;
* **saturation**: every validation subject given the same class with ``|logit|`` above
  ``SATURATED_LOGIT`` for ``STALL_EPOCHS`` epochs running, or a validation loss that has
  not moved (range below ``FLAT_TOL``) for ``STALL_EPOCHS`` epochs while above log 2.

A tripped guard stops the attempt (:class:`GuardTripped`); :func:`dpnbids.learn.cv._fit_cnn`
restarts from a new seeded initialisation at half the learning rate. On the last allowed
attempt the guard only records what it saw (``flags``), which the fold manifest and
group.html report.
"""
from __future__ import annotations

import math

import keras
import numpy as np

LOG2 = math.log(2.0)
INITIAL_LOSS_MAX = 2.0 * LOG2
DIVERGED_LOSS = 3.0 * LOG2
SATURATED_LOGIT = 9.0
STALL_EPOCHS = 4
FLAT_TOL = 1e-4


class GuardTripped(RuntimeError):
    """A training attempt was abandoned; ``record`` says why and when."""

    def __init__(self, record: dict):
        super().__init__(record["reason"])
        self.record = record


def bce_from_logits(logits, y) -> float:
    """Mean binary cross-entropy of ``logits`` for labels ``y`` (numerically stable)."""
    z = np.asarray(logits, dtype=float).ravel()
    t = np.asarray(y, dtype=float).ravel()
    return float(np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))))


def flat_and_high(values, epochs=STALL_EPOCHS, tol=FLAT_TOL) -> bool:
    """True when the last ``epochs`` values moved by less than ``tol`` and exceed log 2."""
    tail = np.asarray(values[-epochs:], dtype=float)
    return (tail.size >= epochs and np.all(np.isfinite(tail))
            and float(np.ptp(tail)) < tol and float(tail.min()) > LOG2 + 0.05)


def saturated(logits) -> bool:
    """True when every logit is beyond ``SATURATED_LOGIT`` on the same side."""
    z = np.asarray(logits, dtype=float).ravel()
    return z.size > 0 and (bool(np.all(z > SATURATED_LOGIT)) or
                           bool(np.all(z < -SATURATED_LOGIT)))


class TrainingGuard(keras.callbacks.Callback):
    """Keras callback implementing the checks of this module on a logit-output model."""

    def __init__(self, x_tr, y_tr, x_val, y_val, *, trip: bool = True):
        super().__init__()
        self.x_tr, self.y_tr, self.x_val, self.y_val = x_tr, y_tr, x_val, y_val
        self.trip = bool(trip)
        self.initial_loss = float("nan")
        self.tripped: dict | None = None
        self.flags: list[str] = []
        self._losses: list[float] = []
        self._val_losses: list[float] = []
        self._saturated_run = 0

    def _logits(self, model, x):
        return np.asarray(model.predict(x, verbose=0, batch_size=8), dtype=float).ravel()

    def check_initial(self, model) -> None:
        """Raise :class:`GuardTripped` (or flag) when the untrained loss is not sane."""
        self.initial_loss = bce_from_logits(self._logits(model, self.x_tr), self.y_tr)
        if not (math.isfinite(self.initial_loss) and self.initial_loss <= INITIAL_LOSS_MAX):
            self._stop(model, 0, f"initial loss {self.initial_loss:.3g} is not sane "
                                 f"(expected <= {INITIAL_LOSS_MAX:.3f}, log 2 = {LOG2:.3f})",
                       during_fit=False)
            self.raise_if_tripped()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        loss = float(logs.get("loss", float("nan")))
        self._losses.append(loss)
        self._val_losses.append(float(logs.get("val_loss", float("nan"))))
        if not math.isfinite(loss):
            return self._stop(self.model, epoch + 1, "training loss is not finite (NaN/inf)")
        recent = self._losses[-STALL_EPOCHS:]
        if len(recent) == STALL_EPOCHS and min(recent) > DIVERGED_LOSS:
            return self._stop(self.model, epoch + 1,
                              f"training loss above {DIVERGED_LOSS:.2f} for {STALL_EPOCHS} "
                              f"epochs (diverged; last {loss:.3g})")
        self._saturated_run = (self._saturated_run + 1
                               if saturated(self._logits(self.model, self.x_val)) else 0)
        if self._saturated_run >= STALL_EPOCHS:
            return self._stop(self.model, epoch + 1,
                              f"every validation subject saturated at one class (|logit| > "
                              f"{SATURATED_LOGIT:g}) for {STALL_EPOCHS} epochs")
        if flat_and_high(self._val_losses):
            return self._stop(self.model, epoch + 1,
                              f"validation loss flat at {self._val_losses[-1]:.3f} for "
                              f"{STALL_EPOCHS} epochs")
        return None

    def _stop(self, model, epoch, reason, during_fit=True):
        if self.trip:
            self.tripped = {"reason": reason, "epoch": int(epoch)}
            if during_fit:
                model.stop_training = True
        elif reason not in self.flags:
            self.flags.append(reason)

    def raise_if_tripped(self) -> None:
        if self.tripped is not None:
            raise GuardTripped(self.tripped)

    def summary(self) -> dict:
        """What goes into the training history: the initial loss and any flags."""
        return {"initial_loss": self.initial_loss, "flags": list(self.flags)}
