"""Synthetic BIDS datasets with planted resting-state networks and a known label effect.

``dpnbids-synth OUT_DIR`` (or :func:`generate_dataset`) writes a raw BIDS
dataset, optionally fMRIPrep-style derivatives, and a ground-truth folder
``<OUT_DIR>_truth`` next to it (outside the BIDS tree). Everything is
deterministic for a given :class:`SynthParams` (the same bytes twice).

Generative model
----------------
All quantities live in **template space** (MNI152NLin2009aSym on a grid of
``template_resolution`` mm, from :func:`dpnbids.templates.load_template`) and
are then imaged, through known transforms, by a simulated scanner.

1. **Labels.** ``n_responders`` ones and ``n_nonresponders`` zeros are shuffled
   over ``sub-01 ... sub-NN`` with the seed. Age (uniform 40-75 y) and sex are
   drawn independently of everything else.
2. **Group network maps** ``G_n`` are :func:`dpnbids.analysis.networks.network_templates`
   (Seitzman 2018 coordinates, Gaussian blobs, sigma 6 mm, peak 1) of the
   networks in ``networks``, restricted to the template brain mask.
3. **Subject maps.** ``S_sn = a_sn * G_n(x - d_sn)``: each network of each
   subject is shifted by ``d_sn ~ N(0, shift_mm^2 I)`` (one shift for all ROIs
   of the network) and scaled by the amplitude ``a_sn = 1 + amplitude_sd * e_sn``
   with ``e_sn ~ N(0, 1)``.
4. **Effect (the label signal).** For responders, and for each network in
   ``effect_networks``, ``a_sn`` is increased by ``effect_size * amplitude_sd``.
   ``effect_size`` is therefore the standardised mean difference (Cohen's d, in
   units of the between-subject SD of the amplitude) of the true map amplitude
   of each effect network between responders and non-responders. Other
   networks carry no effect. With ``null=True`` the effect is applied to nobody:
   the images are independent of the labels (which are still drawn with the
   seed, so a null and a planted dataset with the same seed differ only in the
   responders' effect-network amplitudes).
5. **Time courses.** For every run, one continuous band-limited signal per
   network, ``x_n(t) = sum_k a_k cos(2 pi f_k t) + b_k sin(2 pi f_k t)`` over the
   Fourier frequencies ``f_k = k / (n_volumes * tr)`` in 0.01-0.1 Hz, with
   Gaussian coefficients mixed with a shared component so that any two
   networks correlate with ``network_correlation`` in expectation, scaled to unit SD
   over the volume onsets ``t_j = j * tr``. A physiological nuisance signal
   ``p(t)`` (same construction, 0.01-0.2 Hz) is independent of the networks.
6. **Baseline.** A T2*-like image ``B = 1000 * (0.8 GM + 0.6 WM + 1.0 CSF)`` of
   the template tissue probabilities, inside the brain mask dilated by one
   voxel (zero elsewhere).
7. **BOLD signal.** In head (template) coordinates ``v`` at time ``t``::

       F(v, t) = B(v) * (1 + signal_percent/100 * GM(v) * sum_n S_sn(v) x_n(t + o(v))
                          + physio_percent/100 * W(v) p(t))

   where ``GM`` is the template's grey-matter probability (network signal is
   neuronal, so it lives in grey matter), ``W = CSF + 0.5 WM + 0.2 GM`` and ``o(v)`` is the acquisition offset of
   the scanner slice that contains ``v`` (``SliceTiming``; ``slice_order``
   ascending, descending or interleaved along the third voxel axis of the
   BOLD grid). Gaussian noise of SD
   ``noise_level * signal_percent/100 * mean(B in brain)`` is added to every
   voxel inside the baseline support (temporal SNR ~
   ``100 / (noise_level * signal_percent)`` in grey matter).
8. **Head motion.** A smooth random rigid motion per run: each of the six
   parameters is a Gaussian-smoothed random walk, zero at the first volume,
   scaled so that the largest absolute translation is
   ``motion_mm * U(0.5, 1.5)`` mm and the largest rotation is the same
   displacement at 50 mm (radians). Parameters follow fMRIPrep's names and
   units (``trans_x``, ``trans_y``, ``trans_z`` in mm; ``rot_x``, ``rot_y``,
   ``rot_z`` in radians), relative to the first volume. At volume ``j`` the
   head point at BOLD-world position ``x`` (time 0) moves to
   ``M_j x = R_j (x - c) + c + t_j`` with ``R_j = Rx(rot_x) Ry(rot_y) Rz(rot_z)``
   and ``c`` the centre of the BOLD grid; the scanner voxel at ``y`` therefore
   images ``F(M_j^-1 y)`` (trilinear interpolation).
9. **Spaces.**

   - ``space="template"``: T1w and BOLD grids are template grids (T1w at
     ``t1w_voxel_size``, BOLD at ``template_resolution``); all transforms are
     the identity.
   - ``space="native"``: each subject has a T1w-to-template affine
     ``A`` (rotations up to 5 degrees about each axis, translations up to 8 mm,
     per-axis scaling within 5 %, small shears): ``x_template = A x_T1w``. The
     T1w (``t1w_voxel_size`` mm) is the template T1w sampled through ``A`` with
     a smooth multiplicative bias field (``exp`` of a random linear ramp of at
     most +-8 % per axis plus a quadratic term along x) and Gaussian noise
     (1.5 % of the template maximum). Each run's BOLD
     grid (``bold_voxel_size`` mm) is related to the T1w by a rigid
     ``B`` (rotations up to 3 degrees, translations up to 4 mm):
     ``x_T1w = B x_BOLD``. Voxel grids are oblique for some subjects and
     non-RAS (LAS, or sagittal PIR for T1w) for others.

10. **fMRIPrep-style derivatives** (``space="template"`` only), under
    ``<OUT_DIR>/derivatives/fmriprep``: the same model **without motion**,
    slice-timing corrected to time 0 (the truth time courses are sampled at
    the volume onsets, so they align exactly), fresh noise, on the template
    grid: ``desc-preproc_bold`` (``res-<int mm>``, e.g. ``res-4`` for 4 mm),
    ``desc-brain_mask``, ``desc-confounds_timeseries.tsv``/``.json`` with
    fMRIPrep column names (true motion parameters and derivatives,
    framewise displacement (Power), DVARS and standardised DVARS, global
    signal, white matter, CSF and ``a_comp_cor_00..04``), and in ``anat``
    ``desc-preproc_T1w`` and ``desc-brain_mask`` on the same grid.

Ground truth (``<OUT_DIR>_truth``)
-----------------------------------
``truth.json`` (parameters, rule, file index), ``labels.tsv`` (labels,
whether the effect was applied, true amplitudes ``amplitude_<network>``),
``group_maps.nii.gz`` (the ``G_n``, 4D template space), and per subject
``sub-XX_maps.nii.gz`` (the ``S_sn``, 4D, template grid), and per run
``<run>_timecourses.tsv`` (``x_n(t_j)`` and ``physio``),
``<run>_motion.tsv``, ``<run>_slice_timing.tsv``, ``<run>_from-bold_to-T1w_affine.txt``
and ``sub-XX_from-T1w_to-template_affine.txt`` (4x4 world-to-world, mm,
``numpy.loadtxt``-readable).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from dpnbids import __version__
from dpnbids.derivatives import res_label, write_json, write_nifti, write_tsv
from dpnbids.exceptions import InputError
from dpnbids.analysis.networks import load_network_coordinates, render_gaussians
from dpnbids.sim.params import SPACE, SynthParams, SynthResult
from dpnbids.sim.scanner import (band_limited_coefficients, bounding_corners, evaluate_signals,
                                 fmriprep_confounds, grid_around, motion_matrix, motion_params,
                                 orientation, random_affine, sample, slice_timing,
                                 template_model)

# --------------------------------------------------------------------------- helpers
def _img(data, affine, *, code: int, dtype=None, tr: float | None = None) -> nib.Nifti1Image:
    # NIfTI stores Fortran order; handing nibabel a Fortran array avoids a slow chunked copy
    img = nib.Nifti1Image(np.asfortranarray(data), affine)
    img.set_sform(affine, code)
    img.set_qform(affine, code)
    if dtype is not None:
        img.set_data_dtype(dtype)
    if tr is not None:
        img.header.set_xyzt_units("mm", "sec")
        zooms = list(img.header.get_zooms()[:3]) + [float(tr)]
        img.header.set_zooms(zooms)
    else:
        img.header.set_xyzt_units("mm")
    return img


def _scaled_int16(data: np.ndarray, affine, *, tr: float) -> nib.Nifti1Image:
    """int16 image with an explicit scale factor (fast, deterministic, ~1e-4 precision)."""
    peak = float(np.abs(data).max())
    slope = peak / 32000.0 if peak > 0 else 1.0
    img = _img(np.rint(data / slope).astype(np.int16, order="F"), affine, code=4, tr=tr)
    img.header.set_slope_inter(slope, 0.0)
    return img


def _write_json(path: Path, obj) -> None:
    write_json(obj, path, sort_keys=False)  # keys in the order BIDS documents them


def _write_tsv(path: Path, df: pd.DataFrame) -> None:
    write_tsv(df, path, float_format="%.10g")


def _run_entities(p: SynthParams, sub: str, ses: int | None, run: int | None) -> str:
    parts = [f"sub-{sub}"]
    if ses is not None:
        parts.append(f"ses-{ses:02d}")
    parts.append(f"task-{p.task}")
    if run is not None:
        parts.append(f"run-{run}")
    return "_".join(parts)


# --------------------------------------------------------------------------- generator
def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(
            f"Output folder {out_dir} exists and is not empty; the generator only writes "
            "into a new or empty folder. Choose another OUT_DIR or remove it.")
    truth = out_dir.parent / (out_dir.name + "_truth")
    if truth.exists() and (not truth.is_dir() or any(truth.iterdir())):
        raise InputError(
            f"Ground-truth folder {truth} exists and is not empty; remove it or choose "
            "another OUT_DIR.")


def generate_dataset(out_dir, params: SynthParams | None = None, *, n_jobs: int = 1,
                     progress=None) -> SynthResult:
    """Write a synthetic BIDS dataset and its ground truth.

    Parameters
    ----------
    out_dir : path
        New or empty folder for the BIDS dataset. The ground truth goes to the
        sibling folder ``<out_dir>_truth``.
    params : SynthParams, optional
        Model parameters (defaults: the README demo).
    n_jobs : int
        Subjects generated in parallel processes. The output does not depend on
        it (each subject's randomness comes from the seed and its index only).
    progress : callable, optional
        Called as ``progress(i, n, subject)`` after each subject.

    Returns
    -------
    SynthResult
    """
    p = (params or SynthParams()).validate()
    out_dir = Path(out_dir).absolute()
    _check_out_dir(out_dir)
    truth_final = out_dir.parent / (out_dir.name + "_truth")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        bids, truth = work / "bids", work / "truth"
        subjects = _generate(bids, truth, p, progress, max(1, int(n_jobs)))
        for src, dst in ((bids, out_dir), (truth, truth_final)):
            if dst.exists():
                dst.rmdir()
            os.replace(src, dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    fmriprep = out_dir / "derivatives" / "fmriprep" if p.space == "template" else None
    return SynthResult(out_dir, truth_final, fmriprep, tuple(subjects))


def _generate(bids: Path, truth: Path, p: SynthParams, progress, n_jobs: int = 1) -> list[str]:
    tpl = template_model(p.template_resolution, p.t1w_voxel_size)
    n_sub = p.n_responders + p.n_nonresponders
    width = max(2, len(str(n_sub)))
    subjects = [f"{i:0{width}d}" for i in range(1, n_sub + 1)]
    label_rng = np.random.default_rng([p.seed, 1])
    labels = np.array([1] * p.n_responders + [0] * p.n_nonresponders)
    labels = labels[label_rng.permutation(n_sub)]
    demo_rng = np.random.default_rng([p.seed, 2])
    ages = demo_rng.integers(40, 76, n_sub)
    sexes = demo_rng.choice(["F", "M"], n_sub)

    coords = load_network_coordinates()
    group = np.stack([render_gaussians(coords.loc[coords["network"] == n, ["x", "y", "z"]]
                                       .to_numpy(), tpl.affine, tpl.shape, 6.0) * tpl.mask
                      for n in p.networks], axis=-1).astype(np.float32)
    truth.mkdir(parents=True)
    write_nifti(_img(group, tpl.affine, code=4), truth / "group_maps.nii.gz")

    res = res_label(p.template_resolution)
    jobs = [(si, sub, int(label), p, bids, truth) for si, (sub, label)
            in enumerate(zip(subjects, labels))]
    rows = []
    if n_jobs > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs))) as pool:
            for i, row in enumerate(pool.map(_one_subject_job, jobs)):
                rows.append(row)
                if progress is not None:
                    progress(i + 1, n_sub, row["participant_id"])
    else:
        for i, job in enumerate(jobs):
            rows.append(_one_subject_job(job))
            if progress is not None:
                progress(i + 1, n_sub, rows[-1]["participant_id"])

    _write_top_level(bids, p, subjects, labels, ages, sexes, res)
    _write_tsv(truth / "labels.tsv", pd.DataFrame(rows))
    _write_json(truth / "truth.json", _truth_description(p, subjects))
    return subjects


def _one_subject_job(job) -> dict:
    si, sub, label, p, bids, truth = job
    return _one_subject(si, sub, label, p, bids, truth)


def _one_subject(si: int, sub: str, label: int, p: SynthParams, bids: Path, truth: Path) -> dict:
    """Everything of one subject; its randomness comes only from (seed, subject index)."""
    tpl = template_model(p.template_resolution, p.t1w_voxel_size)
    coords = load_network_coordinates()
    sessions = [None] if p.n_sessions == 1 else list(range(1, p.n_sessions + 1))
    runs = [None] if p.n_runs == 1 else list(range(1, p.n_runs + 1))
    res = res_label(p.template_resolution)
    fmriprep = bids / "derivatives" / "fmriprep"
    rng = np.random.default_rng([p.seed, 3, si])
    amp = 1.0 + p.amplitude_sd * rng.standard_normal(len(p.networks))
    effect = bool(label == 1 and not p.null)
    if effect:
        for j, n in enumerate(p.networks):
            if n in p.effect_networks:
                amp[j] += p.effect_size * p.amplitude_sd
    shifts = rng.normal(0.0, p.shift_mm, (len(p.networks), 3))
    maps = np.stack([
        amp[j] * render_gaussians(coords.loc[coords["network"] == n, ["x", "y", "z"]]
                                  .to_numpy() + shifts[j], tpl.affine, tpl.shape, 6.0)
        * tpl.mask for j, n in enumerate(p.networks)], axis=-1).astype(np.float32)
    write_nifti(_img(maps, tpl.affine, code=4), truth / f"sub-{sub}" / f"sub-{sub}_maps.nii.gz")
    row = {"participant_id": f"sub-{sub}", "responder": int(label),
           "effect_applied": int(effect)}
    row.update({f"amplitude_{n}": float(a) for n, a in zip(p.networks, amp)})
    row.update({f"shift_{n}_{ax}": float(s) for n, sh in zip(p.networks, shifts)
                for ax, s in zip("xyz", sh)})

    # ---- anatomy
    if p.space == "native":
        a_t1_to_tpl = random_affine(rng, 5.0, 8.0, scale=0.05, shear=0.03)
        t1_orient = orientation(si % 3, 12.0 if si % 2 else 0.0)
    else:
        a_t1_to_tpl = np.eye(4)
        t1_orient = np.eye(3)
    head = tpl.t1_hi > 0.05 * tpl.t1_hi.max()
    corners_tpl = bounding_corners(tpl.t1_hi.shape, tpl.t1_hi_affine, head)
    inv_a = np.linalg.inv(a_t1_to_tpl)
    if p.space == "template":
        t1_aff, t1_shape = tpl.t1_hi_affine, tpl.t1_hi.shape
    else:
        t1_aff, t1_shape = grid_around(corners_tpl @ inv_a[:3, :3].T + inv_a[:3, 3],
                                        p.t1w_voxel_size, t1_orient, 4.0)
    v2v = np.linalg.inv(tpl.t1_hi_affine) @ a_t1_to_tpl @ t1_aff
    t1 = sample(tpl.t1_hi, v2v, t1_shape)
    ijk = np.indices(t1_shape, dtype=np.float32)
    ctr = [(s - 1) / 2 for s in t1_shape]
    poly = sum(rng.uniform(-0.08, 0.08) * ((ijk[d] - ctr[d]) / max(t1_shape)) * 2
               for d in range(3))
    poly += rng.uniform(-0.05, 0.05) * (((ijk[0] - ctr[0]) / max(t1_shape)) * 2) ** 2
    t1 = t1 * np.exp(poly) + rng.normal(0, 0.015 * tpl.t1_hi.max(), t1_shape)
    t1 = np.clip(t1 / tpl.t1_hi.max() * 1000.0, 0, 32000).round().astype(np.int16)
    anat_dir = bids / f"sub-{sub}" / (f"ses-{sessions[0]:02d}" if sessions[0] else "") / "anat"
    t1_name = f"sub-{sub}" + (f"_ses-{sessions[0]:02d}" if sessions[0] else "") + "_T1w"
    code = 4 if p.space == "template" else 1
    write_nifti(_img(t1, t1_aff, code=code), anat_dir / f"{t1_name}.nii.gz")
    _write_json(anat_dir / f"{t1_name}.json",
                {"Modality": "MR", "MagneticFieldStrength": 3,
                 "Manufacturer": "dpnbids-synth", "RepetitionTime": 2.3,
                 "EchoTime": 0.00298, "InversionTime": 0.9, "FlipAngle": 9})
    np.savetxt(truth / f"sub-{sub}" / f"sub-{sub}_from-T1w_to-template_affine.txt",
               a_t1_to_tpl, fmt="%.10f")
    if p.space == "template":
        adir = fmriprep / f"sub-{sub}" / "anat"
        base = f"sub-{sub}_space-{SPACE}_res-{res}"
        t1d = tpl.t1 / tpl.t1.max() * 1000.0
        write_nifti(_img(t1d.astype(np.float32), tpl.affine, code=4),
                    adir / f"{base}_desc-preproc_T1w.nii.gz")
        write_nifti(_img(tpl.mask.astype(np.uint8), tpl.affine, code=4),
                    adir / f"{base}_desc-brain_mask.nii.gz")

    # ---- functional runs
    for ses in sessions:
        for run in runs:
            _one_run(bids, truth, fmriprep, p, tpl, rng, sub, ses, run, maps,
                     a_t1_to_tpl, si, res)
    return row


class _RunSignal:
    """Template-support signal (V, T) of one run for voxel-specific time offsets."""

    def __init__(self, p, tpl, maps, freqs, coefs, pf, pc, onsets):
        # neuronal (network) BOLD lives in grey matter: weight the maps by P(GM), so white
        # matter and CSF carry noise and physiology, as the confound model assumes
        self.brain_maps = maps[tpl.support] * tpl.gm[tpl.support, None]  # (V, N)
        self.base = tpl.baseline[tpl.support]
        self.pw = tpl.physio_weight[tpl.support]
        self.p, self.freqs, self.coefs, self.pf, self.pc = p, freqs, coefs, pf, pc
        self.onsets = onsets

    def __call__(self, offsets):
        p = self.p
        out = np.empty((len(self.base), len(self.onsets)), dtype=np.float32)
        for off in np.unique(offsets):
            sel = offsets == off
            x = evaluate_signals(self.freqs, self.coefs, self.onsets + off)  # (N, T)
            ph = evaluate_signals(self.pf, self.pc, self.onsets + off)[0]
            mod = 1.0 + p.signal_percent / 100.0 * (self.brain_maps[sel] @ x)
            mod += p.physio_percent / 100.0 * self.pw[sel, None] * ph[None, :]
            out[sel] = self.base[sel, None] * mod
        return out


def _bold_grid(p, tpl, rng, si, a_t1_to_tpl):
    """(BOLD-to-T1w affine, BOLD grid affine, BOLD grid shape) of one run."""
    if p.space != "native":
        return np.eye(4), tpl.affine, tpl.shape
    b_bold_to_t1 = random_affine(rng, 3.0, 4.0)
    orient = orientation(1 if si % 2 else 0, 10.0 if si % 3 == 1 else 0.0)
    to_bold = np.linalg.inv(b_bold_to_t1) @ np.linalg.inv(a_t1_to_tpl)
    box = bounding_corners(tpl.shape, tpl.affine, tpl.support)
    bold_aff, bold_shape = grid_around(box @ to_bold[:3, :3].T + to_bold[:3, 3],
                                       p.bold_voxel_size, orient, 8.0)
    return b_bold_to_t1, bold_aff, bold_shape


def _acquire(tpl, sig, motion, bold_aff, bold_shape, bold_to_tpl, noise_sd, rng):
    """Raw int16 BOLD: the moving template-space signal ``sig`` (V, T) imaged on the grid."""
    n_t = sig.shape[1]
    vol = np.zeros(tpl.shape, dtype=np.float32)
    raw = np.zeros(tuple(bold_shape) + (n_t,), dtype=np.float32, order="F")
    centre = bold_aff[:3, :3] @ ((np.array(bold_shape) - 1) / 2) + bold_aff[:3, 3]
    inv_tpl = np.linalg.inv(tpl.affine)
    # BOLD voxels that can see the head: the support at volume 0, dilated for motion
    v2v0 = inv_tpl @ bold_to_tpl @ bold_aff
    support_bold = sample(tpl.support.astype(np.float32), v2v0, bold_shape) > 0.5
    support_bold = ndimage.binary_dilation(support_bold, iterations=1)
    idx = np.argwhere(support_bold).T.astype(np.float64)  # (3, Vb)
    vals = np.empty((idx.shape[1], n_t), dtype=np.float32)
    for j in range(n_t):
        vol[tpl.support] = sig[:, j]
        minv = np.linalg.inv(motion_matrix(motion[j], centre))
        v2v = inv_tpl @ bold_to_tpl @ minv @ bold_aff
        coords = v2v[:3, :3] @ idx + v2v[:3, 3:4]
        vals[:, j] = ndimage.map_coordinates(vol, coords, order=1, mode="constant", cval=0.0,
                                             prefilter=False)
    vals += noise_sd * rng.standard_normal(vals.shape, dtype=np.float32)
    raw[support_bold] = vals
    return np.clip(np.rint(raw), 0, 32767).astype(np.int16, order="F")


def _one_run(bids, truth, fmriprep, p, tpl, rng, sub, ses, run, maps, a_t1_to_tpl, si, res):
    ent = _run_entities(p, sub, ses, run)
    n_t = p.n_volumes
    onsets = np.arange(n_t) * p.tr
    duration = n_t * p.tr
    freqs, coefs = band_limited_coefficients(rng, len(p.networks), duration,
                                             correlation=p.network_correlation)
    scale = evaluate_signals(freqs, coefs, onsets).std(axis=1)
    coefs = coefs / scale[:, None]
    pf, pc = band_limited_coefficients(rng, 1, duration, band=(0.01, 0.2))
    pc = pc / evaluate_signals(pf, pc, onsets).std(axis=1)[:, None]
    motion = motion_params(rng, n_t, p.motion_mm)
    b_bold_to_t1, bold_aff, bold_shape = _bold_grid(p, tpl, rng, si, a_t1_to_tpl)
    bold_to_tpl = a_t1_to_tpl @ b_bold_to_t1
    n_slices = bold_shape[2]
    st = slice_timing(n_slices, p.tr, p.slice_order)

    # slice (of the BOLD grid) containing each template voxel, without motion
    tpl2bold_vox = np.linalg.inv(bold_aff) @ np.linalg.inv(bold_to_tpl) @ tpl.affine
    kvox = np.argwhere(tpl.support) @ tpl2bold_vox[2, :3] + tpl2bold_vox[2, 3]
    offsets = st[np.clip(np.rint(kvox).astype(int), 0, n_slices - 1)]
    signal = _RunSignal(p, tpl, maps, freqs, coefs, pf, pc, onsets)
    noise_sd = p.noise_level * p.signal_percent / 100.0 * tpl.baseline[tpl.mask].mean()

    # ---- raw BOLD: slice-timed, moved, resampled to the BOLD grid
    raw = _acquire(tpl, signal(offsets), motion, bold_aff, bold_shape, bold_to_tpl, noise_sd,
                   rng)
    func_dir = bids / f"sub-{sub}" / (f"ses-{ses:02d}" if ses else "") / "func"
    code = 4 if p.space == "template" else 1
    write_nifti(_img(raw, bold_aff, code=code, tr=p.tr), func_dir / f"{ent}_bold.nii.gz")
    _write_json(func_dir / f"{ent}_bold.json",
                {"TaskName": p.task, "RepetitionTime": p.tr, "SliceTiming": [float(s) for s in st],
                 "SliceEncodingDirection": "k", "EchoTime": 0.03, "FlipAngle": 90,
                 "MagneticFieldStrength": 3, "Manufacturer": "dpnbids-synth",
                 "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05})

    # ---- truth for the run
    tdir = truth / f"sub-{sub}"
    tc = pd.DataFrame(evaluate_signals(freqs, coefs, onsets).T, columns=list(p.networks))
    tc["physio"] = evaluate_signals(pf, pc, onsets)[0]
    tc.insert(0, "onset", onsets)
    _write_tsv(tdir / f"{ent}_timecourses.tsv", tc)
    mot = pd.DataFrame(motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    _write_tsv(tdir / f"{ent}_motion.tsv", mot)
    _write_tsv(tdir / f"{ent}_slice_timing.tsv",
               pd.DataFrame({"slice": np.arange(n_slices), "offset": st}))
    np.savetxt(tdir / f"{ent}_from-bold_to-T1w_affine.txt", b_bold_to_t1, fmt="%.10f")
    if p.space == "template":
        _write_fmriprep_run(fmriprep, p, tpl, rng, sub, ses, ent, res, signal, noise_sd, motion)


def _write_fmriprep_run(fmriprep, p, tpl, rng, sub, ses, ent, res, signal, noise_sd, motion):
    """fMRIPrep-style derivatives of one run (template mode): no motion, no slice timing."""
    clean = signal(np.zeros(tpl.support.sum()))
    clean += noise_sd * rng.standard_normal(clean.shape, dtype=np.float32)
    data = np.zeros(tpl.shape + (p.n_volumes,), dtype=np.float32, order="F")
    data[tpl.support] = clean
    fdir = fmriprep / f"sub-{sub}" / (f"ses-{ses:02d}" if ses else "") / "func"
    stem = f"{ent}_space-{SPACE}_res-{res}"
    write_nifti(_scaled_int16(data, tpl.affine, tr=p.tr),
                fdir / f"{stem}_desc-preproc_bold.nii.gz")
    _write_json(fdir / f"{stem}_desc-preproc_bold.json",
                {"RepetitionTime": p.tr, "TaskName": p.task, "SkullStripped": False,
                 "SliceTimingCorrected": True, "StartTime": 0.0,
                 "Resolution": f"{p.template_resolution:g} mm isotropic"})
    write_nifti(_img(tpl.mask.astype(np.uint8), tpl.affine, code=4),
                fdir / f"{stem}_desc-brain_mask.nii.gz")
    conf, meta = fmriprep_confounds(data, motion, tpl)
    _write_tsv(fdir / f"{ent}_desc-confounds_timeseries.tsv", conf)
    _write_json(fdir / f"{ent}_desc-confounds_timeseries.json", meta)


def _write_top_level(bids, p, subjects, labels, ages, sexes, res):
    _write_json(bids / "dataset_description.json", {
        "Name": "dpnbids synthetic resting-state dataset",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["dpnbids-synth"],
        "GeneratedBy": [{"Name": "dpnbids-synth", "Version": __version__,
                         "Description": "Synthetic data from the generative model in "
                                        "dpnbids.sim.generator"}],
    })
    mode = "null (labels independent of the images)" if p.null else (
        f"planted (effect_size={p.effect_size:g} SD on {', '.join(p.effect_networks)})")
    (bids / "README").write_text(
        "Synthetic resting-state fMRI dataset written by dpnbids-synth.\n\n"
        f"{len(subjects)} participants ({p.n_responders} responders, {p.n_nonresponders} "
        f"non-responders), seed {p.seed}, {p.space} space, mode: {mode}.\n"
        "The generative model is documented in the dpnbids.sim.generator module; the ground "
        "truth is in the sibling folder <this folder>_truth.\n")
    (bids / "CHANGES").write_text("1.0.0 synthetic\n  - Generated by dpnbids-synth.\n")
    _write_tsv(bids / "participants.tsv", pd.DataFrame({
        "participant_id": [f"sub-{s}" for s in subjects],
        "responder": labels.astype(int), "age": ages.astype(int), "sex": sexes}))
    _write_json(bids / "participants.json", {
        "participant_id": {"Description": "Participant identifier"},
        "responder": {"Description": "Response to intravenous lidocaine (>= 50% pain "
                                     "reduction); synthetic label",
                      "Levels": {"1": "responder", "0": "non-responder"}},
        "age": {"Description": "Age at scan (synthetic)", "Units": "year"},
        "sex": {"Description": "Sex (synthetic)", "Levels": {"F": "female", "M": "male"}},
    })
    if p.space == "template":
        _write_json(bids / "derivatives" / "fmriprep" / "dataset_description.json", {
            "Name": "fMRIPrep-style outputs (synthetic)",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "dpnbids-synth", "Version": __version__,
                             "Description": "fMRIPrep-style derivatives simulated without "
                                            "motion, slice-timing corrected to time 0"}],
            "SourceDatasets": [{"URL": "bids::"}],
        })


def _truth_description(p: SynthParams, subjects) -> dict:
    return {
        "params": dataclasses.asdict(p),
        "generator": {"name": "dpnbids-synth", "version": __version__},
        "space": SPACE,
        "template_resolution_mm": p.template_resolution,
        "networks": list(p.networks),
        "effect_rule": (
            "amplitude a_sn = 1 + amplitude_sd * N(0,1); responders (unless null) get "
            "+ effect_size * amplitude_sd on every network in effect_networks, so "
            "effect_size is Cohen's d of the true map amplitude between classes."),
        "subjects": [f"sub-{s}" for s in subjects],
        "files": {
            "labels.tsv": "participant_id, responder, effect_applied, amplitude_<net>, "
                          "shift_<net>_<x|y|z> (mm)",
            "group_maps.nii.gz": "4D group network maps G_n (template grid), order = networks",
            "sub-XX/sub-XX_maps.nii.gz": "4D true subject maps S_sn (template grid)",
            "sub-XX/sub-XX_from-T1w_to-template_affine.txt":
                "4x4 A, x_template = A @ x_T1w (world mm)",
            "sub-XX/<run>_from-bold_to-T1w_affine.txt": "4x4 B, x_T1w = B @ x_BOLD (world mm)",
            "sub-XX/<run>_timecourses.tsv": "x_n(t_j) at volume onsets, and physio",
            "sub-XX/<run>_motion.tsv": "trans_x..rot_z (mm, rad), relative to volume 0",
            "sub-XX/<run>_slice_timing.tsv": "acquisition offset (s) of each BOLD slice",
        },
    }
