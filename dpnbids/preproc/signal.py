"""Temporal signal steps: non-steady states, slice timing, smoothing, denoising.

Pure functions on nibabel images and numpy arrays; nipype wraps them in
:mod:`dpnbids.interfaces`.

Confound regression and censoring are in :mod:`dpnbids.preproc.denoise`.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np

from dpnbids.exceptions import DimensionError, InputError

__all__ = ["detect_nonsteady_states", "slice_timing_from_order", "slice_time_correct", "smooth",
           "interpolate_censored", "band_mask", "fft_bandpass"]

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


# ----------------------------------------------------------------- filtering
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
                         "at least 2 are needed to interpolate. Raise `fd_thresh`.")
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


