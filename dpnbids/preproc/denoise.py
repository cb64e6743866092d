"""Denoising: confound regression, scrubbing, censoring and band-pass of one run.

Pure functions on nibabel images, numpy arrays and confounds tables; nipype
wraps them in :mod:`dpnbids.interfaces`. The temporal filters they use are in
:mod:`dpnbids.preproc.signal`.

Denoising strategies (:data:`STRATEGIES`) name confound columns of an
fMRIPrep-style confounds table (see :mod:`dpnbids.preproc.confounds`):

``"conn"``
    CONN's default denoising: 6 motion parameters and their first
    derivatives (12), 5 aCompCor components of the combined WM+CSF mask, and
    scrubbing as spike regressors for volumes flagged by ART's "intermediate"
    thresholds (framewise displacement > 0.9 mm or a global-signal change with
    |z| > 5). CONN extracts 5 components from WM and 5 from CSF separately;
    we use fMRIPrep's 5 combined-mask components, so fMRIPrep input works
    unchanged.
``"acompcor"``
    12 motion parameters (6 + derivatives) and 5 aCompCor components, no
    scrubbing.
``"24p"``
    Friston 24: 6 motion parameters, their derivatives, and the squares of
    both.
``"minimal"``
    The 6 motion parameters.
``"none"``
    No confound regression (detrending and band-pass only).

All strategies also regress any ``non_steady_state_outlierXX`` column
present (fMRIPrep 23 spells them ``non_steady_state_outlier00``, dpnbids'
own table ``non_steady_state_outlier_00``; both are matched), as
nilearn's ``load_confounds`` does. Custom column lists are accepted through
``denoise(..., columns=[...])``.

Censoring (``--fd-thresh``, XCP-D style, off by default) is separate from
the strategies' spike regressors: :func:`censor_mask` flags volumes with
framewise displacement above the threshold and those of fMRIPrep's
``motion_outlierXX`` spike columns, and ``denoise(..., censor=mask)``
interpolates them before filtering and drops them from its output.
"""
from __future__ import annotations

import re
import warnings

import nibabel as nib
import numpy as np
import pandas as pd

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.preproc.signal import band_mask, fft_bandpass, interpolate_censored

__all__ = ["STRATEGIES", "SCRUB_THRESHOLDS", "MOTION", "strategy_columns", "censor_mask",
           "percent_signal_change", "denoise"]


MOTION = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]


_MOTION12 = MOTION + [f"{c}_derivative1" for c in MOTION]


_ACOMPCOR5 = [f"a_comp_cor_{i:02d}" for i in range(5)]


#: Strategy name -> confound columns (see the module docstring).
STRATEGIES: dict[str, list[str]] = {
    "conn": _MOTION12 + _ACOMPCOR5,
    "acompcor": _MOTION12 + _ACOMPCOR5,
    "24p": _MOTION12 + [f"{c}_power2" for c in _MOTION12],
    "minimal": list(MOTION),
    "none": [],
}


#: Strategy name -> scrubbing thresholds (ART "intermediate": FD mm, |z| of the
#: global-signal change). Strategies not listed do no scrubbing.
SCRUB_THRESHOLDS: dict[str, dict[str, float]] = {
    "conn": {"framewise_displacement": 0.9, "global_signal_z": 5.0},
}


_ACOMPCOR_RE = re.compile(r"^a_comp_cor_\d+$")


_NONSTEADY_RE = re.compile(r"^non_steady_state_outlier_?\d+$")


def _combined_acompcor(confounds: pd.DataFrame, meta: dict | None, n: int = 5) -> list[str]:
    """First ``n`` combined-mask aCompCor columns, using fMRIPrep's JSON when given."""
    cols = sorted(c for c in confounds.columns if _ACOMPCOR_RE.match(c))
    if meta:
        combined = [c for c in cols
                    if str(meta.get(c, {}).get("Mask", "combined")).lower() == "combined"
                    and meta.get(c, {}).get("Retained", True)]
        if combined:
            cols = combined
    return cols[:n]


def strategy_columns(strategy, confounds: pd.DataFrame, *, columns=None,
                     confounds_meta: dict | None = None, computable=()) -> list[str]:
    """Columns a strategy regresses (custom ``columns`` win); raises on missing ones.

    ``computable`` names columns absent from ``confounds`` that the caller can
    compute (derivatives and squares, see
    :func:`dpnbids.preproc.confounds.read_confounds`); they count as present.
    """
    if columns is not None:
        wanted = list(columns)
    elif strategy in STRATEGIES:
        wanted = list(STRATEGIES[strategy])
        if any(c.startswith("a_comp_cor_") for c in wanted):
            acc = _combined_acompcor(confounds, confounds_meta)
            wanted = [c for c in wanted if not c.startswith("a_comp_cor_")]
            wanted += acc if len(acc) == 5 else _ACOMPCOR5
    else:
        raise InputError(f"Unknown denoising strategy {strategy!r}. Expected one of "
                         f"{sorted(STRATEGIES)}, or pass columns=[...].")
    have = set(confounds.columns) | set(computable)
    missing = [c for c in wanted if c not in have]
    if missing:
        who = ("Custom confound columns need" if columns is not None else
               f"Denoising strategy {strategy!r} needs confound columns")
        raise InputError(
            f"{who} {missing} that the "
            f"confounds table lacks. Available columns: {list(confounds.columns)}. Choose "
            "another `denoise_strategy`, or regenerate the confounds (fMRIPrep >= 20.2 or "
            "dpnbids' own) so that they include these columns.")
    wanted += [c for c in confounds.columns
               if _NONSTEADY_RE.match(str(c)) and c not in wanted]
    return wanted


def _scrub_regressors(confounds: pd.DataFrame, thresholds: dict) -> np.ndarray:
    n = len(confounds)
    flagged = np.zeros(n, bool)
    fd_thr = thresholds.get("framewise_displacement")
    if fd_thr is not None and "framewise_displacement" in confounds:
        fd = confounds["framewise_displacement"].to_numpy(dtype=float)
        flagged |= np.nan_to_num(fd) > fd_thr
    z_thr = thresholds.get("global_signal_z")
    if z_thr is not None and "global_signal" in confounds:
        d = np.diff(confounds["global_signal"].to_numpy(dtype=float), prepend=np.nan)
        sd = np.nanstd(d)
        if sd > 0:
            z = np.abs((d - np.nanmean(d)) / sd)
            flagged |= np.nan_to_num(z) > z_thr
    idx = np.flatnonzero(flagged)
    spikes = np.zeros((n, idx.size))
    spikes[idx, np.arange(idx.size)] = 1.0
    return spikes


_MOTION_OUTLIER_RE = re.compile(r"^motion_outlier_?\d+$")


def censor_mask(confounds: pd.DataFrame, fd_thresh: float | None) -> np.ndarray:
    """Volumes to censor (True) for a framewise-displacement threshold, XCP-D style.

    A volume is censored when its ``framewise_displacement`` exceeds
    ``fd_thresh`` (mm; the first row's ``n/a`` is never censored) or when one
    of fMRIPrep's ``motion_outlierXX`` spike columns flags it (fMRIPrep flags FD
    > 0.5 mm or standardised DVARS > 1.5). The spike columns are honoured
    whenever censoring is on, whatever the threshold.

    Parameters
    ----------
    confounds : pandas.DataFrame
        One row per volume.
    fd_thresh : float or None
        Threshold in mm; None or 0 turns censoring off.

    Returns
    -------
    ndarray of bool, shape (n_volumes,)
        All False when censoring is off.
    """
    n = len(confounds)
    if fd_thresh is None or fd_thresh == 0:
        return np.zeros(n, bool)
    if not np.isfinite(fd_thresh) or fd_thresh < 0:
        raise InputError(f"fd_thresh must be a positive number of mm (0 or None: off); "
                         f"received {fd_thresh}.")
    if "framewise_displacement" not in confounds:
        raise InputError(
            "Censoring by framewise displacement needs a 'framewise_displacement' column, "
            f"which the confounds table lacks (columns: {list(confounds.columns)}). Drop "
            "`fd_thresh`, or regenerate the confounds with fMRIPrep or dpnbids.")
    fd = confounds["framewise_displacement"].to_numpy(dtype=float)
    mask = np.nan_to_num(fd, nan=0.0) > float(fd_thresh)
    for col in confounds.columns:
        if _MOTION_OUTLIER_RE.match(str(col)):
            mask |= np.nan_to_num(confounds[col].to_numpy(dtype=float)) > 0.5
    return mask


def _bold_and_mask(img, mask_img, caller: str):
    """(float32 4D data, boolean mask) after checking they share one grid."""
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim != 4:
        raise DimensionError(f"{caller} needs a 4D image; received shape {data.shape}.")
    mask = np.asanyarray(mask_img.dataobj) > 0.5
    if mask.shape != data.shape[:3]:
        raise DimensionError(f"Mask shape {mask.shape} differs from the BOLD grid "
                             f"{data.shape[:3]}; resample the mask to the BOLD grid.")
    if not np.allclose(mask_img.affine, img.affine, atol=1e-3):
        raise DimensionError("The mask and the BOLD series have different affines; "
                             "resample the mask onto the BOLD grid.")
    if not mask.any():
        raise InputError(f"{caller}: the brain mask is empty; check the mask.")
    return data, mask


def percent_signal_change(img, mask_img, *, min_fraction: float = 0.1):
    """Scale a BOLD series to percent signal change, voxel by voxel (CONN's BOLD units).

    ``100 * (x - mean_t x) / mean_t x`` inside the mask. Voxels whose temporal mean
    is below ``min_fraction`` of the median in-mask mean (edges, dropout, air) are
    set to zero rather than amplified. The result is free of scanner gain and of
    the baseline intensity, so dual-regression amplitudes are comparable across
    subjects and sites (the classifier's input).

    Returns
    -------
    nibabel.Nifti1Image
        float32, zeros outside the mask.
    """
    data, mask = _bold_and_mask(img, mask_img, "percent_signal_change")
    mean = data.mean(axis=3)
    inside = mean[mask]
    if not inside.size or not np.any(inside > 0):
        raise InputError("percent_signal_change: the BOLD series has no positive signal "
                         "inside the brain mask; check the mask and the input scaling.")
    floor = min_fraction * float(np.median(inside[inside > 0]))
    good = mask & (mean > floor)
    out = np.zeros_like(data)
    out[good] = 100.0 * (data[good] - mean[good, None]) / mean[good, None]
    res = nib.Nifti1Image(out, img.affine, img.header)
    res.set_data_dtype(np.float32)
    return res


def denoise(img, confounds: pd.DataFrame, mask_img, tr: float, *, strategy: str = "conn",
            columns=None, confounds_meta: dict | None = None, low_pass=0.09,
            high_pass=0.008, detrend: bool = True, standardize=False,
            scrub: bool | None = None, filter: str = "fft", censor=None):
    """Confound regression and band-pass filtering with ``nilearn.signal.clean``.

    Parameters
    ----------
    img : 4D nibabel image
    confounds : pandas.DataFrame
        fMRIPrep-style confounds, one row per volume (``n/a`` read as NaN; NaN
        is set to 0, which only concerns the first row of derivatives).
    mask_img : 3D nibabel image on the same grid
    tr : float
        Repetition time (s).
    strategy : str
        A key of :data:`STRATEGIES`.
    columns : list of str, optional
        Custom confound columns (replaces the strategy's list).
    confounds_meta : dict, optional
        fMRIPrep's confounds JSON; used to pick the combined-mask aCompCor
        components.
    low_pass, high_pass : float or None
        Band edges in Hz (CONN: 0.008-0.09). A low-pass at or above Nyquist
        is dropped with a warning.
    detrend : bool
    standardize : False or str
        Passed to ``nilearn.signal.clean``.
    scrub : bool, optional
        Add spike regressors (:data:`SCRUB_THRESHOLDS`); default: as the
        strategy says.
    filter : "fft" or "butterworth"
        ``"fft"`` (default): CONN's filter (:func:`fft_bandpass`) applied to
        the detrended data and confounds, then the band-limited confounds are
        regressed out with ``nilearn.signal.clean`` (CONN's simultaneous
        regression and band-pass); exact and free of edge transients on short
        runs. ``"butterworth"``: nilearn's own filter inside ``clean``.
    censor : array of bool (T,), optional
        Volumes to censor (True), e.g. from :func:`censor_mask`. As XCP-D does,
        the censored volumes of the data and of the confounds are replaced by
        a cubic spline through the retained volumes
        (:func:`interpolate_censored`), regression and band-pass run on the
        full, evenly sampled series, and the censored volumes are then
        dropped: the output has ``T - censor.sum()`` volumes. Regressors that
        are nonzero only on censored volumes (spikes) are dropped first. None
        or all False: no censoring (the result is unchanged).

    Returns
    -------
    nibabel.Nifti1Image
        float32 denoised series, zeros outside the mask; with ``censor``, only
        the retained volumes.
    """
    data, mask = _bold_and_mask(img, mask_img, "denoise")
    n_t = data.shape[3]
    regs, censor = _regressors(confounds, n_t, strategy=strategy, columns=columns,
                               confounds_meta=confounds_meta, scrub=scrub, censor=censor)
    high_pass, low_pass = _checked_band(regs, n_t, tr, high_pass, low_pass)
    if filter not in ("fft", "butterworth"):
        raise InputError(f"Unknown filter {filter!r}; expected 'fft' or 'butterworth'.")
    cleaned = _clean(data[mask].T.astype(np.float64), regs, tr, censor=censor,
                     high_pass=high_pass, low_pass=low_pass, detrend=detrend,
                     standardize=standardize, filter=filter)
    out = np.zeros(data.shape[:3] + (cleaned.shape[0],), np.float32)
    out[mask] = cleaned.T.astype(np.float32)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    result = nib.Nifti1Image(out, img.affine, header)
    result.header.set_slope_inter(1.0, 0.0)
    return result


def _regressors(confounds, n_t, *, strategy, columns, confounds_meta, scrub, censor):
    """The confound matrix (T, R) of :func:`denoise`, and the censor mask (None: none)."""
    if len(confounds) != n_t:
        raise DimensionError(
            f"The confounds table has {len(confounds)} rows but the BOLD series has {n_t} "
            "volumes. Expected one row per volume; were dummy scans removed from one only?")
    cols = strategy_columns(strategy, confounds, columns=columns, confounds_meta=confounds_meta)
    regs = confounds[cols].to_numpy(dtype=float) if cols else np.zeros((n_t, 0))
    regs = np.nan_to_num(regs, nan=0.0)
    if scrub is None:
        scrub = strategy in SCRUB_THRESHOLDS and columns is None
    if scrub:
        regs = np.hstack([regs, _scrub_regressors(confounds, SCRUB_THRESHOLDS.get(
            strategy, SCRUB_THRESHOLDS["conn"]))])
    if censor is not None:
        censor = np.asarray(censor, bool).ravel()
        if censor.size != n_t:
            raise DimensionError(f"The censor mask has {censor.size} entries but the BOLD "
                                 f"series has {n_t} volumes; expected one per volume.")
        censor = censor if censor.any() else None
    if censor is not None:
        support = regs != 0
        only_censored = support.any(axis=0) & ~support[~censor].any(axis=0)
        regs = regs[:, ~only_censored]
        n_kept = int((~censor).sum())
        if n_kept <= regs.shape[1] + 2:
            raise InputError(
                f"denoise: censoring leaves {n_kept} of {n_t} volumes for {regs.shape[1]} "
                "confound regressors. Raise `fd_thresh`, use a lighter `denoise_strategy`, "
                "or exclude this run.")
    if regs.shape[1] >= n_t - 2:
        raise InputError(
            f"denoise: {regs.shape[1]} confound regressors for {n_t} volumes leave no degrees "
            "of freedom. Use a lighter `denoise_strategy` or a longer run.")
    return regs, censor


def _checked_band(regs, n_t, tr, high_pass, low_pass):
    """Band edges :func:`denoise` applies; refuse regressors that fill the band."""
    nyquist = 0.5 / tr
    if low_pass is not None and low_pass >= nyquist:
        warnings.warn(f"low_pass {low_pass} Hz is at or above Nyquist ({nyquist:g} Hz for "
                      f"TR {tr:g} s); the low-pass is not applied.", UserWarning, stacklevel=3)
        low_pass = None
    if high_pass is not None and high_pass <= 0:
        high_pass = None
    # degrees of freedom left in the band (bins of the mirror-padded spectrum)
    in_band = band_mask(n_t, tr, high_pass, low_pass)
    band_dof = int(in_band.sum()) if (low_pass is not None or high_pass is not None) else n_t
    if regs.shape[1] and np.linalg.matrix_rank(regs) >= band_dof - 2:
        raise InputError(
            f"denoise: {regs.shape[1]} confound regressors (rank "
            f"{np.linalg.matrix_rank(regs)}) for {band_dof} degrees of freedom in the "
            f"{high_pass}-{low_pass} Hz band ({n_t} volumes, TR {tr:g} s) would remove all "
            "signal. Use a lighter `denoise_strategy` (e.g. 'minimal') or a longer run.")
    return high_pass, low_pass


def _clean(signals, regs, tr, *, censor, high_pass, low_pass, detrend, standardize, filter):
    """Regression and band-pass of (T, V) ``signals`` (see :func:`denoise`)."""
    from nilearn.signal import clean

    if standardize is False:
        standardize = None  # nilearn >= 0.14 spelling of "no standardisation"
    if censor is not None:
        signals = interpolate_censored(signals, censor)
        regs = interpolate_censored(regs, censor) if regs.shape[1] else regs
    band = low_pass is not None or high_pass is not None
    if filter == "fft" and band:
        from scipy.signal import detrend as _detrend

        if detrend:
            signals = _detrend(signals, axis=0, type="linear")
            regs = _detrend(regs, axis=0, type="linear") if regs.shape[1] else regs
        signals = fft_bandpass(signals, tr, high_pass=high_pass, low_pass=low_pass)
        if regs.shape[1]:
            regs = fft_bandpass(regs, tr, high_pass=high_pass, low_pass=low_pass)
            regs = regs[:, regs.std(axis=0) > 1e-12 * max(1.0, np.abs(regs).max())]
        cleaned = clean(signals, confounds=regs if regs.shape[1] else None, t_r=float(tr),
                        detrend=False, standardize=standardize, standardize_confounds=True,
                        filter=False)
    else:
        cleaned = clean(signals, confounds=regs if regs.shape[1] else None, t_r=float(tr),
                        detrend=detrend, standardize=standardize, standardize_confounds=True,
                        filter="butterworth" if band else False, low_pass=low_pass,
                        high_pass=high_pass)
    return cleaned[~censor] if censor is not None else cleaned
