"""Component statistics: responders vs non-responders (the paper's Table 3).

* :func:`component_summary` reduces each subject's stage-2 map of each
  component to one number.
* :func:`compare_groups` runs a two-sample t-test and the point-biserial
  correlation per component, optionally on a subset of subjects.
* :func:`select_components` picks the SSC components (p < threshold).

Every function takes ``subjects_idx`` so cross-validation can compute the
statistics on training subjects only; excluded subjects are never read.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from dpnbids.exceptions import DimensionError, InputError

__all__ = ["compare_groups", "component_summary", "select_components"]


def _component_masks(group_maps: np.ndarray, threshold_z: float) -> np.ndarray:
    masks = group_maps > threshold_z
    for k in np.flatnonzero(~masks.any(axis=1)):
        cut = np.quantile(group_maps[k], 0.99)
        masks[k] = group_maps[k] >= cut
        warnings.warn(f"component {k} has no voxel above z = {threshold_z}; its summary uses "
                      "its top 1% voxels instead.", RuntimeWarning, stacklevel=3)
    return masks


def component_summary(maps, group_maps, *, threshold_z: float = 2.0) -> np.ndarray:
    """Subject-level summary of stage-2 maps: mean within each thresholded group map.

    For component k, the region is the positive lobe of its group map,
    ``group_maps[k] > threshold_z`` (group maps are z-scored and sign-flipped
    so the peak is positive, as :class:`dpnbids.analysis.decomposition.GroupICA` returns them;
    they are used as given, not re-normalised). The summary of subject s is
    the mean of its stage-2 map ``maps[s, k]`` over that region: the
    subject's expression of the network where the group network is. If no
    voxel passes the threshold, the top 1% voxels of the group map are used
    and a ``RuntimeWarning`` says so.

    Parameters
    ----------
    maps : array_like, shape (S, K, V) or (K, V)
        Stage-2 maps (parameter estimates or z) of S subjects, or of one.
    group_maps : array_like, shape (K, V)
        Group maps on the same voxels.
    threshold_z : float
        Threshold on the group map.

    Returns
    -------
    ndarray, shape (S, K), or (K,) for a single (K, V) input
    """
    m = np.asarray(maps)
    g = np.asarray(group_maps, dtype=np.float64)
    single = m.ndim == 2
    if single:
        m = m[None]
    if m.ndim != 3 or g.ndim != 2 or m.shape[1:] != g.shape:
        raise DimensionError(f"maps must be (subjects, K, V) or (K, V) and group_maps (K, V) "
                             f"with the same K and V; received maps {np.shape(maps)} and "
                             f"group_maps {g.shape}.")
    masks = _component_masks(g, float(threshold_z))
    weights = masks / masks.sum(axis=1, keepdims=True)
    out = np.einsum("skv,kv->sk", m, weights.astype(m.dtype), dtype=np.float64)
    return out[0] if single else out


def _subset(summaries, labels, subjects_idx):
    x = np.asarray(summaries, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise DimensionError(f"summaries must be (subjects, components); received {x.shape}.")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DimensionError(f"labels must be 1D with one entry per subject ({x.shape[0]}); "
                             f"received shape {y.shape}.")
    if not np.isin(y, (0, 1)).all():
        raise InputError(f"labels must be 0 (non-responder) or 1 (responder); received "
                         f"values {sorted(set(np.unique(y).tolist()))}.")
    if subjects_idx is not None:
        idx = np.asarray(subjects_idx)
        if idx.dtype == bool:
            if idx.shape != y.shape:
                raise DimensionError(f"a boolean subjects_idx must have {y.shape[0]} entries; "
                                     f"received {idx.shape}.")
            idx = np.flatnonzero(idx)
        idx = idx.astype(int).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= y.shape[0]):
            raise InputError(f"subjects_idx must index 0..{y.shape[0] - 1}; received values "
                             f"from {idx.min()} to {idx.max()}.")
        if np.unique(idx).size != idx.size:
            raise InputError("subjects_idx contains repeated subjects.")
        x, y = x[idx], y[idx]
    y = y.astype(int)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 < 2 or n0 < 2:
        raise InputError(f"comparing responders with non-responders needs at least 2 of each; "
                         f"the selected subjects have {n1} responders and {n0} non-responders. "
                         "Use more subjects or fewer folds.")
    return x, y


def compare_groups(summaries, labels, *, subjects_idx=None,
                   equal_var: bool = True) -> pd.DataFrame:
    """Responders (label 1) vs non-responders (label 0) per component.

    Parameters
    ----------
    summaries : array_like, shape (S, K)
        :func:`component_summary` output.
    labels : array_like, shape (S,)
        1 = responder, 0 = non-responder.
    subjects_idx : array_like of int or bool, optional
        Restrict to these subjects (e.g. a training fold); the others are
        ignored entirely.
    equal_var : bool
        True: Student's two-sample t-test (pooled variance, as the paper);
        False: Welch's test.

    Returns
    -------
    pandas.DataFrame
        One row per component: ``component`` (index), ``t`` (positive when
        responders are higher), two-sided ``p``, ``r`` (point-biserial Pearson
        correlation between label and summary, same sign as t),
        ``mean_responders``, ``mean_nonresponders``, ``n_responders``,
        ``n_nonresponders``. A component constant across subjects gets NaN.
    """
    x, y = _subset(summaries, labels, subjects_idx)
    resp, non = x[y == 1], x[y == 0]
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        t, p = sps.ttest_ind(resp, non, axis=0, equal_var=bool(equal_var))
        xc = x - x.mean(axis=0)
        yc = y - y.mean()
        r = (yc @ xc) / (np.linalg.norm(yc) * np.linalg.norm(xc, axis=0))
    return pd.DataFrame({
        "component": np.arange(x.shape[1]),
        "t": np.asarray(t, dtype=float),
        "p": np.asarray(p, dtype=float),
        "r": np.asarray(r, dtype=float),
        "mean_responders": resp.mean(axis=0),
        "mean_nonresponders": non.mean(axis=0),
        "n_responders": resp.shape[0],
        "n_nonresponders": non.shape[0],
    })


def select_components(summaries, labels, *, p_threshold: float = 0.1, subjects_idx=None,
                      min_components: int = 1, equal_var: bool = True) -> np.ndarray:
    """Indices of the components with p < ``p_threshold`` (the SSC set).

    Statistics are from :func:`compare_groups` on ``subjects_idx`` only. If
    fewer than ``min_components`` pass, the ``min_components`` components with
    the smallest p are returned instead (so a fold never gets an empty input;
    NaN p-values rank last).

    Returns
    -------
    ndarray of int
        Selected component indices, ascending.
    """
    if not 0 < p_threshold <= 1:
        raise InputError(f"p_threshold must be in (0, 1]; received {p_threshold}.")
    table = compare_groups(summaries, labels, subjects_idx=subjects_idx, equal_var=equal_var)
    p = table["p"].to_numpy()
    chosen = np.flatnonzero(p < p_threshold)
    if chosen.size < int(min_components):
        order = np.argsort(np.where(np.isnan(p), np.inf, p), kind="stable")
        chosen = np.sort(order[: int(min_components)])
    return chosen.astype(int)
