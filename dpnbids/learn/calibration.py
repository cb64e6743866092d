"""Probability calibration and operating thresholds chosen inside the training folds.

Pure numpy/scipy. Every function here is fitted on *validation* predictions of an outer
training fold (the CNN's inner validation subjects, or the linear baselines' inner
cross-validated scores) and then applied, frozen, to the outer test subjects.

* :func:`fit_platt` - Platt (sigmoid) scaling ``p = 1 / (1 + exp(-(a*s + b)))`` with Platt's
  (1999) smoothed targets ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``, which keep a handful of
  validation subjects from producing probabilities of exactly 0 or 1. The slope is bounded
  below by a small positive number: a calibrator fitted on a few subjects must never flip
  the model's ranking of new subjects (a validation set on which the score points the wrong
  way gives a near-flat calibration, i.e. probabilities near the training prior).
  Isotonic regression is not offered: with 5-10 validation subjects a step function
  overfits them. The smoothed targets bound the fit on the validation subjects only; a new
  subject whose score lies far outside them would still get 1e-14 or 1.0. So the
  calibrated probability is shrunk into ``[m, 1 - m]`` with ``m = 1 / (n + 2)`` for ``n``
  validation subjects (the Laplace rule-of-succession bound: n observations cannot
  justify more certainty than that): ``p = m + (1 - 2m) * sigmoid(...)``, strictly
  increasing, so rankings and AUC are unchanged.
* :func:`choose_threshold` - the ``--threshold-rule``: ``youden`` (maximise sensitivity +
  specificity), ``balanced`` (sensitivity closest to specificity), ``fixed:T`` and
  ``sensitivity:S`` (the highest threshold that keeps sensitivity >= S).
* :func:`reliability_curve` and :func:`net_benefit` - the reliability diagram and the
  decision curve (Vickers & Elkin 2006) of pooled out-of-fold predictions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpnbids.exceptions import InputError

#: Smallest slope a Platt calibrator may take (keeps the ranking of new subjects).
MIN_SLOPE = 1e-6
#: Margin of a calibrator recorded without its validation-set size (older models).
LEGACY_MARGIN = 1e-3
#: Fewer validation subjects than this and the report says the calibration is fragile.
MIN_CALIBRATION_SUBJECTS = 10
#: The ``--threshold-rule`` forms.
THRESHOLD_RULES = ("youden", "balanced", "fixed:T", "sensitivity:S")


@dataclass(frozen=True)
class Platt:
    """A fitted sigmoid calibrator: ``p = m + (1 - 2m) * sigmoid(slope * score + intercept)``,
    ``m`` the margin that keeps it inside (0, 1) (``1 / (n_fitted + 2)``)."""

    slope: float = 1.0
    intercept: float = 0.0
    margin: float = LEGACY_MARGIN
    n_fitted: int | None = None

    def __call__(self, scores) -> np.ndarray:
        z = self.slope * np.asarray(scores, dtype=float) + self.intercept
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        return self.margin + (1.0 - 2.0 * self.margin) * p

    def to_dict(self) -> dict:
        return {"method": "platt", "slope": float(self.slope),
                "intercept": float(self.intercept), "margin": float(self.margin),
                "n_fitted": self.n_fitted}

    @classmethod
    def from_dict(cls, record: dict) -> "Platt":
        n = record.get("n_fitted")
        return cls(float(record["slope"]), float(record["intercept"]),
                   float(record.get("margin", LEGACY_MARGIN)), None if n is None else int(n))


def margin_for(n_subjects: int) -> float:
    """The probability margin of a calibration fitted on ``n_subjects``: 1 / (n + 2)."""
    return 1.0 / (max(int(n_subjects), 0) + 2.0)


def logit(prob, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 - p)) of probabilities clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(prob, dtype=float), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def fit_platt(scores, y) -> Platt:
    """Fit Platt scaling of ``scores`` to 0/1 labels ``y`` (smoothed targets, slope >= 0).

    With a single class in ``y`` no slope can be estimated: the calibrator returns the
    smoothed prior for every score (slope at its floor; no further margin). Otherwise the
    probability is kept inside ``[1/(n+2), 1 - 1/(n+2)]`` (``n = len(y)``).
    """
    from scipy.optimize import minimize

    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(y, dtype=int).ravel()
    if s.shape != y.shape or s.size == 0:
        raise InputError(f"Platt scaling needs one score per label; got {s.size} scores and "
                         f"{y.size} labels.")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    t = np.where(y == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
    scale = float(np.std(s)) or 1.0  # optimise on a unit scale, report on the scores' own
    u = (s - np.mean(s)) / scale

    def loss(params):
        a, b = params
        z = a * u + b
        # cross-entropy with soft targets, written stably: log(1 + e^z) - t z
        value = np.sum(np.logaddexp(0.0, z) - t * z)
        p = 1.0 / (1.0 + np.exp(-z))
        return value, np.array([np.sum((p - t) * u), np.sum(p - t)])

    prior = np.log((n_pos + 1.0) / (n_neg + 1.0))
    margin, n = margin_for(s.size), int(s.size)
    if n_pos == 0 or n_neg == 0:  # already the smoothed prior, inside (0, 1): no shrink
        return Platt(MIN_SLOPE, float(prior), 0.0, n)
    res = minimize(loss, x0=np.array([1.0, prior]), jac=True, method="L-BFGS-B",
                   bounds=[(MIN_SLOPE * scale, None), (None, None)])
    a, b = res.x
    slope = a / scale
    return Platt(float(max(slope, MIN_SLOPE)), float(b - slope * np.mean(s)), margin, n)


def calibration_note(manifests) -> str | None:
    """What a report must say when some fold's calibration rests on too few subjects
    (fewer than :data:`MIN_CALIBRATION_SUBJECTS`); None otherwise."""
    sizes = [int(c["n_fitted"]) for m in manifests or []
             for c in (m.get("calibration") or {}).values()
             if isinstance(c, dict) and c.get("n_fitted")]
    if not sizes or min(sizes) >= MIN_CALIBRATION_SUBJECTS:
        return None
    small, margin = min(sizes), margin_for(min(sizes))
    return (f"Calibration rests on few subjects: in some outer folds Platt scaling and the "
            f"operating threshold were fitted on only {small} validation subjects (fewer "
            f"than {MIN_CALIBRATION_SUBJECTS}). Probabilities are kept within "
            f"[{margin:.2f}, {1 - margin:.2f}] (1/(n+2) from each edge) and remain coarse: "
            "read them as a ranking, not as a patient's risk; a larger cohort (or "
            "`inner_folds`, which calibrates on every training subject) gives a firmer "
            "calibration.")


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """``youden`` | ``balanced`` | ``fixed:T`` | ``sensitivity:S`` -> (kind, value)."""
    text = str(rule).strip().lower()
    if text in ("youden", "balanced"):
        return text, None
    kind, sep, value = text.partition(":")
    if sep and kind in ("fixed", "sensitivity"):
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if 0.0 < v < 1.0 or (kind == "sensitivity" and v == 1.0):
            return kind, v
        raise InputError(f"`threshold_rule` {rule!r}: {kind} needs a number in (0, 1), "
                         f"e.g. {kind}:{0.5 if kind == 'fixed' else 0.9}.")
    raise InputError(f"`threshold_rule` {rule!r} is not one of youden, balanced, fixed:T "
                     "(0 < T < 1) or sensitivity:S (0 < S <= 1).")


def _candidates(p: np.ndarray) -> np.ndarray:
    """Thresholds between consecutive distinct probabilities, plus one below and above."""
    u = np.unique(p)
    mids = (u[:-1] + u[1:]) / 2.0
    return np.concatenate([[max(u[0] / 2.0, 0.0)], mids, [(u[-1] + 1.0) / 2.0]])


def _rates(p, y, thresholds):
    pred = p[None, :] >= thresholds[:, None]
    pos, neg = y == 1, y == 0
    sens = (pred & pos).sum(1) / max(pos.sum(), 1)
    spec = (~pred & neg).sum(1) / max(neg.sum(), 1)
    return sens, spec


def choose_threshold(prob, y, rule: str = "youden") -> float:
    """The operating threshold that ``rule`` picks on validation probabilities ``prob``.

    Among equally good thresholds the middle one is taken (the centre of the plateau), so
    that a few validation subjects do not push the cut to an extreme. A validation set with
    one class gives no information on the trade-off: the threshold is then 0.5.
    """
    kind, value = parse_threshold_rule(rule)
    if kind == "fixed":
        return float(value)
    p = np.asarray(prob, dtype=float).ravel()
    y = np.asarray(y, dtype=int).ravel()
    if p.size == 0 or len(np.unique(y)) < 2:
        return 0.5
    cand = _candidates(p)
    sens, spec = _rates(p, y, cand)
    if kind == "youden":
        score = sens + spec
    elif kind == "balanced":
        score = -np.abs(sens - spec) + 1e-9 * (sens + spec)
    else:  # sensitivity:S -> the highest threshold keeping sensitivity >= S
        ok = np.flatnonzero(sens >= value - 1e-12)
        return float(cand[ok.max()]) if ok.size else float(cand[0])
    best = np.flatnonzero(np.isclose(score, score.max()))
    return float(np.median(cand[best]))


def fit_calibration(scores, y, rule: str = "youden") -> tuple[Platt, float]:
    """Platt scaling of validation ``scores`` and the threshold ``rule`` picks on the
    calibrated validation probabilities."""
    platt = fit_platt(scores, y)
    return platt, float(choose_threshold(platt(scores), y, rule))


def reliability_curve(y, prob, n_bins: int = 5) -> dict:
    """Mean predicted probability against observed frequency in quantile bins."""
    y = np.asarray(y, dtype=float).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    n_bins = int(max(1, min(n_bins, np.unique(p).size)))
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, n_bins)
    return {"mean_predicted": [float(p[g].mean()) for g in groups if g.size],
            "observed": [float(y[g].mean()) for g in groups if g.size],
            "count": [int(g.size) for g in groups if g.size]}


def net_benefit(y, prob, thresholds) -> dict:
    """Decision curve: net benefit of the model, of treat-all and of treat-none.

    NB(t) = TP/n - FP/n * t / (1 - t) (Vickers & Elkin 2006), for each threshold t.
    """
    y = np.asarray(y, dtype=int).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    t = np.asarray(thresholds, dtype=float)
    n = max(y.size, 1)
    odds = t / (1.0 - t)
    pred = p[None, :] >= t[:, None]
    tp = (pred & (y == 1)).sum(1) / n
    fp = (pred & (y == 0)).sum(1) / n
    prev = float((y == 1).mean()) if y.size else 0.0
    return {"threshold": t.tolist(), "model": (tp - fp * odds).tolist(),
            "treat_all": (prev - (1 - prev) * odds).tolist(),
            "treat_none": np.zeros_like(t).tolist()}
