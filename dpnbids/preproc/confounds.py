"""Confound time series with fMRIPrep's column names.

Definitions (one row per volume; "first row n/a" is written ``n/a`` in the TSV):

``trans_x, trans_y, trans_z`` (mm), ``rot_x, rot_y, rot_z`` (rad)
    Head-motion parameters as given.
``<name>_derivative1``
    Backward difference ``x[t] - x[t-1]``; first row n/a.
``<name>_power2``, ``<name>_derivative1_power2``
    Squares (Friston 24 with the motion columns).
``framewise_displacement``
    Power et al. (2012): ``sum |d trans| + 50 mm * sum |d rot|``; first row n/a.
``dvars``
    ``sqrt(mean_v (d x_v[t])^2)`` over brain-mask voxels after scaling the
    masked data to a median of 1000 (nipype's ``ComputeDVARS``, as fMRIPrep);
    first row n/a.
``std_dvars``
    ``dvars / mean_v(sd_v * sqrt(2 (1 - ar1)))`` with ``sd_v`` the robust
    (IQR / 1.349) standard deviation of each voxel and ``ar1`` the median over
    voxels of the lag-1 autocorrelation (Nichols' standardised DVARS, as
    nipype); about 1 for white noise; first row n/a.
``global_signal``, ``white_matter``, ``csf``
    Mean over the brain mask, the WM mask and the CSF mask (below).
``a_comp_cor_00`` ...
    aCompCor (Behzadi et al. 2007): voxels of the combined mask are
    high-passed by regressing a constant and a discrete cosine basis with a
    128 s cut-off (as fMRIPrep), z-scored over time, and decomposed by SVD;
    the components are the leading left singular vectors (orthonormal,
    orthogonal to the cosine basis), sign-fixed so the largest absolute value
    is positive.
``cosine00`` ...
    The discrete cosine basis used above (fMRIPrep's names).
``non_steady_state_outlier_XX``
    One-hot columns for leading non-steady-state volumes.

Tissue masks: a tissue map is thresholded at probability > 0.9 within voxels
where the BOLD has signal (nonzero temporal variance). The WM mask is eroded
by one voxel (it keeps partial-volume grey matter out); the CSF mask is not
eroded (ventricles are a few voxels wide at 2 mm). When a mask has fewer than
``min_voxels`` voxels, the ``min_voxels`` most probable voxels are used
instead (and the metadata says so). The aCompCor mask is the union of the
two.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from dpnbids.derivatives import write_tsv
from dpnbids.exceptions import DimensionError, InputError

__all__ = ["compute_confounds", "confounds_metadata", "write_confounds",
           "framewise_displacement", "compute_dvars", "acompcor", "cosine_basis",
           "read_confounds", "check_confounds_header", "expand_confounds", "derivable_columns",
           "n_censored"]

MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
_META_KEY = "dpnbids_confounds_meta"


# ----------------------------------------------------------------- pure numpy pieces
def framewise_displacement(motion_params, radius_mm: float = 50.0) -> np.ndarray:
    """Power FD from (T, 6) parameters [trans mm, rot rad]; first value NaN."""
    params = np.asarray(motion_params, dtype=float)
    if params.ndim != 2 or params.shape[1] != 6:
        raise DimensionError(f"motion parameters must be (T, 6) [3 translations mm, 3 "
                             f"rotations rad]; received shape {params.shape}.")
    d = np.abs(np.diff(params, axis=0))
    fd = d[:, :3].sum(axis=1) + radius_mm * d[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def compute_dvars(signals, *, intensity_normalization: float = 1000.0):
    """Non-standardised and standardised DVARS of (voxels, T) signals.

    Returns
    -------
    dvars, std_dvars : ndarray (T,)
        First values NaN. See the module docstring for the definitions.
    """
    x = np.asarray(signals)
    x = x[x.max(axis=1) > x.min(axis=1)].astype(np.float32)  # drop constant voxels
    if x.shape[0] == 0:
        nan = np.full(np.asarray(signals).shape[1], np.nan)
        return nan, nan.copy()
    if intensity_normalization:
        med = float(np.median(x))
        if med != 0:
            x *= np.float32(intensity_normalization / med)
    diff = np.diff(x, axis=1)
    dvars = np.sqrt(np.mean(np.square(diff, dtype=np.float64), axis=0))
    del diff
    q75, q25 = np.percentile(x, [75, 25], axis=1)
    sd = (q75 - q25) / 1.349
    x -= x.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    denom = np.einsum("vt,vt->v", x, x, dtype=np.float64)
    lag1 = np.einsum("vt,vt->v", x[:, 1:], x[:, :-1], dtype=np.float64)
    ar1 = np.median(np.where(denom > 0, lag1 / np.where(denom > 0, denom, 1), 0))
    expected = np.mean(sd * np.sqrt(2 * (1 - ar1)), dtype=np.float64)
    std = dvars / expected if expected > 0 else np.full_like(dvars, np.nan)
    pad = np.array([np.nan])
    return np.concatenate([pad, dvars]), np.concatenate([pad, std])


def cosine_basis(n_volumes: int, tr: float, cutoff_s: float = 128.0) -> np.ndarray:
    """SPM's discrete cosine high-pass basis (T, K) without the constant."""
    order = int(np.floor(2 * n_volumes * tr / cutoff_s + 1))
    n = np.arange(n_volumes)
    cols = [np.sqrt(2.0 / n_volumes) * np.cos(np.pi * (2 * n + 1) * k / (2 * n_volumes))
            for k in range(1, order)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_volumes, 0))


def acompcor(signals, basis, n_components: int = 5):
    """aCompCor of (voxels, T) signals after removing ``basis`` (T, K) and a constant.

    Returns
    -------
    components : ndarray (T, n)
    singular_values, variance_explained : ndarray (n,) and (rank,)
    """
    x = np.asarray(signals, dtype=np.float64).T  # (T, V)
    design = np.hstack([np.ones((x.shape[0], 1)), basis])
    beta, *_ = np.linalg.lstsq(design, x, rcond=None)
    x = x - design @ beta
    sd = x.std(axis=0)
    x = x[:, sd > 1e-12] / sd[sd > 1e-12]
    if x.shape[1] == 0:
        return np.zeros((x.shape[0], 0)), np.zeros(0), np.zeros(0)
    # left singular vectors from the (T, T) Gram matrix: same result as an SVD of the
    # wide (T, V) matrix at a fraction of the cost
    evals, u = np.linalg.eigh(x @ x.T)
    order = np.argsort(evals)[::-1]
    evals, u = np.clip(evals[order], 0, None), u[:, order]
    s = np.sqrt(evals)
    rank = int(np.sum(s > s[0] * 1e-6))
    var = s[:rank] ** 2 / np.sum(s[:rank] ** 2)
    n = min(n_components, rank)
    comps = u[:, :n]
    peaks = comps[np.argmax(np.abs(comps), axis=0), np.arange(n)]
    comps = comps * np.where(peaks < 0, -1.0, 1.0)
    return comps, s[:n], var


def _expansions(df: pd.DataFrame, names) -> pd.DataFrame:
    for name in names:
        d = df[name].diff()
        df[f"{name}_derivative1"] = d
        df[f"{name}_power2"] = df[name] ** 2
        df[f"{name}_derivative1_power2"] = d ** 2
    return df


def _tissue_mask(prob_img, valid: np.ndarray, name: str, *, erode: bool,
                 threshold: float = 0.9, min_voxels: int = 20):
    from scipy import ndimage

    prob = np.nan_to_num(np.asanyarray(prob_img.dataobj, dtype=np.float32))
    if prob.shape != valid.shape:
        raise DimensionError(
            f"The {name} probability map has shape {prob.shape} but the BOLD grid is "
            f"{valid.shape}. Expected the map in the same space as the BOLD; resample it "
            "with the same transforms first.")
    mask = (prob > threshold) & valid
    method = f"probability > {threshold}"
    if erode:
        eroded = ndimage.binary_erosion(mask)
        if eroded.sum() >= min_voxels:
            mask, method = eroded, method + ", eroded 1 voxel"
    if mask.sum() < min_voxels:
        score = np.where(valid, prob, -np.inf).ravel()
        n = min(min_voxels, int(np.isfinite(score).sum()))
        top = np.argsort(score)[::-1][:n]
        mask = np.zeros(valid.size, bool)
        mask[top[score[top] > 0]] = True
        mask = mask.reshape(valid.shape)
        method = f"{min_voxels} most probable voxels (too few above {threshold})"
    return mask, method


# ----------------------------------------------------------------- the table
def _add_acompcor(df, meta, data, masks, basis, n_components, highpass_cutoff_s) -> None:
    """Add the aCompCor columns (and their metadata) of the combined tissue masks to ``df``."""
    combined = np.zeros(data.shape[:3], bool)
    for m in masks.values():
        combined |= m
    comps, svals, var = acompcor(data[combined], basis, n_components)
    if comps.shape[1] < n_components:
        warnings.warn(f"aCompCor: only {comps.shape[1]} components could be extracted "
                      f"from {int(combined.sum())} voxels (asked {n_components}).",
                      UserWarning, stacklevel=3)
    cum = np.cumsum(var)
    for k in range(comps.shape[1]):
        col = f"a_comp_cor_{k:02d}"
        df[col] = comps[:, k]
        meta[col] = {"Method": "aCompCor", "Mask": "combined",
                     "Tissues": sorted(masks), "SingularValue": float(svals[k]),
                     "VarianceExplained": float(var[k]),
                     "CumulativeVarianceExplained": float(cum[k]), "Retained": True,
                     "NumberOfVoxels": int(combined.sum()),
                     "HighPassCutoff": highpass_cutoff_s}


def compute_confounds(bold_img, mask_img, *, motion_params, wm_img=None, csf_img=None,
                      tr: float, n_components: int = 5, n_dummy: int | None = None,
                      highpass_cutoff_s: float = 128.0) -> pd.DataFrame:
    """fMRIPrep-style confounds of one run (see the module docstring).

    Parameters
    ----------
    bold_img : 4D nibabel image (template space, after resampling)
    mask_img : 3D brain mask on the same grid
    motion_params : array (T, 6)
        [trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad)].
    wm_img, csf_img : 3D probability maps on the same grid, optional
        Without them the ``white_matter``, ``csf`` and aCompCor columns are
        absent.
    tr : float
        Repetition time (s).
    n_components : int
        Number of aCompCor components.
    n_dummy : int, optional
        Leading non-steady-state volumes (still in the series); ``None``
        detects them with :func:`dpnbids.preproc.signal.detect_nonsteady_states`.
    highpass_cutoff_s : float
        Cut-off of the cosine basis used before aCompCor.

    Returns
    -------
    pandas.DataFrame
        Its ``attrs`` carry the metadata read by :func:`confounds_metadata`.
    """
    from dpnbids.preproc.signal import detect_nonsteady_states

    data = np.asanyarray(bold_img.dataobj, dtype=np.float32)
    if data.ndim != 4:
        raise DimensionError(f"compute_confounds needs a 4D BOLD image; received shape "
                             f"{data.shape}.")
    n_t = data.shape[3]
    params = np.asarray(motion_params, dtype=float)
    if params.shape != (n_t, 6):
        raise DimensionError(
            f"motion parameters have shape {params.shape}; expected ({n_t}, 6) for a BOLD "
            f"series of {n_t} volumes (3 translations in mm, 3 rotations in radians).")
    mask = np.asanyarray(mask_img.dataobj) > 0.5
    if mask.shape != data.shape[:3]:
        raise DimensionError(f"brain mask shape {mask.shape} differs from the BOLD grid "
                             f"{data.shape[:3]}; resample the mask to the BOLD grid.")
    if not mask.any():
        raise InputError("compute_confounds: the brain mask is empty; check brain extraction.")
    # voxels with signal, computed only where a mask can reach (memory: no full 4D temporary)
    reach = mask.copy()
    for img in (wm_img, csf_img):
        if img is not None and img.shape[:3] == mask.shape:
            reach |= np.nan_to_num(np.asanyarray(img.dataobj, dtype=np.float32)) > 0
    valid = np.zeros(mask.shape, bool)
    sub = data[reach]
    valid[reach] = sub.max(axis=1) > sub.min(axis=1)
    del sub

    df = pd.DataFrame(params, columns=MOTION)
    meta: dict[str, dict] = {}
    signals = {"global_signal": mask}
    masks = {}
    for name, img, erode in (("white_matter", wm_img, True), ("csf", csf_img, False)):
        if img is not None:
            masks[name], method = _tissue_mask(img, valid, name, erode=erode)
            signals[name] = masks[name]
            meta[name] = {"Method": "mean", "Mask": method,
                          "NumberOfVoxels": int(masks[name].sum())}
    for name, m in signals.items():
        df[name] = data[m].mean(axis=0, dtype=np.float64) if m.any() else np.nan
    df = _expansions(df, MOTION + list(signals))
    df["framewise_displacement"] = framewise_displacement(params)
    dvars, std_dvars = compute_dvars(data[mask])
    df["std_dvars"] = std_dvars
    df["dvars"] = dvars
    basis = cosine_basis(n_t, tr, highpass_cutoff_s)
    for k in range(basis.shape[1]):
        df[f"cosine{k:02d}"] = basis[:, k]
    if masks:
        _add_acompcor(df, meta, data, masks, basis, n_components, highpass_cutoff_s)
    if n_dummy is None:
        n_dummy = detect_nonsteady_states(data[mask])
    for k in range(int(n_dummy)):
        col = f"non_steady_state_outlier_{k:02d}"
        df[col] = np.zeros(n_t)
        df.loc[k, col] = 1.0
    df.attrs[_META_KEY] = meta
    return df


_DESCRIPTIONS = {
    "framewise_displacement": {"Description": "Framewise displacement (Power et al. 2012)",
                               "Method": "sum |d translations| + 50 mm * sum |d rotations|",
                               "Radius": 50.0, "Units": "mm"},
    "dvars": {"Description": "DVARS: RMS over brain voxels of the volume-to-volume "
                             "difference, data scaled to median 1000", "Units": "arbitrary"},
    "std_dvars": {"Description": "Standardised DVARS (Nichols 2013): DVARS divided by its "
                                 "expected value under temporal stationarity (AR(1))"},
    "global_signal": {"Description": "Mean BOLD signal in the brain mask", "Mask": "brain"},
    "white_matter": {"Description": "Mean BOLD signal in the white-matter mask"},
    "csf": {"Description": "Mean BOLD signal in the CSF mask"},
}


def confounds_metadata(df: pd.DataFrame) -> dict:
    """The confounds JSON sidecar: one entry per described column (fMRIPrep style)."""
    meta = {}
    stored = df.attrs.get(_META_KEY, {})
    for col in df.columns:
        entry = dict(_DESCRIPTIONS.get(col, {}))
        base = col.split("_derivative1")[0].split("_power2")[0]
        if col in MOTION:
            entry = {"Description": f"Head-motion parameter {col}",
                     "Units": "mm" if col.startswith("trans") else "rad"}
        elif col != base:
            kind = ("derivative" if "_derivative1" in col else "") + (
                " squared" if col.endswith("_power2") else "")
            entry = {"Description": f"{kind.strip()} of {base}"}
        elif col.startswith("cosine"):
            entry = {"Description": "Discrete cosine basis (SPM) for high-pass filtering",
                     "Method": "DCT", "HighPassCutoff": 128.0}
        elif col.startswith("non_steady_state_outlier"):
            entry = {"Description": "Leading non-steady-state volume (one-hot)"}
        entry.update(stored.get(col, {}))
        if entry:
            meta[col] = entry
    return meta


def write_confounds(df: pd.DataFrame, tsv_path) -> Path:
    """Write a tab-separated confounds file with ``n/a`` for missing values (atomically)."""
    return write_tsv(df, tsv_path)


# ----------------------------------------------------------------- reading fMRIPrep tables
#: Suffixes of fMRIPrep's expansion columns, longest first (so that
#: ``x_derivative1_power2`` is not read as ``x_derivative1`` + ``_power2``).
EXPANSION_SUFFIXES = ("_derivative1_power2", "_derivative1", "_power2")


def _expansion_base(name: str) -> tuple[str, str] | None:
    """``(base, suffix)`` when ``name`` is an expansion column, else None."""
    for suffix in EXPANSION_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)], suffix
    return None


def derivable_columns(columns) -> list[str]:
    """Expansion columns absent from ``columns`` whose base column is present.

    Parameters
    ----------
    columns : iterable of str
        Header of a confounds table.

    Returns
    -------
    list of str
        ``<x>_derivative1``, ``<x>_power2`` and ``<x>_derivative1_power2`` for
        every base column ``x`` (itself not an expansion) that lacks them, in
        header order.
    """
    have = list(columns)
    present = set(have)
    out = []
    for col in have:
        if _expansion_base(col) is not None:
            continue
        out += [f"{col}{s}" for s in ("_derivative1", "_power2", "_derivative1_power2")
                if f"{col}{s}" not in present]
    return out


def expand_confounds(confounds: pd.DataFrame, wanted) -> tuple[pd.DataFrame, list[str]]:
    """Add the ``wanted`` expansion columns that are absent but computable.

    fMRIPrep's definitions (niworkflows ``ExpandModel``): ``x_derivative1`` is
    the backward difference ``x[t] - x[t-1]`` with NaN in the first row;
    ``x_power2`` is ``x ** 2``; ``x_derivative1_power2`` is the square of the
    derivative (NaN first row). Columns already in the table are never
    recomputed.

    Parameters
    ----------
    confounds : pandas.DataFrame
    wanted : iterable of str
        Columns the caller needs (e.g. :func:`dpnbids.preproc.denoise.strategy_columns`).

    Returns
    -------
    confounds : pandas.DataFrame
        A copy with the computed columns appended (the input when none are).
    notes : list of str
        One sentence per base column that had columns computed (for the log).
    """
    added: dict[str, list[str]] = {}
    new = {}
    for col in wanted:
        if col in confounds.columns or col in new:
            continue
        parsed = _expansion_base(col)
        if parsed is None or parsed[0] not in confounds.columns:
            continue
        base, suffix = parsed
        x = confounds[base].to_numpy(dtype=float)
        deriv = np.concatenate([[np.nan], np.diff(x)]) if x.size else x
        new[col] = {"_derivative1": deriv, "_power2": x ** 2,
                    "_derivative1_power2": deriv ** 2}[suffix]
        added.setdefault(base, []).append(col)
    if not new:
        return confounds, []
    out = pd.concat([confounds, pd.DataFrame(new, index=confounds.index)], axis=1)
    notes = [f"confounds table lacks {cols}; computed them from {base!r} as fMRIPrep does "
             "(backward difference with n/a first row; squares)" for base, cols in added.items()]
    return out, notes


def _strategy_needs(strategy, header: pd.DataFrame, columns, confounds_meta) -> list[str]:
    """Columns ``strategy`` regresses, counting computable expansions as present."""
    from dpnbids.preproc.denoise import strategy_columns

    return strategy_columns(strategy, header, columns=columns, confounds_meta=confounds_meta,
                            computable=derivable_columns(header.columns))


def check_confounds_header(tsv_path, strategy, *, columns=None,
                           confounds_meta: dict | None = None) -> list[str]:
    """Check, from the header alone, that a confounds TSV serves a denoising strategy.

    Expansion columns (``_derivative1``, ``_power2``, ``_derivative1_power2``)
    that are absent but whose base column is present count as available:
    :func:`read_confounds` computes them.

    Parameters
    ----------
    tsv_path : path
        fMRIPrep ``*_desc-confounds_timeseries.tsv``.
    strategy : str
        A key of :data:`dpnbids.preproc.denoise.STRATEGIES`.
    columns : list of str, optional
        Custom columns (replace the strategy's).
    confounds_meta : dict, optional
        The JSON sidecar; read next to ``tsv_path`` when None.

    Returns
    -------
    list of str
        The columns the strategy will regress.

    Raises
    ------
    InputError
        Naming the file and the columns that are neither present nor computable.
    """
    path = Path(str(tsv_path))
    if confounds_meta is None:
        confounds_meta = _read_sidecar(path)
    header = pd.read_csv(path, sep="\t", nrows=0)
    try:
        return _strategy_needs(strategy, header, columns, confounds_meta)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


def _read_sidecar(tsv_path: Path) -> dict:
    import json

    sidecar = Path(str(tsv_path)[:-4] + ".json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def read_confounds(tsv_path, *, strategy=None, columns=None,
                   confounds_meta: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read an fMRIPrep confounds TSV, computing expansion columns a strategy needs.

    ``n/a`` is read as NaN. When ``strategy`` (or ``columns``) is given, its
    expansion columns that the table lacks but can be computed from their base
    column are added (:func:`expand_confounds`), and a missing column that
    cannot be computed raises. Without a strategy the table is returned as read.

    Parameters
    ----------
    tsv_path : path
    strategy : str, optional
        A key of :data:`dpnbids.preproc.denoise.STRATEGIES`.
    columns : list of str, optional
        Custom columns (replace the strategy's).
    confounds_meta : dict, optional
        The JSON sidecar (aCompCor masks); read next to ``tsv_path`` when None.

    Returns
    -------
    confounds : pandas.DataFrame
    notes : list of str
        What was computed, one sentence per base column (for the log).
    """
    path = Path(str(tsv_path))
    confounds = pd.read_csv(path, sep="\t", na_values=["n/a"])
    if strategy is None and columns is None:
        return confounds, []
    if confounds_meta is None:
        confounds_meta = _read_sidecar(path)
    try:
        wanted = _strategy_needs(strategy, confounds.iloc[:0], columns, confounds_meta)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    confounds, notes = expand_confounds(confounds, wanted)
    return confounds, [f"{path.name}: {n}" for n in notes]


def n_censored(confounds_tsv_path, fd_thresh) -> int:
    """Number of volumes :func:`dpnbids.preproc.denoise.censor_mask` would censor.

    Reads only the ``framewise_displacement`` and ``motion_outlierXX`` columns,
    so input checks can refuse a run with too few volumes left before any
    computing.

    Parameters
    ----------
    confounds_tsv_path : path
        A confounds TSV (fMRIPrep's or dpnbids').
    fd_thresh : float or None
        Threshold in mm; None or 0: censoring off (returns 0).

    Returns
    -------
    int
    """
    from dpnbids.preproc.denoise import censor_mask

    if fd_thresh is None or fd_thresh == 0:
        return 0
    path = Path(str(confounds_tsv_path))
    table = pd.read_csv(path, sep="\t", na_values=["n/a"], usecols=lambda c: (
        c == "framewise_displacement" or c.startswith("motion_outlier")))
    try:
        return int(censor_mask(table, fd_thresh).sum())
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
