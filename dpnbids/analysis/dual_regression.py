"""Dual regression (FSL ``dual_regression`` conventions) in vectorised numpy.

Stage 1 (spatial regression): each volume of the subject's data, demeaned over
voxels, is regressed on the group maps, each demeaned over voxels
(``fsl_glm --demean`` with the maps as design). The coefficients are the
subject's time courses, shape (T, K).

Stage 2 (temporal regression): the stage-1 time courses, demeaned and (with
``des_norm``, FSL's ``--des_norm``) scaled to unit standard deviation, are
regressed on each voxel's time series, demeaned over time. The coefficients
are the subject's spatial maps (parameter estimates, shape (K, V)); their
GLM t-statistics are converted to z-statistics with the residual degrees of
freedom ``r - K``, ``r`` the run's temporal degrees of freedom after denoising
(its numerical rank, or the participant level's record): ``T - K - 1`` for an
undenoised run, as ``fsl_glm --out_z`` assumes, far fewer after a band-pass.
A run with ``r <= K`` is refused.

Which output feeds the classifier is decided by the caller
(:data:`dpnbids.group.level.CLASSIFIER_FEATURE`).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import nibabel as nib
import numpy as np
import pandas as pd
from scipy.special import ndtri, stdtr

from dpnbids.analysis.masking import group_mask_for, img_to_maps, maps_to_img
from dpnbids.exceptions import DimensionError, InputError
from dpnbids.nifti_io import save_nifti

LOGGER = logging.getLogger(__name__)

__all__ = ["DualRegressionResult", "dual_regression", "dual_regression_many", "t_to_z",
           "temporal_rank"]


@dataclass
class DualRegressionResult:
    """Outputs of :func:`dual_regression` for one subject/run.

    Attributes
    ----------
    timecourses : ndarray, shape (T, K)
        Stage-1 time courses (raw coefficients, before demeaning/normalising).
    maps : ndarray, shape (K, V)
        Stage-2 parameter estimates.
    zmaps : ndarray, shape (K, V)
        Stage-2 z-statistics.
    dof : int
        Residual degrees of freedom of stage 2.
    """

    timecourses: np.ndarray
    maps: np.ndarray
    zmaps: np.ndarray
    dof: int


_T_GRID_STEP = 1e-3
_T_GRID_MAX = 40.0


def _t_to_z_exact(t, dof):
    return -np.sign(t) * ndtri(stdtr(float(dof), -np.abs(t)))


def t_to_z(t, dof) -> np.ndarray:
    """Convert Student t values with ``dof`` degrees of freedom to standard-normal z.

    Uses the tail on the side of ``-|t|`` so large statistics keep full
    precision: ``z = -sign(t) * ndtri(stdtr(dof, -|t|))``. For large arrays the
    (smooth, odd, monotonic) map is evaluated exactly on a grid of |t| with
    step 1e-3 up to 40 and interpolated linearly (absolute error < 1e-7 for
    dof >= 3; |t| > 40 is computed exactly), which is ~30x faster than calling
    the incomplete beta function for every voxel.
    """
    t = np.asarray(t, dtype=np.float64)
    if t.size < 100_000:
        return _t_to_z_exact(t, dof)
    grid_z = _t_to_z_exact(np.arange(0, _T_GRID_MAX + 2 * _T_GRID_STEP, _T_GRID_STEP), dof)
    a = np.abs(t)
    pos = np.minimum(a, _T_GRID_MAX) / _T_GRID_STEP
    idx = pos.astype(np.intp)
    frac = pos - idx
    z = grid_z[idx]
    z += frac * (grid_z[idx + 1] - z)
    far = a > _T_GRID_MAX
    if far.any():
        z[far] = _t_to_z_exact(a[far], dof)
    z *= np.sign(t)
    return z


def _float(a):
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def _check(data, group_maps):
    data = _float(data)
    group_maps = _float(group_maps)
    if data.ndim != 2:
        raise DimensionError(f"data must be 2D (time points, voxels); received shape "
                             f"{data.shape}. Mask the 4D image first.")
    if group_maps.ndim != 2:
        raise DimensionError(f"group_maps must be 2D (components, voxels); received shape "
                             f"{group_maps.shape}.")
    t, v = data.shape
    k, vg = group_maps.shape
    if v != vg:
        raise DimensionError(f"data have {v} voxels but group_maps have {vg}; expected the "
                             "same in-mask voxels. Use the group mask, space and resolution "
                             "of the group maps.")
    if t < k + 2:
        raise DimensionError(f"dual regression of {k} components needs at least {k + 2} time "
                             f"points; received {t}. Use a run with more volumes or fewer "
                             "components (`n_components`).")
    if v <= k:
        raise DimensionError(f"stage 1 regresses {k} maps over {v} voxels; it needs more "
                             "voxels than components.")
    return data, group_maps


class _Stage1:
    """Precomputed stage-1 operator for a set of group maps (reused across subjects)."""

    def __init__(self, group_maps, *, demean, dtype):
        g = group_maps.astype(dtype, copy=True)
        if demean:
            g -= g.mean(axis=1, keepdims=True)
        gram = (g @ g.T).astype(np.float64)
        if np.linalg.matrix_rank(gram) < g.shape[0]:
            raise InputError("the group maps are linearly dependent (a map is constant or a "
                             "copy of others); stage 1 is undefined. Check the maps file.")
        self.g = g
        self.gram_inv = np.linalg.inv(gram)
        self.demean = demean

    def __call__(self, data):
        # Demeaning each volume over voxels is implicit: the demeaned maps sum to
        # zero over voxels, so G_c (y - mean(y)) == G_c y.
        return (data @ self.g.T).astype(np.float64) @ self.gram_inv


#: Eigenvalues of the run's (T x T) gram below this fraction of the largest are outside
#: the span the denoising left (the band-pass and confound regression zero them exactly;
#: float32 storage leaves them ~1e-12 of the largest).
RANK_RTOL = 1e-6


def temporal_rank(data, *, demean: bool = True) -> int:
    """Numerical rank of a run's (T, V) data in time: its temporal degrees of freedom.

    A denoised run (band-pass, confound regression; :mod:`dpnbids.preproc.dof`)
    keeps far fewer than ``T - 1``: 110 volumes at TR 2 s keep about 19.
    """
    x = np.asarray(data)
    if demean:
        x = x - x.mean(axis=0, keepdims=True)
    gram = (x @ x.T).astype(np.float64)
    lam = np.linalg.eigvalsh((gram + gram.T) / 2)
    return int(np.sum(lam > RANK_RTOL * lam.max())) if lam.size and lam.max() > 0 else 0


def _residual_dof(data, k, dof, demean) -> int:
    """Stage 2's residual dof from the run's temporal dof; refuses K >= that dof."""
    t = data.shape[0]
    full = t - (1 if demean else 0)
    if dof is None:
        dof = temporal_rank(data, demean=demean)
    elif not 1 <= int(dof) <= full:
        raise InputError(f"dof={dof} is not a number of temporal degrees of freedom of a "
                         f"{t}-volume run; expected 1..{full} (TemporalDegreesOfFreedom of the "
                         "participant level), or None to measure it.")
    dof = int(dof)
    if k > dof:
        raise DimensionError(
            f"dual regression of {k} components (group_maps) needs at least {k} temporal "
            f"degrees of freedom, but the run keeps {dof} (dof; {t} volumes before the "
            "band-pass and confound regression). Its stage-2 fit would be singular. Use at "
            f"most {dof - 1} components (`n_components`), longer runs, or a lighter "
            "`denoise_strategy`.")
    if k == dof:
        warnings.warn(f"dual regression of {k} components on a run that keeps {dof} temporal "
                      "degrees of freedom leaves none for the residuals: the stage-2 maps fit "
                      "exactly and the z-statistics are set to 0. Use fewer components "
                      "(`n_components`) for z-statistics.", RuntimeWarning, stacklevel=4)
    return dof - k


def _dual_regression(data, stage1, *, des_norm, demean, dof=None) -> DualRegressionResult:
    t, v = data.shape
    k = stage1.g.shape[0]
    dof = _residual_dof(data, k, dof, demean)
    tc = stage1(data)  # (T, K) float64
    design = tc - tc.mean(axis=0, keepdims=True) if demean else tc.copy()
    if des_norm:
        std = design.std(axis=0, ddof=1, keepdims=True)
        if np.any(~(std > 0)):
            raise InputError("a stage-1 time course is constant, so stage 2 is undefined; "
                             "the group maps may not overlap this subject's mask.")
        design = design / std
    xtx = design.T @ design
    if np.linalg.matrix_rank(xtx) < k:
        raise InputError("the stage-1 time courses are collinear; stage 2 is undefined. The "
                         "run may be too short or the group maps too similar.")
    xtx_inv = np.linalg.inv(xtx)
    dtype = data.dtype
    design_d = design.astype(dtype)
    resid = data - data.mean(axis=0, keepdims=True) if demean else data.copy()
    beta = xtx_inv.astype(dtype) @ (design_d.T @ resid)  # (K, V)
    resid -= design_d @ beta  # residuals, in place
    sigma = np.sqrt(np.einsum("tv,tv->v", resid, resid).astype(np.float64) / max(dof, 1))
    del resid
    se = (np.sqrt(np.diag(xtx_inv))[:, None] * sigma[None, :]).astype(dtype)
    tstat = np.divide(beta, se, out=np.zeros_like(beta), where=se > 0)
    del se
    zmaps = (t_to_z(tstat, dof) if dof > 0 else np.zeros_like(tstat)).astype(dtype)
    return DualRegressionResult(timecourses=tc.astype(dtype), maps=beta, zmaps=zmaps, dof=dof)


def dual_regression(data, group_maps, *, des_norm: bool = True,
                    demean: bool = True, dof=None) -> DualRegressionResult:
    """Dual regression of one subject's data against group maps.

    Parameters
    ----------
    data : array_like, shape (T, V)
        The subject's in-mask data (variance-normalised per voxel in dpnbids,
        as the group ICA input). float32 stays float32.
    group_maps : array_like, shape (K, V)
        Group spatial maps on the same voxels.
    des_norm : bool
        Scale the demeaned stage-1 time courses to unit standard deviation
        before stage 2 (FSL ``--des_norm``), so stage-2 estimates carry the
        network amplitude in data units.
    demean : bool
        Demean data and design in both stages (FSL ``--demean``): stage 1 over
        voxels, stage 2 over time.
    dof : int, optional
        The run's temporal degrees of freedom after denoising (the participant
        level's ``TemporalDegreesOfFreedom``). Default: measured as the
        numerical rank of the (demeaned) data (:func:`temporal_rank`). The
        stage-2 residual dof, and so the z-statistics, are ``dof - K``, not
        ``T - K - 1``: a band-passed, confound-regressed run has far fewer.

    Returns
    -------
    DualRegressionResult
        ``timecourses`` (T, K) from stage 1; ``maps`` (K, V) stage-2 parameter
        estimates; ``zmaps`` (K, V) stage-2 z-statistics; ``dof`` (residual).

    Raises
    ------
    DimensionError
        Arrays are not 2D, voxel counts differ, T < K + 2, or K >= the run's
        temporal dof (stage 2 would be singular).
    """
    data, group_maps = _check(data, group_maps)
    dtype = np.result_type(data.dtype, np.float32)
    stage1 = _Stage1(group_maps, demean=demean, dtype=dtype)
    return _dual_regression(data.astype(dtype, copy=False), stage1, des_norm=des_norm,
                            demean=demean, dof=dof)


def dual_regression_many(loader: Callable[[int], np.ndarray], n_subjects: int, group_maps, *,
                         des_norm: bool = True, demean: bool = True
                         ) -> Iterator[tuple[int, DualRegressionResult]]:
    """Dual regression of ``n_subjects`` subjects, one at a time (a generator).

    The stage-1 operator is computed once. Only one subject's data and result
    are alive at a time, unless the caller keeps them.

    Yields
    ------
    (i, DualRegressionResult)
        For ``i`` in ``range(n_subjects)``; ``loader(i) -> (T_i, V)``.
    """
    group_maps = _float(group_maps)
    stage1 = None
    for i in range(int(n_subjects)):
        data, group_maps = _check(loader(i), group_maps)
        if stage1 is None:
            dtype = np.result_type(data.dtype, np.float32)
            stage1 = _Stage1(group_maps, demean=demean, dtype=dtype)
        yield i, _dual_regression(data.astype(stage1.g.dtype, copy=False), stage1,
                                  des_norm=des_norm, demean=demean)


# --------------------------------------------------------------------------- files
def dual_regress_file(bold_file, group_maps_file, mask_file, out_dir=".") -> dict:
    """Dual regression of one run against 4D group maps, within ``mask_file``."""

    out_dir = Path(out_dir)
    maps_img = nib.load(str(group_maps_file))
    bold = nib.load(str(bold_file))
    mask_img = nib.load(str(mask_file))
    if maps_img.shape[:3] != bold.shape[:3] or not np.allclose(maps_img.affine, bold.affine,
                                                                atol=1e-3):
        # a new patient's fMRIPrep run on its own grid (e.g. 3x3x4 mm, no res-): put it on
        # the maps' analysis grid, as the group level did for the training cohort
        from nilearn.image import resample_to_img

        LOGGER.info("%s: resampling onto the grid of %s", Path(bold_file).name,
                    Path(group_maps_file).name)
        ref = nib.Nifti1Image(np.zeros(maps_img.shape[:3], np.uint8), maps_img.affine)
        kw = dict(interpolation="linear", force_resample=True, copy_header=True)
        mask_img = resample_to_img(mask_img, ref, **kw)
        bold = resample_to_img(bold, ref, **kw)
    mask = np.asarray(mask_img.dataobj) > 0.5
    gmask_path = group_mask_for(group_maps_file)
    if gmask_path is not None:
        gmask = np.asarray(nib.load(str(gmask_path)).dataobj)
        if gmask.shape != mask.shape:
            raise DimensionError(f"group mask {gmask_path.name} (grid {gmask.shape}) does not "
                                 f"match {Path(bold_file).name} (grid {mask.shape}).")
        mask &= gmask > 0.5
    # as FSL's dual_regression: the data are not variance-normalised (that would erase
    # the amplitude the classifier needs); they are in percent signal change already
    data = np.ascontiguousarray(np.asarray(bold.dataobj, dtype=np.float32)[mask].T)
    group = img_to_maps(maps_img, mask)
    result = dual_regression(data, group, des_norm=True)
    cols = [f"component_{k:02d}" for k in range(group.shape[0])]
    tc_file = out_dir / "stage1_timecourses.tsv"
    pd.DataFrame(result.timecourses, columns=cols).to_csv(tc_file, sep="\t", index=False)
    pe_file = out_dir / "stage2_pe.nii.gz"
    z_file = out_dir / "stage2_z.nii.gz"
    save_nifti(maps_to_img(result.maps, mask, bold.affine), str(pe_file))
    save_nifti(maps_to_img(result.zmaps, mask, bold.affine), str(z_file))
    return {"timecourses": str(tc_file), "maps_pe": str(pe_file), "maps_z": str(z_file)}
