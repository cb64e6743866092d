"""Composition of the preprocessing steps used by the nipype interfaces.

Each function here takes and returns file names and plain values; the maths
is in :mod:`dpnbids.preproc.checks`, :mod:`~dpnbids.preproc.signal`,
:mod:`~dpnbids.preproc.confounds`, :mod:`~dpnbids.preproc.bold` and
:mod:`~dpnbids.preproc.anat`.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from dpnbids.nifti_io import save_nifti

LOGGER = logging.getLogger(__name__)


def prepare_bold(bold_file, *, metadata, dummy_scans=None, slice_order=None, min_volumes=50,
                 out_dir=".") -> dict:
    """Check the run, drop non-steady-state volumes and correct slice timing."""
    from dpnbids.preproc.checks import load_bold
    from dpnbids.preproc.signal import (detect_nonsteady_states, slice_time_correct,
                                        slice_timing_from_order)

    out_dir = Path(out_dir)
    img, tr = load_bold(bold_file, sidecar=metadata, min_volumes=min_volumes)
    skipped = []
    detected = dummy_scans is None
    n_dummy = int(detect_nonsteady_states(img)) if detected else int(dummy_scans)
    if n_dummy:
        img = img.slicer[..., n_dummy:]
    direction = metadata.get("SliceEncodingDirection")
    axis = {"i": 0, "j": 1, "k": 2}.get(str(direction or "k")[0], 2)
    n_slices = img.shape[axis]
    slice_timing = metadata.get("SliceTiming")
    applied = False
    if slice_timing is None and slice_order:
        slice_timing = slice_timing_from_order(n_slices, tr, slice_order)
    if slice_timing is not None:
        if len(slice_timing) != n_slices:
            skipped.append(f"slice-timing correction: SliceTiming has {len(slice_timing)} "
                           f"entries but the image has {n_slices} slices")
        else:
            img = slice_time_correct(img, list(slice_timing), tr, slice_axis=axis,
                                     slice_encoding_direction=direction)
            applied = True
    else:
        skipped.append("slice-timing correction: no SliceTiming in the sidecar and no "
                       "`slice_order` given")
        LOGGER.warning("%s: no SliceTiming and no `slice_order`; slice-timing correction "
                       "skipped", Path(bold_file).name)
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_xyzt_units("mm", "sec")
    out.header["pixdim"][4] = tr
    return {"out_file": save_nifti(out, out_dir / "bold_prepared.nii"), "tr": float(tr),
            "n_dummy": n_dummy, "dummy_detected": bool(detected),
            "slice_timing_applied": applied, "skipped": skipped}


def warp_to_std(moving_file, reference_file, transforms, out_file, *, interpolation="linear"):
    """Apply ANTs transforms (``ants.apply_transforms`` order) to a 3D image."""
    import ants

    fixed = ants.image_read(str(reference_file))
    moving = ants.image_read(str(moving_file))
    out = ants.apply_transforms(fixed=fixed, moving=moving, transformlist=list(transforms),
                                interpolator=interpolation)
    ants.image_write(out, str(out_file))
    return str(out_file)


def bold_to_std(bold_file, *, tr, t1w_brain, t1w_mask, wm_probseg, csf_probseg,
                xfm_t1w_to_std, space, resolution, omp_nthreads=1, random_seed=0,
                out_dir=".") -> dict:
    """Head motion, reference/mask, coregistration and one-shot resampling."""
    from dpnbids.preproc import bold as pbold
    from dpnbids.preproc.checks import check_mask_not_empty
    from dpnbids.templates import get_template

    out_dir = Path(out_dir)
    hmc = pbold.estimate_head_motion(bold_file, str(out_dir), omp_nthreads=omp_nthreads,
                                     random_seed=random_seed)
    ref_file, mask_file = pbold.bold_reference_and_mask(hmc.reference_file, str(out_dir))
    coreg = pbold.coregister_bold_to_t1w(ref_file, t1w_brain, t1w_mask, str(out_dir),
                                         omp_nthreads=omp_nthreads, random_seed=random_seed)
    reference = get_template(space, resolution, "T1w")
    bold_std = pbold.resample_bold_to_std(
        bold_file, str(out_dir / "bold_std.nii"), hmc_matrices_file=hmc.matrices_file,
        coreg_xfm=coreg.xfm_file, anat_xfms=list(xfm_t1w_to_std),
        reference_img_file=str(reference), omp_nthreads=omp_nthreads)
    xfms = list(xfm_t1w_to_std) + [coreg.xfm_file]
    mask_std = warp_to_std(mask_file, reference, xfms, out_dir / "mask_std.nii.gz",
                           interpolation="nearestNeighbor")
    # restrict to the template brain mask: the BOLD mask may include skull/eyes
    tmask = nib.load(str(get_template(space, resolution, "mask"))).get_fdata() > 0.5
    mimg = nib.load(mask_std)
    mdata = (mimg.get_fdata() > 0.5) & tmask
    mask_img = nib.Nifti1Image(mdata.astype(np.uint8), mimg.affine)
    check_mask_not_empty(mask_img, f"template-space brain mask of {Path(bold_file).name}")
    mask_std = save_nifti(mask_img, out_dir / "mask_std.nii.gz")
    boldref_std = warp_to_std(ref_file, reference, xfms, out_dir / "boldref_std.nii.gz")
    wm_std = warp_to_std(wm_probseg, reference, xfm_t1w_to_std, out_dir / "wm_std.nii.gz")
    csf_std = warp_to_std(csf_probseg, reference, xfm_t1w_to_std, out_dir / "csf_std.nii.gz")
    params = pd.DataFrame(hmc.params, columns=["trans_x", "trans_y", "trans_z",
                                               "rot_x", "rot_y", "rot_z"])
    motion_file = out_dir / "motion_params.tsv"
    params.to_csv(motion_file, sep="\t", index=False)
    costs = {"identity": float(coreg.cost_identity), "final": float(coreg.cost_final)}
    return {"bold_std": str(bold_std), "mask_std": mask_std, "boldref_std": boldref_std,
            "boldref": ref_file, "wm_std": wm_std, "csf_std": csf_std,
            "motion_params": str(motion_file), "coreg_xfm": str(coreg.xfm_file),
            "coreg_costs": costs, "warnings": list(coreg.warnings)}


def confounds_and_denoise(bold_std, mask_std, *, tr, confounds_file=None, motion_params=None,
                          wm_std=None, csf_std=None, n_dummy=0, smoothing_fwhm=5.0,
                          strategy="conn", high_pass=0.008, low_pass=0.09, out_dir=".",
                          fd_thresh=None) -> dict:
    """Confounds TSV/JSON (computed or taken from fMRIPrep), smoothing and denoising.

    With ``fd_thresh`` (mm) the volumes of :func:`~dpnbids.preproc.denoise.censor_mask`
    are censored (interpolated, then dropped from the denoised series), and
    ``motion_summary`` gains ``fd_thresh``, ``n_censored``, ``n_kept`` and
    ``censored_volumes`` (0-based indices).
    """
    from dpnbids.preproc.confounds import (compute_confounds, confounds_metadata,
                                           read_confounds, write_confounds)
    from dpnbids.preproc.signal import smooth
    from dpnbids.preproc.denoise import censor_mask, denoise, percent_signal_change

    out_dir = Path(out_dir)
    img = nib.load(str(bold_std))
    # read (and decompress) once: the confounds, smoothing and denoising all use it
    img = nib.Nifti1Image(np.asanyarray(img.dataobj, dtype=np.float32), img.affine, img.header)
    img.header.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    mask = nib.load(str(mask_std))
    if confounds_file is not None:
        sidecar = Path(str(confounds_file)[:-4] + ".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        confounds, notes = read_confounds(confounds_file, strategy=strategy, confounds_meta=meta)
        for note in notes:
            LOGGER.info(note)
    else:
        params = pd.read_csv(motion_params, sep="\t").to_numpy()
        confounds = compute_confounds(
            img, mask, motion_params=params,
            wm_img=nib.load(str(wm_std)) if wm_std else None,
            csf_img=nib.load(str(csf_std)) if csf_std else None, tr=tr, n_dummy=0)
        meta = confounds_metadata(confounds)
    tsv = out_dir / "confounds.tsv"
    write_confounds(confounds, tsv)
    js = out_dir / "confounds.json"
    js.write_text(json.dumps(meta, indent=2, default=str))
    fwhm = smoothing_fwhm if smoothing_fwhm and smoothing_fwhm > 0 else None
    smoothed = smooth(img, fwhm, mask=mask) if fwhm else img
    # percent signal change before denoising (CONN's units): amplitudes then compare
    # across subjects and scanners, which the dual-regression estimates rely on
    smoothed = percent_signal_change(smoothed, mask)
    censor = censor_mask(confounds, fd_thresh)
    denoised = denoise(smoothed, confounds, mask, tr, strategy=strategy, confounds_meta=meta,
                       low_pass=low_pass or None, high_pass=high_pass or None,
                       censor=censor if censor.any() else None)
    data = np.asanyarray(denoised.dataobj, dtype=np.float32)
    data *= (mask.get_fdata() > 0)[..., None]
    out = nib.Nifti1Image(data, img.affine)
    out.header.set_xyzt_units("mm", "sec")
    out.header["pixdim"][4] = tr
    # uncompressed in the work directory; the derivatives writer compresses it
    denoised_file = save_nifti(out, out_dir / "denoised.nii")
    summary = motion_summary(confounds)
    if fd_thresh:
        summary.update(fd_thresh=float(fd_thresh), n_censored=int(censor.sum()),
                       n_kept=int((~censor).sum()),
                       censored_volumes=[int(i) for i in np.flatnonzero(censor)])
    return {"confounds_tsv": str(tsv), "confounds_json": str(js), "denoised": denoised_file,
            "motion_summary": summary}


def motion_summary(confounds: pd.DataFrame, fd_threshold: float = 0.5) -> dict:
    """Mean/max FD, number of volumes above ``fd_threshold`` and peak translation/rotation."""
    summary = {}
    if "framewise_displacement" in confounds:
        fd = confounds["framewise_displacement"].to_numpy(dtype=float)
        fd = fd[np.isfinite(fd)]
        summary.update(mean_fd=float(fd.mean()) if fd.size else float("nan"),
                       max_fd=float(fd.max()) if fd.size else float("nan"),
                       n_fd_above=int((fd > fd_threshold).sum()), fd_threshold=fd_threshold)
    trans = [c for c in ("trans_x", "trans_y", "trans_z") if c in confounds]
    rots = [c for c in ("rot_x", "rot_y", "rot_z") if c in confounds]
    if trans:
        summary["max_abs_translation_mm"] = float(np.nanmax(np.abs(confounds[trans].to_numpy())))
    if rots:
        summary["max_abs_rotation_deg"] = float(np.degrees(
            np.nanmax(np.abs(confounds[rots].to_numpy()))))
    summary["n_volumes"] = int(len(confounds))
    return summary
