"""Temporal signal steps: non-steady states, slice timing, smoothing, denoising.

Pure functions on nibabel images and numpy arrays; nipype wraps them in
:mod:`dpnbids.interfaces`.

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

__all__ = ["STRATEGIES", "SCRUB_THRESHOLDS", "detect_nonsteady_states",
           "slice_timing_from_order", "slice_time_correct", "smooth", "denoise", "fft_bandpass",
           "strategy_columns", "censor_mask", "interpolate_censored"]

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


# ----------------------------------------------------------------- non-steady states
def _as_4d_array(data_or_img) -> np.ndarray:
    if isinstance(data_or_img, (str,)) or hasattr(data_or_img, "dataobj"):
        img = nib.load(data_or_img) if isinstance(data_or_img, str) else data_or_img
        return np.asanyarray(img.dataobj, dtype=np.float32)
    return np.asarray(data_or_img, dtype=np.float32)


def detect_nonsteady_states(data_or_img, *, max_dummies: int = 10, window: int = 50,
                            threshold: float = 3.5) -> int:
    """Number of leading non-steady-state volumes.

    The global signal (mean over the brighter half of the voxels, which keeps
    background noise out) of the first ``window`` volumes is scored with the
    modified z-score of Iglewicz & Hoaglin, ``0.6745 |x - median| / MAD``;
    the count is the run of leading volumes whose score exceeds ``threshold``.
    This is nipype's ``NonSteadyStateDetector`` (used by fMRIPrep), made
    robust to constant series (MAD = 0) and capped at ``max_dummies``.

    Parameters
    ----------
    data_or_img : array (x, y, z, t) or (voxels, t), or a 4D image
    max_dummies : int
        Largest count returned.
    window : int
        Number of leading volumes examined.
    threshold : float
        Modified z-score above which a volume is an outlier.

    Returns
    -------
    int
    """
    data = _as_4d_array(data_or_img)
    if data.ndim < 2:
        raise DimensionError(f"detect_nonsteady_states needs a 4D image or a (voxels, time) "
                             f"array; received shape {data.shape}.")
    data = data.reshape(-1, data.shape[-1])[:, :window]
    if data.shape[1] < 3:
        return 0
    mean = data.mean(axis=1)
    keep = mean >= np.median(mean) if np.any(mean != mean[0]) else np.ones(mean.shape, bool)
    gs = data[keep].mean(axis=0).astype(np.float64)
    dev = np.abs(gs - np.median(gs))
    mad = np.median(dev)
    if mad <= 0:
        mean_ad = np.mean(dev)
        if mean_ad <= 0:
            return 0
        score = dev / (1.253314 * mean_ad)  # Iglewicz & Hoaglin's MAD = 0 fallback
    else:
        score = 0.6745 * dev / mad
    n = 0
    for value in score:
        if value <= threshold or n >= max_dummies:
            break
        n += 1
    return int(n)


# ----------------------------------------------------------------- slice timing
def slice_timing_from_order(n_slices: int, tr: float, order: str = "ascending") -> list[float]:
    """Slice acquisition times (s), one per slice index along the slice axis.

    Slices are acquired at regular steps of ``tr / n_slices`` (SPM's
    convention: TA = TR - TR/n).

    ``"ascending"``: slice 0 first. ``"descending"``: last slice first.
    ``"interleaved"``: even indices first (0, 2, 4, ...), then odd (1, 3, ...),
    i.e. SPM's "interleaved (bottom-up)" 1, 3, 5, ... in 1-based numbers.
    Siemens scanners start even-count interleaved acquisitions with 1-based
    slice 2; give ``SliceTiming`` in the sidecar for such data.
    """
    if int(n_slices) < 1:
        raise InputError(f"slice_timing_from_order: n_slices must be >= 1; received {n_slices}.")
    if not tr or tr <= 0:
        raise InputError(f"slice_timing_from_order: tr must be positive seconds; received {tr}.")
    n = int(n_slices)
    if order == "ascending":
        acq = list(range(n))
    elif order == "descending":
        acq = list(range(n - 1, -1, -1))
    elif order == "interleaved":
        acq = list(range(0, n, 2)) + list(range(1, n, 2))
    else:
        raise InputError(f"Unknown slice order {order!r}. Expected one of 'ascending', "
                         "'descending', 'interleaved'; or give SliceTiming in the JSON sidecar.")
    times = np.empty(n)
    times[acq] = np.arange(n) * (float(tr) / n)
    return [float(t) for t in times]


def _fourier_shift(ts: np.ndarray, shift: float) -> np.ndarray:
    """Values of ``ts`` (..., T) at sample positions ``n + shift`` (mirror padded)."""
    T = ts.shape[-1]
    padded = np.concatenate([ts, ts[..., ::-1]], axis=-1)  # continuous periodic extension
    L = padded.shape[-1]
    spec = np.fft.rfft(padded, axis=-1)
    freqs = np.fft.rfftfreq(L)
    phase = np.exp(2j * np.pi * freqs * shift)
    if L % 2 == 0:  # keep the Nyquist bin real
        phase[-1] = np.cos(np.pi * shift)
    return np.fft.irfft(spec * phase, n=L, axis=-1)[..., :T]


def _cubic_shift(ts: np.ndarray, shift: float) -> np.ndarray:
    from scipy.interpolate import CubicSpline

    T = ts.shape[-1]
    x = np.arange(T, dtype=float)
    spline = CubicSpline(x, ts, axis=-1, bc_type="not-a-knot", extrapolate=True)
    return spline(np.clip(x + shift, 0, T - 1))


def slice_time_correct(img, slice_timing, tr: float, *, slice_axis: int = 2,
                       reference="middle", method: str = "fourier",
                       slice_encoding_direction: str | None = None):
    """Interpolate every slice's time series to a common reference time.

    Slice ``s`` of volume ``n`` was acquired at ``n * tr + slice_timing[s]``;
    the output holds each voxel's value at ``n * tr + t_ref``.

    Parameters
    ----------
    img : 4D nibabel image
    slice_timing : sequence of float
        Acquisition time of each slice (s), as BIDS ``SliceTiming``.
    tr : float
        Repetition time (s).
    slice_axis : int
        Voxel axis along which the slices lie (BIDS ``SliceEncodingDirection``
        k = 2).
    reference : "middle", "first" or float
        ``"middle"``: halfway between the earliest and latest slice time (as
        fMRIPrep); ``"first"``: the earliest; a float is a time in seconds.
    method : "fourier" or "cubic"
        Fourier phase shift on a mirror-padded series (SPM's sinc
        interpolation) or cubic spline (edges held).
    slice_encoding_direction : "i", "j", "k", "i-", "j-", "k-", optional
        BIDS ``SliceEncodingDirection``; when given it sets ``slice_axis``, and
        a trailing ``-`` means the first ``SliceTiming`` entry is the last
        slice (the list is reversed), as BIDS specifies.

    Returns
    -------
    nibabel.Nifti1Image
        float32, same grid and header.
    """
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim != 4:
        raise DimensionError(f"slice_time_correct needs a 4D image; received shape {data.shape}.")
    if slice_axis not in (0, 1, 2):
        raise InputError(f"slice_axis must be 0, 1 or 2; received {slice_axis}.")
    st = np.asarray(slice_timing, dtype=float).ravel()
    if slice_encoding_direction is not None:
        direction = str(slice_encoding_direction)
        if direction.rstrip("-") not in ("i", "j", "k") or direction.count("-") > 1:
            raise InputError(f"SliceEncodingDirection must be one of i, j, k, i-, j-, k-; "
                             f"received {slice_encoding_direction!r}.")
        slice_axis = "ijk".index(direction[0])
        if direction.endswith("-"):
            st = st[::-1]
    n_slices = data.shape[slice_axis]
    if st.size != n_slices:
        raise DimensionError(
            f"SliceTiming has {st.size} entries but the image has {n_slices} slices along axis "
            f"{slice_axis} (shape {data.shape[:3]}). Expected one time per slice; fix "
            "SliceTiming or SliceEncodingDirection in the sidecar.")
    if not np.all(np.isfinite(st)) or st.min() < 0 or st.max() > tr + 1e-6:
        hint = " They look like milliseconds; BIDS wants seconds." if st.max() > tr * 10 else ""
        raise InputError(f"SliceTiming values must lie in [0, TR={tr:g}] s; received "
                         f"min {st.min():g}, max {st.max():g}.{hint}")
    if method not in ("fourier", "cubic"):
        raise InputError(f"Unknown slice-timing method {method!r}; expected 'fourier' or 'cubic'.")
    if reference == "middle":
        t_ref = 0.5 * (st.min() + st.max())
    elif reference == "first":
        t_ref = float(st.min())
    else:
        t_ref = float(reference)
    shift_fn = _fourier_shift if method == "fourier" else _cubic_shift
    moved = np.moveaxis(data, slice_axis, 0)
    out = np.empty_like(moved)
    for s in range(n_slices):
        shift = (t_ref - st[s]) / tr
        if abs(shift) < 1e-9:
            out[s] = moved[s]
            continue
        out[s] = shift_fn(moved[s].astype(np.float64), shift)
    out = np.moveaxis(out, 0, slice_axis)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    result = nib.Nifti1Image(out, img.affine, header)
    result.header.set_slope_inter(1.0, 0.0)
    return result


# ----------------------------------------------------------------- smoothing
def smooth(img, fwhm_mm, mask=None):
    """Gaussian smoothing, FWHM in mm (0/None: no-op); nilearn's ``smooth_img`` maths.

    The kernel is separable (``scipy.ndimage.gaussian_filter1d`` along each axis,
    sigma = FWHM / sqrt(8 ln 2) / voxel size, truncated at 4 sigma), exactly as
    :func:`nilearn.image.smooth_img`, and runs in float32. With a ``mask``
    (image or boolean array on the same grid) only the mask's bounding box plus
    the kernel radius is smoothed: values inside the mask are then identical to
    smoothing the whole volume, at a fraction of the cost for template-space data
    whose field of view is mostly outside the brain. Voxels outside that box keep
    their unsmoothed values; callers that pass a mask must only use in-mask values.
    Non-finite values are set to 0 first, as nilearn does.
    """
    from scipy.ndimage import gaussian_filter1d

    if fwhm_mm is None or fwhm_mm == 0:
        return img
    if not np.isfinite(fwhm_mm) or fwhm_mm < 0:
        raise InputError(f"Smoothing FWHM must be >= 0 mm; received {fwhm_mm}.")
    data = np.array(img.dataobj, dtype=np.float32)  # a private copy, smoothed in place
    data[~np.isfinite(data)] = 0
    vox = np.sqrt(np.sum(img.affine[:3, :3] ** 2, axis=0))
    sigma = float(fwhm_mm) / (np.sqrt(8 * np.log(2)) * vox)
    box = tuple(slice(None) for _ in range(3))
    if mask is not None:
        mdata = np.asarray(mask.dataobj if hasattr(mask, "dataobj") else mask) > 0
        if mdata.shape != data.shape[:3]:
            raise DimensionError(f"mask grid {mdata.shape} does not match the image grid "
                                 f"{data.shape[:3]}; resample the mask to the image.")
        if mdata.any():
            idx = np.nonzero(mdata)
            radius = [int(4.0 * s + 0.5) + 1 for s in sigma]
            box = tuple(slice(max(int(i.min()) - r, 0), min(int(i.max()) + r + 1, n))
                        for i, r, n in zip(idx, radius, data.shape[:3]))
    sub = np.ascontiguousarray(data[box]) if mask is not None else data
    for axis, s in enumerate(sigma):
        if s > 0:
            gaussian_filter1d(sub, s, axis=axis, output=sub)
    if mask is not None:
        data[box] = sub
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    out = nib.Nifti1Image(data, img.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    return out


# ----------------------------------------------------------------- denoising
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
            "another --denoise-strategy, or regenerate the confounds (fMRIPrep >= 20.2 or "
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
            "--fd-thresh, or regenerate the confounds with fMRIPrep or dpnbids.")
    fd = confounds["framewise_displacement"].to_numpy(dtype=float)
    mask = np.nan_to_num(fd, nan=0.0) > float(fd_thresh)
    for col in confounds.columns:
        if _MOTION_OUTLIER_RE.match(str(col)):
            mask |= np.nan_to_num(confounds[col].to_numpy(dtype=float)) > 0.5
    return mask


def interpolate_censored(signals, censor) -> np.ndarray:
    """Replace censored frames by a cubic spline through the retained ones (XCP-D).

    The spline (not-a-knot) is fitted on the retained frames' indices and
    evaluated at the censored ones; censored frames before the first or after
    the last retained frame take the nearest retained value (a spline would
    extrapolate wildly there), as XCP-D does. Filling the gaps this way keeps
    the series evenly sampled, so the FFT band-pass remains valid and a
    high-motion spike cannot ring into the neighbouring frames.

    Parameters
    ----------
    signals : array (T,) or (T, N)
    censor : array of bool (T,)
        True for frames to replace; at least two frames must be retained.

    Returns
    -------
    ndarray, float64, same shape as ``signals``
    """
    from scipy.interpolate import CubicSpline

    x = np.array(signals, dtype=np.float64)
    censor = np.asarray(censor, bool).ravel()
    if censor.size != x.shape[0]:
        raise DimensionError(f"censor mask has {censor.size} entries but the signals have "
                             f"{x.shape[0]} frames; expected one entry per frame.")
    if not censor.any():
        return x
    kept = np.flatnonzero(~censor)
    if kept.size < 2:
        raise InputError(f"Only {kept.size} of {censor.size} volumes survive censoring; "
                         "at least 2 are needed to interpolate. Raise --fd-thresh.")
    gaps = np.flatnonzero(censor)
    inner = gaps[(gaps > kept[0]) & (gaps < kept[-1])]
    flat = x.reshape(x.shape[0], -1)
    step = 8192  # columns per block: bounds the spline coefficients' memory
    for start in range(0, flat.shape[1], step):
        block = flat[:, start:start + step]
        if inner.size:
            block[inner] = CubicSpline(kept, block[kept], axis=0, bc_type="not-a-knot")(inner)
        block[gaps[gaps < kept[0]]] = block[kept[0]]
        block[gaps[gaps > kept[-1]]] = block[kept[-1]]
    return flat.reshape(x.shape)


def band_mask(n_volumes: int, tr: float, high_pass=None, low_pass=None) -> np.ndarray:
    """Bins of the mirror-padded (length ``2 T``) real spectrum inside the band."""
    freqs = np.fft.rfftfreq(2 * int(n_volumes), d=float(tr))
    keep = np.ones(freqs.shape, bool)
    if high_pass is not None:
        keep &= freqs >= high_pass
    if low_pass is not None:
        keep &= freqs <= low_pass
    return keep


def fft_bandpass(signals, tr: float, *, high_pass=None, low_pass=None) -> np.ndarray:
    """CONN's band-pass: zero the FFT bins outside the band of a mirror-padded series.

    Parameters
    ----------
    signals : array (T, N)
    tr : float
    high_pass, low_pass : float or None
        Band edges in Hz; a high-pass also removes the mean (DC bin).

    Returns
    -------
    ndarray (T, N)
    """
    x = np.asarray(signals, dtype=np.float64)
    T = x.shape[0]
    keep = band_mask(T, tr, high_pass, low_pass)
    out = np.empty_like(x)
    step = 8192  # columns per block: bounds the complex temporaries
    for start in range(0, max(x.shape[1], 1) if x.ndim > 1 else 1, step):
        block = x[:, start:start + step] if x.ndim > 1 else x
        spec = np.fft.rfft(np.concatenate([block, block[::-1]], axis=0), axis=0)
        spec[~keep] = 0
        filtered = np.fft.irfft(spec, n=2 * T, axis=0)[:T]
        if x.ndim > 1:
            out[:, start:start + step] = filtered
        else:
            out = filtered
    return out


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
    from nilearn.signal import clean

    data, mask = _bold_and_mask(img, mask_img, "denoise")
    n_t = data.shape[3]
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
    censoring = censor is not None and bool(np.any(censor))
    if censor is not None:
        censor = np.asarray(censor, bool).ravel()
        if censor.size != n_t:
            raise DimensionError(f"The censor mask has {censor.size} entries but the BOLD "
                                 f"series has {n_t} volumes; expected one per volume.")
    if censoring:
        support = regs != 0
        only_censored = support.any(axis=0) & ~support[~censor].any(axis=0)
        regs = regs[:, ~only_censored]
        n_kept = int((~censor).sum())
        if n_kept <= regs.shape[1] + 2:
            raise InputError(
                f"denoise: censoring leaves {n_kept} of {n_t} volumes for {regs.shape[1]} "
                "confound regressors. Raise --fd-thresh, use a lighter --denoise-strategy, "
                "or exclude this run.")
    if regs.shape[1] >= n_t - 2:
        raise InputError(
            f"denoise: {regs.shape[1]} confound regressors for {n_t} volumes leave no degrees "
            "of freedom. Use a lighter --denoise-strategy or a longer run.")
    nyquist = 0.5 / tr
    if low_pass is not None and low_pass >= nyquist:
        warnings.warn(f"low_pass {low_pass} Hz is at or above Nyquist ({nyquist:g} Hz for "
                      f"TR {tr:g} s); the low-pass is not applied.", UserWarning, stacklevel=2)
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
            "signal. Use a lighter --denoise-strategy (e.g. 'minimal') or a longer run.")
    if filter not in ("fft", "butterworth"):
        raise InputError(f"Unknown filter {filter!r}; expected 'fft' or 'butterworth'.")
    if standardize is False:
        standardize = None  # nilearn >= 0.14 spelling of "no standardisation"
    signals = data[mask].T.astype(np.float64)  # (T, V)
    if censoring:
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
    if censoring:
        cleaned = cleaned[~censor]
    out = np.zeros(data.shape[:3] + (cleaned.shape[0],), np.float32)
    out[mask] = cleaned.T.astype(np.float32)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    result = nib.Nifti1Image(out, img.affine, header)
    result.header.set_slope_inter(1.0, 0.0)
    return result
