"""Checks of BOLD, T1w and mask images at the door, before any computation.

Every check raises :class:`~dpnbids.exceptions.InputError` (or its subclass
:class:`~dpnbids.exceptions.DimensionError`) with a message that names the
file, says what was received, what was expected and how to fix it.

Oblique and non-RAS images are accepted as they are (the resampling steps use
the affine), and so are scaled integer images (Philips ``scl_slope``): the
loaders return an in-memory float32 image with the scaling applied.
"""
from __future__ import annotations

import gzip
import numbers
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from dpnbids.exceptions import DimensionError, InputError

__all__ = ["load_bold", "load_anat", "repetition_time", "check_bold_has_signal",
           "sidecar_repetition_time", "check_mask_not_empty", "TR_RANGE_S"]

#: Plausible range of a repetition time, in seconds (header values outside it are ignored).
TR_RANGE_S = (0.1, 30.0)

_TR_TOLERANCE_S = 1e-3

#: A voxel whose range over time is below this fraction of the image's largest absolute
#: value counts as constant (float32 rounding of a constant series stays far below it).
_CONSTANT_RTOL = 1e-6


def _name(path) -> str:
    return Path(str(path)).name


def _read(path, kind: str):
    """Load ``path`` and read its whole data block (detects truncated files)."""
    path = Path(str(path))
    if not path.exists():
        raise InputError(f"{kind} file {path} does not exist. Expected an existing NIfTI "
                         "file (.nii or .nii.gz); check the path and the BIDS dataset.")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error,
            gzip.BadGzipFile, ValueError) as exc:
        raise InputError(
            f"{kind} file {_name(path)} could not be read: it is corrupt or truncated "
            f"({type(exc).__name__}: {exc}). Expected a complete NIfTI-1/2 image; "
            "re-export or re-download it (a gzip that stops early is the usual cause), "
            "and check it with `python -c \"import nibabel as nib; "
            f"nib.load('{_name(path)}').get_fdata()\"`.") from exc
    return img, data


def _check_affine(img, path, kind: str) -> None:
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(np.isfinite(affine)) or np.any(zooms <= 0):
        raise InputError(
            f"{kind} file {_name(path)} has an invalid affine (voxel sizes {zooms.tolist()}, "
            "non-finite or zero). Expected a non-degenerate voxel-to-world matrix; fix the "
            "header (sform/qform) with the converter that wrote it (e.g. dcm2niix).")


def _check_finite(data: np.ndarray, path, kind: str) -> None:
    n_nan = int(np.isnan(data).sum())
    n_inf = int(np.isinf(data).sum())
    if n_nan or n_inf:
        raise InputError(
            f"{kind} file {_name(path)} contains {n_nan} NaN and {n_inf} Inf values "
            f"(out of {data.size}). Expected finite intensities; replace them (e.g. "
            "`nilearn.image.math_img('np.nan_to_num(img)', img=...)`) or re-convert the "
            "DICOMs.")
    if not np.any(data):
        raise InputError(f"{kind} file {_name(path)} is all zeros. Expected an image with "
                         "signal; check the conversion from DICOM.")


def _header_tr(img) -> float | None:
    """Repetition time from ``pixdim[4]`` in seconds, or None if absent/implausible."""
    try:
        value = float(img.header["pixdim"][4])
        units = img.header.get_xyzt_units()[1]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    if units == "msec":
        value /= 1000.0
    elif units == "usec":
        value /= 1e6
    if not np.isfinite(value) or not TR_RANGE_S[0] <= value <= TR_RANGE_S[1]:
        return None
    return value


def _in_memory(img, data: np.ndarray):
    """A float32 in-memory copy of ``img`` (scaling applied, header kept)."""
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    out = img.__class__(data, img.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    return out


def load_bold(bold_file, *, sidecar: dict | None = None, min_volumes: int = 50):
    """Load and check one BOLD run.

    Parameters
    ----------
    bold_file : str or Path
        The 4D NIfTI file.
    sidecar : dict, optional
        The BIDS JSON metadata of the run (with inheritance resolved).
    min_volumes : int
        Fewest volumes accepted, after any dummy scans the caller adds to it
        (``--min-volumes``): the 0.008 Hz high-pass, the non-steady-state
        detection and ICA need a long enough series.

    Returns
    -------
    img : nibabel.Nifti1Image
        In-memory float32 image (scaling applied; orientation unchanged).
    tr : float
        Repetition time in seconds: the sidecar's ``RepetitionTime`` when
        present (as fMRIPrep does), otherwise a plausible header ``pixdim[4]``.

    Raises
    ------
    InputError
        Missing, corrupt or truncated file; too few volumes; NaN/Inf voxels;
        all-zero data or no voxel varying over time; a RepetitionTime that is not
        a positive number (a string or true/false included); no usable
        repetition time.
    DimensionError
        The image is not 4D.

    Warns
    -----
    UserWarning
        The header and the sidecar disagree on the repetition time, or the
        repetition time comes from the header only.
    """
    img, data = _read(bold_file, "BOLD")
    name = _name(bold_file)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4:
        hint = (" If each volume was saved as its own file, merge them into one 4D file "
                "(e.g. `nilearn.image.concat_imgs`)." if data.ndim == 3 else "")
        raise DimensionError(
            f"BOLD file {name} is {data.ndim}D with shape {tuple(data.shape)}. Expected a 4D "
            f"image (x, y, z, time) with at least {min_volumes} volumes.{hint}")
    n_volumes = data.shape[3]
    if n_volumes < min_volumes:
        raise InputError(
            f"BOLD file {name} has {n_volumes} volumes; at least {min_volumes} are needed "
            "(non-steady-state detection, the 0.008 Hz high-pass of the denoising and group "
            "ICA need a long enough series; dummy scans count on top). Use a longer run, or "
            "lower `min_volumes` if you accept a less reliable estimate.")
    _check_affine(img, bold_file, "BOLD")
    _check_finite(data, bold_file, "BOLD")
    check_bold_has_signal(data, name=name)

    tr = repetition_time(img, sidecar, name=name)
    out = _in_memory(img, data)
    out.header.set_xyzt_units("mm", "sec")
    out.header["pixdim"][4] = tr
    return out, float(tr)


def repetition_time(img, sidecar: dict | None = None, *, name: str) -> float:
    """A BOLD run's repetition time in seconds, from its header and JSON sidecar only.

    The sidecar's ``RepetitionTime`` when present (as fMRIPrep does), otherwise a
    plausible header ``pixdim[4]``; ``img`` may be a proxy (no voxel is read).

    Raises
    ------
    InputError
        A RepetitionTime that is not a positive number of seconds, or none at all.

    Warns
    -----
    UserWarning
        The header and the sidecar disagree, or the value comes from the header only.
    """
    sidecar = sidecar or {}
    header_tr = _header_tr(img)
    tr = sidecar.get("RepetitionTime")
    if tr is not None:
        tr = sidecar_repetition_time(tr, name=name)
        if header_tr is not None and abs(header_tr - tr) > _TR_TOLERANCE_S:
            warnings.warn(
                f"BOLD file {name}: the NIfTI header says TR = {header_tr:g} s but the JSON "
                f"sidecar says RepetitionTime = {tr:g} s; using the sidecar (as fMRIPrep "
                "does). Fix whichever is wrong.", UserWarning, stacklevel=3)
        return float(tr)
    if header_tr is not None:
        warnings.warn(
            f"BOLD file {name}: no RepetitionTime in the JSON sidecar; using the header "
            f"value {header_tr:g} s. BIDS requires RepetitionTime in the sidecar.", UserWarning,
            stacklevel=3)
        return float(header_tr)
    raise InputError(
        f"BOLD file {name} has no RepetitionTime: none in the JSON sidecar and the "
        f"header pixdim[4] ({float(img.header['pixdim'][4]):g}) is not a plausible TR "
        f"({TR_RANGE_S[0]:g}-{TR_RANGE_S[1]:g} s). Add \"RepetitionTime\" (seconds) to "
        f"the JSON sidecar {name.split('.')[0]}.json (or a task-level "
        "task-<label>_bold.json).")


def sidecar_repetition_time(value, *, name: str) -> float:
    """The JSON sidecar's ``RepetitionTime`` as seconds; refuse anything but a number.

    JSON ``true``/``false`` load as :class:`bool`, a subclass of ``int`` in
    Python, and ``"2.0"`` as a string: neither is a number of seconds.

    Raises
    ------
    InputError
        Not a number (bool, string, list ...), not finite or not positive, or a
        value that looks like milliseconds.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(
            f"BOLD file {name}: RepetitionTime in the JSON sidecar is {value!r} "
            f"({type(value).__name__}). Expected a positive number of seconds, e.g. "
            "\"RepetitionTime\": 2.0 (no quotes); fix the sidecar.")
    tr = float(value)
    if not np.isfinite(tr) or tr <= 0:
        raise InputError(
            f"BOLD file {name}: RepetitionTime in the JSON sidecar is {value!r}. Expected a "
            "positive number of seconds; fix the sidecar.")
    if tr > TR_RANGE_S[1] and TR_RANGE_S[0] <= tr / 1000.0 <= TR_RANGE_S[1]:
        raise InputError(
            f"BOLD file {name}: RepetitionTime in the JSON sidecar is {tr:g}, which looks "
            f"like milliseconds. BIDS expects seconds; write {tr / 1000.0:g}.")
    return tr


def check_bold_has_signal(bold, *, name: str | None = None) -> None:
    """Refuse a BOLD run with no signal over time: all zeros, or every voxel constant.

    Such a run passes through denoising and ICA without an error and gives
    all-zero maps, so it is refused at the door.

    Parameters
    ----------
    bold : nibabel image, str, Path or numpy.ndarray
        The 4D BOLD series (x, y, z, time).
    name : str, optional
        The file name for the message (taken from the path when one is given).

    Raises
    ------
    InputError
        All voxels are zero, or no voxel varies over time (temporal range of
        every voxel below 1e-6 of the largest absolute intensity).
    """
    if isinstance(bold, (str, Path)):
        name = name or _name(bold)
        _img, data = _read(bold, "BOLD")
    elif isinstance(bold, np.ndarray):
        data = bold
    else:
        data = np.asanyarray(bold.dataobj, dtype=np.float32)
        name = name or (_name(bold.get_filename()) if bold.get_filename() else None)
    name = name or "(in memory)"
    if data.ndim != 4 or data.shape[3] < 2:
        return  # the shape checks say what is wrong with the dimensions
    if not np.isfinite(data).all():  # NaN would otherwise read as "constant over time"
        _check_finite(data, name, "BOLD")
    scale = float(np.max(np.abs(data)))
    if scale == 0:
        raise InputError(f"BOLD file {name} is all zeros. Expected an image with signal; "
                         "check the conversion from DICOM (or the fMRIPrep run).")
    # range over time per voxel, slice by slice to bound the memory of a large run
    varies = any(np.any(np.ptp(data[:, :, k, :], axis=-1) > _CONSTANT_RTOL * scale)
                 for k in range(data.shape[2]))
    if not varies:
        raise InputError(
            f"BOLD file {name} is constant over time: no voxel changes across its "
            f"{data.shape[3]} volumes. Expected a resting-state series whose intensities "
            "vary; the file is probably one volume repeated (check the conversion from "
            "DICOM, or the fMRIPrep run).")


def check_preprocessed_bold(bold, *, n_confound_rows: int | None = None,
                            min_volumes: int = 3) -> int:
    """Door check of an already preprocessed (fMRIPrep) BOLD run; returns its volume count.

    The image must read completely, be 4D with at least 3 volumes (and ``min_volumes``),
    hold finite values and vary over time; with ``n_confound_rows`` its confounds table must
    have one row per volume (the regression pairs them row by row). The one full read of
    the run before the compute: the workflow then needs only its header
    (:func:`repetition_time`).
    """
    img, data = _read(bold, "BOLD")
    name = _name(bold)
    if data.ndim == 5 and data.shape[3] == 1:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] < 3:
        raise DimensionError(
            f"BOLD file {name} has shape {tuple(data.shape)}: "
            + (f"only {data.shape[3]} volumes. " if data.ndim == 4 else f"{data.ndim}D. ")
            + "Expected a 4D resting-state series (x, y, z, time) with many volumes; give "
              "fMRIPrep's *_desc-preproc_bold.nii.gz of a complete run.")
    n_volumes = int(data.shape[3])
    if n_volumes < min_volumes:
        raise InputError(
            f"BOLD file {name} has {n_volumes} volumes; at least {min_volumes} are needed "
            "(the 0.008 Hz high-pass of the denoising and group ICA need a long enough "
            "series). Use a longer run, or lower `min_volumes` if you accept a less reliable "
            "estimate.")
    _check_affine(img, bold, "BOLD")
    check_bold_has_signal(data, name=name)
    if n_confound_rows is not None and n_confound_rows != n_volumes:
        raise DimensionError(
            f"BOLD file {name} has {n_volumes} volumes but its confounds table has "
            f"{n_confound_rows} rows. Expected one row per volume; the table belongs to "
            "another run or was cut: use the confounds TSV fMRIPrep wrote with this run.")
    return n_volumes


def load_anat(t1w_file):
    """Load and check one anatomical (3D) image.

    Parameters
    ----------
    t1w_file : str or Path

    Returns
    -------
    nibabel.Nifti1Image
        In-memory float32 3D image (a 4D file with a single volume is squeezed).

    Raises
    ------
    InputError
        Missing, corrupt or truncated file; NaN/Inf voxels; all zeros.
    DimensionError
        Not 3D (or 4D with more than one volume).
    """
    img, data = _read(t1w_file, "T1w")
    name = _name(t1w_file)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DimensionError(
            f"T1w file {name} is {data.ndim}D with shape {tuple(data.shape)}. Expected a 3D "
            "image; if it holds several averages, average them or pass a single one.")
    _check_affine(img, t1w_file, "T1w")
    _check_finite(data, t1w_file, "T1w")
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_data_shape(data.shape)
    out = nib.Nifti1Image(data, img.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    return out


def check_mask_not_empty(mask_img, name: str, *, min_voxels: int = 1) -> int:
    """Raise if a mask has fewer than ``min_voxels`` voxels above 0.5.

    Parameters
    ----------
    mask_img : nibabel image, str or Path
    name : str
        What the mask is, for the message (e.g. "brain mask of sub-01_task-rest_bold").
    min_voxels : int

    Returns
    -------
    int
        Number of voxels in the mask.
    """
    if isinstance(mask_img, (str, Path)):
        mask_img = nib.load(str(mask_img))
    data = np.asanyarray(mask_img.dataobj)
    n = int(np.count_nonzero(np.nan_to_num(data) > 0.5))
    if n < min_voxels:
        raise InputError(
            f"The {name} is empty: {n} voxels above 0.5 out of {data.size} (shape "
            f"{tuple(data.shape)}); expected at least {min_voxels}. The brain extraction or "
            "registration that produced it failed: check the input images (field of view, "
            "orientation, a BOLD and T1w of the same subject).")
    return n


def check_confounds_table(tsv_path, strategy, *, columns=None) -> int:
    """Door check of an fMRIPrep confounds TSV's values; returns its number of rows.

    Beyond the header (:func:`dpnbids.preproc.confounds.check_confounds_header`): the file
    and its JSON sidecar parse, the table has rows, and every column the strategy regresses
    is numeric and not entirely ``n/a`` (such a table would regress nothing, silently).
    """
    import json

    import pandas as pd

    from dpnbids.preproc.confounds import check_confounds_header, expand_confounds

    path = Path(str(tsv_path))
    sidecar = Path(str(path)[:-4] + ".json")
    try:
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{sidecar} is not valid JSON ({exc}). Expected fMRIPrep's confounds "
                         "sidecar; restore it from the fMRIPrep output or remove it.") from None
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty. Expected fMRIPrep's confounds table: a header "
                         "and one row per volume; rerun fMRIPrep or restore the file.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable tab-separated table ({exc}).") from None
    if not len(table):
        raise InputError(f"{path} has a header but no rows. Expected one row per volume.")
    wanted = check_confounds_header(path, strategy, columns=columns, confounds_meta=meta)
    table, _ = expand_confounds(table, [c for c in wanted if c not in table.columns])
    for col in (c for c in wanted if c in table.columns):
        values = pd.to_numeric(table[col], errors="coerce")
        bad = table[col].notna() & values.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{path}: column {col!r} holds {table[col].iloc[row]!r} on data row {row + 1}. "
                f"Expected numbers (or n/a); the {strategy!r} denoising regresses this "
                "column. Fix the value or give the table fMRIPrep wrote.")
        if values.isna().all():
            raise InputError(
                f"{path}: column {col!r} is n/a on every row, so the {strategy!r} denoising "
                "would regress nothing from it. Expected fMRIPrep's values; rerun fMRIPrep "
                "or choose a `denoise_strategy` that does not use this column.")
    return int(len(table))
