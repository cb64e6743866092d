"""BOLD geometry: head-motion correction, reference and mask, coregistration, resampling.

Pure functions, file in / file out, built on antspyx, nibabel and nilearn.

Conventions
-----------
* World coordinates are RAS+ millimetres (nibabel). ANTs/ITK works in LPS+; the
  helpers :func:`ras_to_ants_affine` / :func:`ants_affine_to_ras` convert, with
  ``M_lps = F @ M_ras @ F`` and ``F = diag(-1, -1, 1, 1)``.
* A "pull" transform maps a point of the *fixed* (reference / output) space to the
  point of the *moving* image to sample there; this is what ANTs stores in the
  ``.mat`` files written by registration and consumes in ``ants.apply_transforms``.
* Head-motion matrices ``M_t`` (RAS, 4x4) map reference-world to volume-world:
  ``vol_t(M_t @ x)`` resampled at reference point ``x`` is the corrected volume.
* Motion parameters (fMRIPrep column names) are ``trans_x, trans_y, trans_z`` (mm,
  the translation column of ``M_t``) and ``rot_x, rot_y, rot_z`` (radians), the
  extrinsic x-y-z Euler angles of the rotation block, ``R = Rz @ Ry @ Rx``, all in
  RAS world axes, relative to the HMC reference.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from dpnbids.exceptions import InputError
from dpnbids.nifti_io import save_nifti
from dpnbids.preproc.itk import pin_itk_threads, seeded_registration

LOGGER = logging.getLogger(__name__)

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


# --------------------------------------------------------------------------------------
# RAS <-> ANTs helpers
# --------------------------------------------------------------------------------------
def ras_to_ants_affine(matrix: np.ndarray) -> np.ndarray:
    """Convert a 4x4 RAS world affine to the equivalent LPS (ANTs/ITK) affine."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4):
        raise InputError(f"Expected a 4x4 affine matrix, got shape {matrix.shape}.")
    return _FLIP @ matrix @ _FLIP


def ants_affine_to_ras(matrix: np.ndarray) -> np.ndarray:
    """Convert a 4x4 LPS (ANTs/ITK) affine to RAS world; the inverse of
    :func:`ras_to_ants_affine` (the conversion is its own inverse)."""
    return ras_to_ants_affine(matrix)


def write_ants_affine(path, matrix_ras: np.ndarray) -> str:
    """Write a RAS 4x4 pull transform (fixed-world -> moving-world) as an ANTs ``.mat``.

    Parameters
    ----------
    path : str or Path
        Output file, ``.mat`` (ITK binary) or ``.txt``.
    matrix_ras : ndarray (4, 4)

    Returns
    -------
    str
        The path written.
    """
    import ants

    lps = ras_to_ants_affine(matrix_ras)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                    matrix=lps[:3, :3], translation=lps[:3, 3],
                                    center=np.zeros(3))
    ants.write_transform(tx, str(path))
    return str(path)


def read_ants_affine(path) -> np.ndarray:
    """Read an ANTs/ITK affine ``.mat`` as a RAS 4x4 pull transform."""
    import ants

    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=float)
    center = np.asarray(tx.fixed_parameters, dtype=float)[:3]
    a = params[:9].reshape(3, 3)
    t = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = a
    lps[:3, 3] = t + center - a @ center
    return ants_affine_to_ras(lps)


def rigid_to_params(matrix: np.ndarray) -> np.ndarray:
    """Six motion parameters (mm, radians) of a RAS rigid matrix (module conventions)."""
    from scipy.spatial.transform import Rotation

    matrix = np.asarray(matrix, dtype=float)
    rot = Rotation.from_matrix(matrix[:3, :3]).as_euler("xyz")
    return np.concatenate([matrix[:3, 3], rot])


def params_to_rigid(params) -> np.ndarray:
    """RAS 4x4 rigid matrix from six parameters; inverse of :func:`rigid_to_params`."""
    from scipy.spatial.transform import Rotation

    params = np.asarray(params, dtype=float)
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", params[3:6]).as_matrix()
    out[:3, 3] = params[:3]
    return out


def rms_displacement(matrices: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Root-mean-square displacement (mm) of each rigid matrix over a sphere.

    Uses the closed form of Jenkinson (1999) for a sphere of ``radius`` mm centred on
    the world origin: ``sqrt(r^2/5 tr(A^T A) + t^T t)`` with ``A = R - I``.
    """
    matrices = np.asarray(matrices, dtype=float)
    a = matrices[:, :3, :3] - np.eye(3)
    t = matrices[:, :3, 3]
    return np.sqrt(radius ** 2 / 5.0 * np.einsum("tij,tij->t", a, a)
                   + np.einsum("ti,ti->t", t, t))


# --------------------------------------------------------------------------------------
# Head-motion correction
# --------------------------------------------------------------------------------------
@dataclass
class HMCResult:
    """Outputs of :func:`estimate_head_motion` (see the module docstring)."""

    params: np.ndarray
    params_file: str
    matrices_file: str
    reference_file: str
    rms_displacement: np.ndarray


def _load_bold4d(bold_file):
    try:
        img = nib.load(str(bold_file))
    except Exception as exc:  # nibabel raises many kinds
        raise InputError(f"Cannot read BOLD file {bold_file}: {exc}. Expected a readable "
                         "4D NIfTI; re-export or re-download it.") from exc
    if img.ndim != 4:
        raise InputError(f"BOLD file {bold_file} has shape {img.shape}; expected a 4D "
                         "series (x, y, z, time).")
    return img


def _to_ants(data: np.ndarray, affine: np.ndarray):
    """ants image from a 3D array and its RAS affine (keeps the oblique geometry)."""
    import ants

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction_ras = affine[:3, :3] / zooms
    direction = (_FLIP[:3, :3] @ direction_ras)
    origin = _FLIP[:3, :3] @ affine[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           origin=tuple(float(v) for v in origin),
                           spacing=tuple(float(v) for v in zooms),
                           direction=direction)


def estimate_head_motion(bold_file, out_dir, *, reference="median", omp_nthreads=1,
                         random_seed=0) -> HMCResult:
    """Rigid head-motion estimation of every volume against a reference.

    Each volume is registered (6 dof, Mattes MI, 2-level pyramid with few iterations)
    to the reference with ``ants.registration``; the reference is the voxelwise median
    of the series (``reference="median"``) or the volume with the given index.

    Parameters
    ----------
    bold_file : str or Path
        4D BOLD series.
    out_dir : str or Path
    reference : "median" or int
    omp_nthreads : int
        ITK threads (:func:`dpnbids.preproc.itk.pin_itk_threads`: ITK reads the count
        once per process).
    random_seed : int
        Seeds antsRegistration's metric sampling
        (:func:`dpnbids.preproc.itk.seeded_registration`). With one thread the result is
        bit-identical for a seed; with more, ITK's threaded metric sums are not
        order-stable and the parameters differ by a few hundredths of a mm or degree
        (README, Reproducibility).

    Returns
    -------
    HMCResult
        ``params`` (T, 6), ``matrices_file`` (.npy of (T, 4, 4) RAS reference->volume),
        ``params_file`` (TSV), ``reference_file`` (median of the corrected volumes),
        ``rms_displacement`` (T,) mm.
    """
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pin_itk_threads(omp_nthreads)
    img = _load_bold4d(bold_file)
    data = np.asarray(img.dataobj, dtype=np.float32)
    n_vols = data.shape[3]
    if isinstance(reference, str):
        if reference != "median":
            raise InputError(f"reference={reference!r}; expected 'median' or a volume index.")
        ref_data = np.median(data, axis=3)
    else:
        idx = int(reference)
        if not -n_vols <= idx < n_vols:
            raise InputError(f"reference volume {idx} is out of range for {n_vols} volumes.")
        ref_data = data[..., idx]
    fixed = _to_ants(ref_data, img.affine)
    matrices = np.empty((n_vols, 4, 4))
    corrected = np.empty_like(data)
    tmp = out_dir / "_hmc_tmp"
    tmp.mkdir(exist_ok=True)
    for t in range(n_vols):
        moving = _to_ants(data[..., t], img.affine)
        reg = seeded_registration(fixed, moving, random_seed=random_seed,
                                  type_of_transform="Rigid", aff_metric="mattes",
                                  aff_sampling=32, aff_random_sampling_rate=0.3,
                                  aff_iterations=(20, 5), aff_shrink_factors=(2, 1),
                                  aff_smoothing_sigmas=(1, 0),
                                  outprefix=str(tmp / f"vol{t:04d}_"))
        matrices[t] = read_ants_affine(reg["fwdtransforms"][0])
        corrected[..., t] = reg["warpedmovout"].numpy()
        for f in reg["fwdtransforms"] + reg["invtransforms"]:
            Path(f).unlink(missing_ok=True)
    try:
        tmp.rmdir()
    except OSError:
        pass
    params = np.stack([rigid_to_params(m) for m in matrices])
    stem = Path(str(bold_file)).name.split(".")[0]
    params_file = out_dir / f"{stem}_motion.tsv"
    pd.DataFrame(params, columns=list(MOTION_COLUMNS)).to_csv(params_file, sep="\t",
                                                              index=False)
    matrices_file = out_dir / f"{stem}_hmc_matrices.npy"
    np.save(matrices_file, matrices)
    ref_img = nib.Nifti1Image(np.median(corrected, axis=3).astype(np.float32), img.affine)
    ref_img.set_qform(img.affine, code=1)
    ref_img.set_sform(img.affine, code=1)
    reference_file = out_dir / f"{stem}_hmcref.nii.gz"
    save_nifti(ref_img, reference_file)
    return HMCResult(params=params, params_file=str(params_file),
                     matrices_file=str(matrices_file), reference_file=str(reference_file),
                     rms_displacement=rms_displacement(matrices))


# --------------------------------------------------------------------------------------
# Reference and mask
# --------------------------------------------------------------------------------------
def bold_reference_and_mask(bold_file, out_dir):
    """BOLD reference (the image, or the median of a 4D series) and its brain mask.

    The mask is nilearn's ``compute_epi_mask`` (histogram-based, largest connected
    component, opening). Raises :class:`InputError` when it is empty.

    Returns
    -------
    (ref_file, mask_file) : tuple of str
    """
    from nilearn.masking import compute_epi_mask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    img = nib.load(str(bold_file))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = np.median(data, axis=3)
    ref = nib.Nifti1Image(data, img.affine)
    stem = Path(str(bold_file)).name.split(".")[0]
    ref_file = out_dir / f"{stem}_boldref.nii.gz"
    save_nifti(ref, ref_file)
    try:
        if not np.any(np.isfinite(data) & (data > 0)) or np.ptp(data) == 0:
            raise ValueError("no signal")
        mask = compute_epi_mask(ref)
        n = int(np.count_nonzero(mask.get_fdata() > 0.5))
    except ValueError:
        n = 0
    if n == 0:
        raise InputError(f"empty brain mask for the BOLD reference of {bold_file}: no voxel "
                         "passed the intensity threshold. Expected an EPI with brain "
                         "signal; check that the file is not blank or corrupt.")
    mask_file = out_dir / f"{stem}_boldmask.nii.gz"
    save_nifti(nib.Nifti1Image(mask.get_fdata().astype(np.uint8), img.affine), mask_file)
    return str(ref_file), str(mask_file)


# --------------------------------------------------------------------------------------
# Coregistration
# --------------------------------------------------------------------------------------
@dataclass
class CoregResult:
    """Outputs of :func:`coregister_bold_to_t1w`.

    ``cost_identity`` and ``cost_final`` are ``ants.image_mutual_information`` between
    the T1w brain and the BOLD reference resampled to it at header alignment and after
    registration; ANTs returns the *negative* MI, so lower is better.
    """

    xfm_file: str
    cost_identity: float
    cost_final: float
    warnings: list = field(default_factory=list)


def coregister_bold_to_t1w(bold_ref_file, t1w_brain_file, t1w_mask_file=None, out_dir=".",
                           *, dof=6, omp_nthreads=1, random_seed=0) -> CoregResult:
    """Rigid (6 dof) mutual-information registration of the BOLD reference to the T1w.

    The T1w is resampled to 2 mm isotropic first (the transform is in world space, so
    this only speeds up the search). ``xfm_file`` maps T1w-world to BOLD-world (pull),
    ready for ``ants.apply_transforms(fixed=t1w, moving=bold, transformlist=[xfm])``.

    A warning is issued when MI improves by less than 5 % over header alignment or the
    final MI is weak (``cost_final > -0.1``): "BOLD and T1w may come from different
    subjects".

    ``random_seed`` seeds the metric sampling and ``omp_nthreads`` sets ITK's threads,
    as in :func:`estimate_head_motion` (bit-identical with one thread).
    """
    import ants

    if dof != 6:
        raise InputError(f"dof={dof}; only 6 (rigid) coregistration is implemented.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pin_itk_threads(omp_nthreads)
    t1w = ants.image_read(str(t1w_brain_file))
    t1w = ants.resample_image(t1w, (2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    mask = None
    if t1w_mask_file is not None:
        mask = ants.resample_image_to_target(ants.image_read(str(t1w_mask_file)), t1w,
                                             interp_type="nearestNeighbor")
    ref = ants.image_read(str(bold_ref_file))
    at_identity = ants.resample_image_to_target(ref, t1w, interp_type="linear")
    cost_identity = float(ants.image_mutual_information(t1w, at_identity))
    reg = seeded_registration(t1w, ref, random_seed=random_seed, type_of_transform="Rigid",
                              mask=mask, aff_metric="mattes", aff_iterations=(200, 100, 50),
                              aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
                              outprefix=str(out_dir / "coreg_"))
    cost_final = float(ants.image_mutual_information(t1w, reg["warpedmovout"]))
    xfm_file = out_dir / "from-boldref_to-T1w_xfm.mat"
    Path(reg["fwdtransforms"][0]).replace(xfm_file)
    warnings = []
    improvement = (cost_identity - cost_final) / max(abs(cost_identity), 1e-12)
    if improvement < 0.05 or cost_final > -0.1:
        msg = (f"BOLD-to-T1w coregistration: MI cost {cost_identity:.3f} at header "
               f"alignment -> {cost_final:.3f} after registration; BOLD and T1w may come "
               "from different subjects, or the registration failed. Check the report.")
        LOGGER.warning(msg)
        warnings.append(msg)
    return CoregResult(xfm_file=str(xfm_file), cost_identity=cost_identity,
                       cost_final=cost_final, warnings=warnings)


# --------------------------------------------------------------------------------------
# One-shot resampling
# --------------------------------------------------------------------------------------
def resample_bold_to_std(bold_file, out_file, *, hmc_matrices_file, coreg_xfm, anat_xfms,
                         reference_img_file, interpolation="bSpline",
                         omp_nthreads=1) -> str:
    """Resample every BOLD volume once into template space.

    The default interpolation is ANTs' cubic B-spline, close to SPM's (the paper's)
    B-spline reslicing; windowed sinc (``"lanczosWindowedSinc"``, fMRIPrep's choice) is
    about 5x slower (measured 1.45 vs 0.27 s per volume onto the 2 mm template, 2 threads).

    Volume ``t`` is sampled through ``anat_xfms + [coreg_xfm, hmc_t]`` (template ->
    T1w -> BOLD reference -> volume t) with one interpolation. Volumes are streamed;
    output is float32 with the input's RepetitionTime in ``pixdim[4]``.

    Returns
    -------
    str
        ``out_file``.
    """
    import ants

    pin_itk_threads(omp_nthreads)
    img = _load_bold4d(bold_file)
    matrices = np.load(str(hmc_matrices_file))
    n_vols = img.shape[3]
    if matrices.shape != (n_vols, 4, 4):
        raise InputError(f"HMC matrices {hmc_matrices_file} have shape {matrices.shape}; "
                         f"expected ({n_vols}, 4, 4) for {bold_file}.")
    fixed = ants.image_read(str(reference_img_file))
    out = np.empty(tuple(fixed.shape) + (n_vols,), dtype=np.float32)
    out_file = Path(out_file)
    tmp = out_file.parent / f"_{out_file.name.split('.')[0]}_hmc.mat"
    base = list(anat_xfms) + ([str(coreg_xfm)] if coreg_xfm else [])
    for t in range(n_vols):
        moving = _to_ants(np.asarray(img.dataobj[..., t], dtype=np.float32), img.affine)
        write_ants_affine(tmp, matrices[t])
        warped = ants.apply_transforms(fixed=fixed, moving=moving,
                                       transformlist=base + [str(tmp)],
                                       interpolator=interpolation)
        out[..., t] = warped.numpy()
    tmp.unlink(missing_ok=True)
    ref_nib = nib.load(str(reference_img_file))
    res = nib.Nifti1Image(out, ref_nib.affine)
    res.set_qform(ref_nib.affine, code=1)
    res.set_sform(ref_nib.affine, code=1)
    zooms = ref_nib.header.get_zooms()[:3]
    res.header.set_zooms(tuple(zooms) + (float(img.header.get_zooms()[3]),))
    res.header.set_xyzt_units("mm", "sec")
    save_nifti(res, out_file)
    return str(out_file)


def resample_mask_to_std(mask_file, out_file, *, coreg_xfm, anat_xfms,
                         reference_img_file) -> str:
    """Nearest-neighbour resampling of the BOLD mask to template space."""
    import ants

    fixed = ants.image_read(str(reference_img_file))
    moving = ants.image_read(str(mask_file))
    warped = ants.apply_transforms(fixed=fixed, moving=moving,
                                   transformlist=list(anat_xfms) + [str(coreg_xfm)],
                                   interpolator="nearestNeighbor")
    ref_nib = nib.load(str(reference_img_file))
    save_nifti(nib.Nifti1Image((warped.numpy() > 0.5).astype(np.uint8), ref_nib.affine),
             out_file)
    return str(out_file)
