"""Classification metrics that respect small samples (pure numpy / scikit-learn).

* :func:`binary_metrics` - accuracy, precision, recall (sensitivity), F1, AUC,
  balanced accuracy and specificity at a probability threshold.  A fold with a
  single class has an undefined AUC (NaN), never a fabricated number.
* :func:`summarise_folds` - mean +- SD over folds and the pooled out-of-fold value.
* :func:`bootstrap_ci` - stratified subject-level bootstrap percentile CIs.
* :func:`table2` - the paper's Table 2 layout (metric rows, input-set columns).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

METRICS = ("accuracy", "precision", "recall", "f1", "auc", "balanced_accuracy", "specificity")


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict:
    """Metrics of probabilities ``prob`` against 0/1 labels ``y_true``."""
    y = np.asarray(y_true, dtype=int).ravel()
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but prob has {p.size}")
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    nan = float("nan")
    recall = tp / (tp + fn) if tp + fn else nan
    spec = tn / (tn + fp) if tn + fp else nan
    precision = tp / (tp + fp) if tp + fp else 0.0 if tp + fn else nan
    f1 = (2 * precision * recall / (precision + recall)
          if np.isfinite(precision) and np.isfinite(recall) and precision + recall > 0
          else (0.0 if np.isfinite(recall) else nan))
    auc = skm.roc_auc_score(y, p) if len(np.unique(y)) == 2 else nan
    bal = np.nanmean([recall, spec]) if np.isfinite(recall) or np.isfinite(spec) else nan
    return {"accuracy": float((pred == y).mean()) if y.size else nan,
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "auc": float(auc), "balanced_accuracy": float(bal), "specificity": float(spec),
            "tp": tp, "tn": tn, "fp": fp, "fn": fn, "n": int(y.size)}


def summarise_folds(predictions: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per input set and model: mean and SD over folds, and pooled out-of-fold metrics.

    ``predictions`` needs columns input_set, model, repeat, fold, true_label, probability.
    Pooled values average the probabilities of a subject over repeats first.
    """
    rows = []
    for (input_set, model), df in predictions.groupby(["input_set", "model"], sort=False):
        per_fold = pd.DataFrame([binary_metrics(g["true_label"], g["probability"], threshold)
                                 for _, g in df.groupby(["repeat", "fold"])])
        pooled_df = df.groupby("participant_id").agg(true_label=("true_label", "first"),
                                                     probability=("probability", "mean"))
        pooled = binary_metrics(pooled_df["true_label"], pooled_df["probability"], threshold)
        row = {"input_set": input_set, "model": model, "n_subjects": int(len(pooled_df)),
               "n_folds": int(len(per_fold))}
        for m in METRICS:
            row[f"{m}_mean"] = float(np.nanmean(per_fold[m])) if per_fold[m].notna().any() \
                else float("nan")
            row[f"{m}_sd"] = float(np.nanstd(per_fold[m], ddof=1)) \
                if per_fold[m].notna().sum() > 1 else float("nan")
            row[m] = pooled[m]
        rows.append(row)
    return pd.DataFrame(rows)


def bootstrap_ci(y_true, prob, *, metric: str = "auc", n_boot: int = 1000, alpha: float = 0.05,
                 threshold: float = 0.5, random_state=None) -> tuple[float, float]:
    """Stratified bootstrap (resampling subjects within each class) percentile CI."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if n_boot <= 0 or y.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(random_state)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size) if pos.size else pos,
                              rng.choice(neg, neg.size) if neg.size else neg])
        values[b] = binary_metrics(y[idx], p[idx], threshold)[metric]
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _fmt(value, lo=None, hi=None) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if lo is None or not np.isfinite(lo):
        return f"{value:.2f}"
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def table2(summary: pd.DataFrame, ci: pd.DataFrame | None = None,
           permutation: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's Table 2: metric rows; one column per input set (CNN) and per baseline.

    Cells hold the pooled out-of-fold value with its bootstrap 95% CI; a last row
    gives the permutation p-value of the AUC where it was computed.
    """
    columns = {}
    for _, row in summary.iterrows():
        name = row["input_set"] if row["model"] == "cnn" else f"{row['input_set']} {row['model']}"
        cells = {}
        for m in ("accuracy", "precision", "recall", "f1", "auc", "balanced_accuracy",
                  "specificity"):
            lo = hi = None
            if ci is not None and len(ci):
                hit = ci[(ci["input_set"] == row["input_set"]) & (ci["model"] == row["model"])
                         & (ci["metric"] == m)]
                if len(hit):
                    lo, hi = hit.iloc[0]["ci_low"], hit.iloc[0]["ci_high"]
            cells[m] = _fmt(row[m], lo, hi)
        cells["auc_fold_mean_sd"] = (f"{row['auc_mean']:.2f} ± {row['auc_sd']:.2f}"
                                     if np.isfinite(row["auc_mean"]) and
                                     np.isfinite(row["auc_sd"]) else "n/a")
        p = "n/a"
        if permutation is not None and len(permutation):
            hit = permutation[(permutation["input_set"] == row["input_set"])
                              & (permutation["model"] == row["model"])]
            if len(hit):
                p = f"{hit.iloc[0]['p_value']:.3f}"
        cells["permutation_p_auc"] = p
        columns[name] = cells
    table = pd.DataFrame(columns)
    table.index.name = "metric"
    return table
