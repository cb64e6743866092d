"""Anatomical preprocessing of one T1w image with antspyx.

Steps (:func:`preprocess_anat`)
-------------------------------
1. **Checks at the door** (:func:`load_t1w`, built on
   :func:`dpnbids.preproc.checks.load_anat`): the file must be readable (a
   corrupt or truncated ``.nii.gz`` is an :class:`~dpnbids.exceptions.InputError`),
   3D (a 4D image with a single volume is accepted and squeezed), finite and
   not constant. Scaled integers (``scl_slope``) are applied by nibabel;
   oblique and non-RAS grids are kept as they are.
2. **N4 bias-field correction**, estimated on a 2 mm copy of the head (masked
   by an intensity head mask) and applied to the native grid. The bias field
   is smooth (B-spline, 200 mm control-point spacing), so estimating it at
   2 mm loses nothing and is an order of magnitude faster.
3. **Brain extraction** by template registration: the template head
   (``T1w``) is registered to the 2 mm N4 image with
   ``antsRegistrationSyNQuick[s]`` (rigid + affine + SyN); the template brain
   mask is warped back onto the native grid (linear interpolation, threshold
   0.5), restricted to voxels brighter than 5 % of the median brain intensity,
   reduced to its largest connected component and hole-filled.
4. **Normalisation**: ``ants.registration(fixed=template brain at
   template_resolution, moving=T1w brain (resampled to about half the template
   voxel size), type_of_transform=registration)`` initialised with the affine
   of step 3.
5. **Tissue maps**: the template's GM/WM/CSF probability maps are warped to
   the native grid with the inverse transforms, multiplied by the brain mask
   (the priors sum to at most one, which linear interpolation keeps). They are *prior-based*
   (no Atropos refinement); they are meant for WM/CSF nuisance signals and
   aCompCor masks, where an eroded prior is what CONN/fMRIPrep use anyway.
6. **Quality figures**: the native brain mask is carried into template
   space (``std_mask``) and compared with the template brain mask (Dice,
   ``dice_std_mask``); ``registration_cost`` is ANTs' Mattes mutual
   information between the template brain and the normalised T1w brain
   (negative; more negative is better). A Dice below 0.85 adds a warning.

Transform convention
--------------------
All transforms are ANTs/ITK files in **LPS physical space** (millimetres of
the scanner frame as ITK reads the NIfTI ``sform``/``qform``).

``xfm_t1w_to_std`` is ``ants.registration(fixed=template,
moving=T1w)['fwdtransforms']``, i.e. ``[<prefix>1Warp.nii.gz,
<prefix>0GenericAffine.mat]``, in ``ants.apply_transforms`` order. Used as

>>> ants.apply_transforms(fixed=template_ref, moving=t1w_space_img,
...                       transformlist=xfm_t1w_to_std)          # doctest: +SKIP

it resamples a T1w-space image into the template. As a *point* mapping it
takes a template point ``x`` to the T1w point ``A(x + u(x))`` (the warp field
``u`` lives on the template grid and is applied first, then the affine ``A``).
Because this is a pull-back from the template grid, a BOLD series is brought
to the template in one interpolation by extending the list with the
BOLD-side transforms that map T1w points to BOLD points::

    [t1w->std warp, t1w->std affine, bold->t1w rigid (fixed=T1w, moving=BOLD
     fwdtransform), HMC affine of volume t (fixed=reference, moving=volume t)]

``xfm_std_to_t1w`` is the matching ``invtransforms``
(``[<prefix>0GenericAffine.mat, <prefix>1InverseWarp.nii.gz]``); use it with
``whichtoinvert=[True, False]`` to resample template-space images (priors,
atlases) onto the T1w grid. For points, :func:`ants.apply_transforms_to_points`
with ``xfm_t1w_to_std`` maps template points to T1w points.

Threads and seeds
-----------------
ITK's thread count is ``omp_nthreads``, set by
:func:`dpnbids.preproc.itk.pin_itk_threads` (ITK reads it once per process, at
its first filter), and every ``antsRegistration`` call is seeded with
``random_seed`` through :func:`dpnbids.preproc.itk.seeded_registration`
(``--random-seed``). With ``omp_nthreads=1`` two runs are bit-identical (the
CLI test ``tests/acceptance/test_e2e_reproducibility.py``). With more threads ITK's
multi-threaded metric sums are not order-stable: two 2-thread runs with the
same seed differed by 0.1-0.2 mm (median over brain voxels) and up to 1.5 mm
(at single voxels) in the normalisation warp, and their template-space brain
masks had Dice 0.99. Use ``omp_nthreads=1`` when bit-for-bit reproducibility
matters more than speed.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.preproc.itk import pin_itk_threads, seeded_registration

LOGGER = logging.getLogger(__name__)

#: Registration presets accepted by ``registration`` (ANTsPy names).
REGISTRATIONS = ("SyN", "SyNRA", "SyNCC", "antsRegistrationSyNQuick[s]",
                 "antsRegistrationSyN[s]", "Affine")
_BET_REGISTRATION = "antsRegistrationSyNQuick[s]"
_WORK_RESOLUTION = 2.0  # mm, grid of N4 estimation and brain extraction
_DICE_WARN = 0.85


@dataclass
class AnatResult:
    """File names and figures produced by :func:`preprocess_anat`.

    All images are NIfTI files written by ANTs. ``t1w_preproc``,
    ``t1w_brain``, ``t1w_mask`` and the ``*_probseg`` maps share the native
    grid and affine of the input T1w; ``t1w_std`` and ``std_mask`` are on the
    template grid at ``template_resolution``.
    """

    t1w_preproc: str
    t1w_brain: str
    t1w_mask: str
    gm_probseg: str
    wm_probseg: str
    csf_probseg: str
    t1w_std: str
    std_mask: str
    xfm_t1w_to_std: list[str]
    xfm_std_to_t1w: list[str]
    dice_std_mask: float
    registration_cost: float
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------- helpers
def dice(a, b) -> float:
    """Dice coefficient of two binary arrays (non-zero is foreground).

    Parameters
    ----------
    a, b : array-like of the same shape

    Returns
    -------
    float
        ``2 |a & b| / (|a| + |b|)``; 1.0 when both are empty.
    """
    a = np.asarray(a) != 0
    b = np.asarray(b) != 0
    if a.shape != b.shape:
        raise DimensionError(f"dice() needs two arrays of the same shape; got {a.shape} and "
                             f"{b.shape}. Resample one onto the grid of the other first.")
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(a, b).sum() / denom)


def load_t1w(t1w_file) -> nib.Nifti1Image:
    """Load and check a T1w image; return a float32 3D image on its own grid.

    The checks shared with the rest of dpnbids come from
    :func:`dpnbids.preproc.checks.load_anat`; registration additionally needs
    at least 8 voxels per axis, a non-constant image and an invertible affine.

    Raises
    ------
    InputError
        When the file is missing, unreadable (corrupt or truncated gzip),
        contains NaN/Inf, is all zeros or constant, is too small, or has a
        singular affine. The message names the file and says how to fix it.
    DimensionError
        Not 3D (a 4D image with a single volume is accepted and squeezed).
    """
    from dpnbids.preproc.checks import load_anat

    img = load_anat(t1w_file)
    name = Path(str(t1w_file)).name
    data = np.asarray(img.dataobj, dtype=np.float32)
    if min(data.shape) < 8:
        raise InputError(
            f"T1w file {name} has shape {data.shape}: expected a whole-head 3D volume with at "
            "least 8 voxels along each axis. Check that this is the anatomical scan.")
    if float(data.max()) <= float(data.min()):
        raise InputError(f"T1w file {name} is constant ({float(data.min())}): expected an "
                         "anatomical image. Check that the right file was given.")
    affine = img.affine
    if abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(f"T1w file {name} has a singular affine: fix the NIfTI header "
                         "(qform/sform) with the converter that wrote it (e.g. dcm2niix).")
    out = nib.Nifti1Image(data, affine)
    out.header.set_xyzt_units("mm")
    return out


def nifti_to_ants(img: nib.Nifti1Image):
    """Convert a 3D nibabel image to an ``ants.ANTsImage`` (RAS affine -> LPS header)."""
    import ants

    affine = np.asarray(img.affine, dtype=float)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    data = np.asarray(img.dataobj, dtype=np.float32)
    return ants.from_numpy(data, origin=[float(v) for v in lps[:3, 3]],
                           spacing=[float(v) for v in spacing], direction=direction)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


# --------------------------------------------------------------------- main
def _n4(native):
    """N4 on a 2 mm copy, the bias applied on the native grid: (native N4, 2 mm N4)."""
    import ants

    work = ants.resample_image(native, (_WORK_RESOLUTION,) * 3, False, 0)
    head = ants.get_mask(work, cleanup=2)
    bias_work = ants.n4_bias_field_correction(
        work, mask=head, shrink_factor=2, convergence={"iters": [50, 50, 30], "tol": 1e-4},
        return_bias_field=True)
    work_n4 = work / bias_work
    bias = ants.resample_image_to_target(bias_work, native, interp_type="linear")
    bias_np = bias.numpy()
    bias_np[~(bias_np > 1e-3)] = 1.0  # outside the work grid: leave intensities as they are
    return native.new_image_like(native.numpy() / bias_np), work_n4


def _brain_mask(t1w_n4, work_n4, tpl_head, tpl_mask_work, name, *, random_seed, tmp: Path):
    """Native-grid brain mask from the template's, registered head to head at 2 mm.

    Returns the boolean mask and the path of the head-to-head affine (in ``tmp``),
    which initialises the normalisation.
    """
    import ants

    bet = seeded_registration(tpl_head, work_n4, random_seed=random_seed,
                              type_of_transform=_BET_REGISTRATION,
                              outprefix=str(tmp / "bet_"))
    prob = ants.apply_transforms(t1w_n4, tpl_mask_work, bet["invtransforms"],
                                 interpolator="linear", whichtoinvert=[True, False])
    mask_np = prob.numpy() > 0.5
    del prob
    vals = t1w_n4.numpy()
    if mask_np.any():
        mask_np &= vals > 0.05 * float(np.median(vals[mask_np]))
    del vals
    mask_np = ndimage.binary_fill_holes(_largest_component(mask_np))
    if mask_np.sum() == 0:
        raise InputError(f"Brain extraction of {name} gave an empty mask: the image does "
                         "not look like a T1w head scan. Check the file and its header.")
    return mask_np, tmp / "bet_0GenericAffine.mat"


def _write_tissue_priors(mask, mask_np, inv, space, template_resolution, paths) -> None:
    """Template tissue priors on the native grid, one at a time (memory). The priors
    sum to at most one and linear interpolation keeps that property."""
    import ants

    from dpnbids.templates import get_template

    for kind in ("GM", "WM", "CSF"):
        prior = ants.image_read(str(get_template(space, template_resolution, kind)))
        warped = ants.apply_transforms(mask, prior, inv, interpolator="linear",
                                       whichtoinvert=[True, False])
        prob = np.clip(warped.numpy(), 0.0, 1.0) * mask_np
        del warped
        ants.image_write(mask.new_image_like(prob.astype(np.float32)),
                         str(paths[f"{kind.lower()}_probseg"]))
        del prob


#: Output file of each image preprocess_anat writes (the tissue maps: _write_tissue_priors).
_ANAT_FILES = {"t1w_preproc": "t1w_preproc.nii.gz", "t1w_brain": "t1w_brain.nii.gz",
               "t1w_mask": "t1w_mask.nii.gz", "gm_probseg": "t1w_label-GM_probseg.nii.gz",
               "wm_probseg": "t1w_label-WM_probseg.nii.gz",
               "csf_probseg": "t1w_label-CSF_probseg.nii.gz", "t1w_std": "t1w_std.nii.gz",
               "std_mask": "std_mask.nii.gz"}


def _write_anat_images(out: Path, **images) -> dict:
    """Write the given ANTs images (masks as unsigned char) to their fixed names in ``out``;
    returns every output path of :data:`_ANAT_FILES`."""
    import ants

    paths = {key: out / name for key, name in _ANAT_FILES.items()}
    for key, img in images.items():
        ants.image_write(img.clone("unsigned char") if key.endswith("mask") else img,
                         str(paths[key]))
    return paths


def _normalised(tpl, tpl_mask, tpl_brain, t1w, mask, fwd):
    """The T1w and its brain mask in template space, the mask's Dice with the template's
    and the mutual information of the normalised brain with the template brain."""
    import ants

    t1w_std = ants.apply_transforms(tpl, t1w, fwd, interpolator="linear")
    std_prob = ants.apply_transforms(tpl, mask, fwd, interpolator="linear")
    std_mask = tpl.new_image_like((std_prob.numpy() > 0.5).astype(np.float32))
    dice_std = dice(std_mask.numpy(), tpl_mask.numpy() > 0.5)
    cost = float(ants.image_mutual_information(tpl_brain, t1w_std * tpl_mask))
    return t1w_std, std_mask, dice_std, cost


def preprocess_anat(t1w_file, out_dir, *, space="MNI152NLin2009aSym", template_resolution=2.0,
                    omp_nthreads=1, random_seed=0, registration="SyN") -> AnatResult:
    """N4, brain extraction, normalisation to ``space`` and tissue maps of one T1w.

    Parameters
    ----------
    t1w_file : str or Path
        Raw T1w NIfTI (any orientation, oblique allowed, scaled integers allowed).
    out_dir : str or Path
        Folder for the outputs (created). File names are fixed
        (``t1w_preproc.nii.gz``, ``t1w_to_std_1Warp.nii.gz``, ...), so use one
        folder per T1w.
    space : str
        Template identifier understood by :func:`dpnbids.templates.get_template`.
    template_resolution : float
        Voxel size (mm) of the template grid used for registration and outputs.
    omp_nthreads : int
        ITK threads.
    random_seed : int
        Seed given to every ``antsRegistration`` call (bit-identical results
        need ``omp_nthreads=1``; see the module docstring).
    registration : str
        ANTsPy ``type_of_transform`` of the normalisation (one of
        :data:`REGISTRATIONS`). The default ``"SyN"`` is an affine stage plus
        SyN with 40x20x0 iterations.

    Returns
    -------
    AnatResult
        See the module docstring for the transform convention.

    Raises
    ------
    InputError
        Bad T1w file (see :func:`load_t1w`), unknown registration, or an empty
        brain mask.
    """
    import ants

    from dpnbids.templates import get_template

    if registration not in REGISTRATIONS:
        raise InputError(f"Unknown registration {registration!r}: expected one of "
                         f"{', '.join(REGISTRATIONS)}.")
    if omp_nthreads < 1:
        raise InputError(f"omp_nthreads must be >= 1; got {omp_nthreads}.")
    t1w_nii = load_t1w(t1w_file)
    name = Path(t1w_file).name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pin_itk_threads(omp_nthreads)
    warnings: list[str] = []

    tpl_head = ants.image_read(str(get_template(space, _WORK_RESOLUTION, "T1w")))
    tpl = ants.image_read(str(get_template(space, template_resolution, "T1w")))
    tpl_mask = ants.image_read(str(get_template(space, template_resolution, "mask")))
    tpl_mask_work = ants.image_read(str(get_template(space, _WORK_RESOLUTION, "mask")))

    t1w_n4, work_n4 = _n4(nifti_to_ants(t1w_nii))
    del t1w_nii
    # ---- brain extraction: template head -> T1w head at 2 mm
    with tempfile.TemporaryDirectory(prefix="dpnbids_bet_", dir=out) as tmp:
        mask_np, bet_affine = _brain_mask(t1w_n4, work_n4, tpl_head, tpl_mask_work, name,
                                          random_seed=random_seed, tmp=Path(tmp))
        mask = t1w_n4.new_image_like(mask_np.astype(np.float32))
        brain = t1w_n4 * mask

        # ---- normalisation: template brain <- T1w brain
        tpl_brain = tpl * tpl_mask
        step = max(float(template_resolution) / 2.0, float(min(t1w_n4.spacing)))
        moving = ants.resample_image(brain, (step,) * 3, False, 0)
        reg = seeded_registration(tpl_brain, moving, random_seed=random_seed,
                                  type_of_transform=registration,
                                  outprefix=str(out / "t1w_to_std_"),
                                  initial_transform=[str(bet_affine)])
    fwd = [str(p) for p in reg["fwdtransforms"]]
    inv = [str(p) for p in reg["invtransforms"]]

    # ---- template-space outputs and quality figures
    t1w_std, std_mask, dice_std, cost = _normalised(tpl, tpl_mask, tpl_brain, t1w_n4, mask,
                                                    fwd)
    if dice_std < _DICE_WARN:
        warnings.append(f"{name}: normalised brain mask overlaps the {space} mask with Dice "
                        f"{dice_std:.3f} (< {_DICE_WARN}); check the T1w-to-template figure.")

    paths = _write_anat_images(out, t1w_std=t1w_std, std_mask=std_mask, t1w_preproc=t1w_n4,
                               t1w_brain=brain, t1w_mask=mask)
    del brain, t1w_n4

    _write_tissue_priors(mask, mask_np, inv, space, template_resolution, paths)
    for msg in warnings:
        LOGGER.warning(msg)
    return AnatResult(**{k: str(v) for k, v in paths.items()}, xfm_t1w_to_std=fwd,
                      xfm_std_to_t1w=inv, dice_std_mask=float(dice_std),
                      registration_cost=cost, warnings=warnings)
