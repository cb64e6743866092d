"""The group-ICA estimator, with scikit-learn manners: arrays or images in, maps out.

:class:`GroupICA` chains the array-level steps of :mod:`dpnbids.analysis.ica`
(variance normalisation, MIGP group PCA, FastICA / ICASSO, sign flips) and the
automatic model order of :mod:`dpnbids.analysis.model_order`.

* :meth:`GroupICA.fit` takes 4D images or their files and a mask image, like
  nilearn's ``CanICA``, and sets ``components_img_``;
  :meth:`GroupICA.transform` runs dual regression
  (:mod:`dpnbids.analysis.dual_regression`) of each image against those maps.
* :meth:`GroupICA.fit_arrays` is the same fit on ``(T, V)`` in-mask arrays
  given by a loader, one subject in memory at a time (what the group level uses).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from dpnbids.analysis.ica import (_MAX_SEED, _check_2d, _migp, _rng, _subject_name,
                                  flip_signs, gica1_backproject, icasso, variance_normalise,
                                  zscore_rows)
from dpnbids.analysis.masking import img_to_maps, load_run_matrix, maps_to_img
from dpnbids.config import ICAConfig
from dpnbids.exceptions import DimensionError, InputError

__all__ = ["GroupICA", "SubjectMaps"]


@dataclass
class SubjectMaps:
    """Dual regression of one image against the group maps (:meth:`GroupICA.transform`)."""

    timecourses: np.ndarray  # (T, K) stage-1 time courses
    maps_img: nib.Nifti1Image  # 4D stage-2 parameter estimates, one volume per component
    zmaps_img: nib.Nifti1Image  # 4D stage-2 z-statistics
    dof: int


def _as_img(img):
    if isinstance(img, (str, os.PathLike)):
        return nib.load(str(img))
    if not hasattr(img, "affine") or not hasattr(img, "dataobj"):
        raise InputError(f"expected a 4D NIfTI image or its file; received {type(img).__name__}.")
    return img


def _mask_from_imgs(imgs, coverage: float = 0.9) -> np.ndarray:
    """Voxels with a non-constant, finite series in at least ``coverage`` of the images."""
    count = None
    for img in imgs:
        data = np.asarray(img.dataobj, dtype=np.float32)
        ok = np.isfinite(data).all(axis=-1) & (np.ptp(data, axis=-1) > 0)
        count = ok.astype(np.int32) if count is None else count + ok
    return count >= max(1, int(np.ceil(coverage * len(imgs))))


class GroupICA:
    """Group spatial ICA: variance normalisation, MIGP group PCA, FastICA/ICASSO.

    Parameters
    ----------
    n_components : int or "auto", default "auto" (the configuration's)
        Number of independent components K (``--n-components``). ``"auto"``:
        estimated while MIGP reads the runs (``dim_est``; by default the pooled
        estimate of :mod:`dpnbids.analysis.group_order`), then capped by
        ``pca_dim``, ``max_components`` and the smallest subject's temporal
        degrees of freedom after denoising; at least 1.
    pca_dim : int
        Group PCA dimension (``--pca-dim``); must be >= n_components.
    n_repeats : int
        FastICA runs clustered by ICASSO (``--ica-repeats``); 1 = a single run.
    random_state : int, Generator or None
        The only source of randomness: the MIGP subject order and every FastICA
        seed derive from it.
    internal_dim : int, optional
        MIGP internal dimension; default ``2 * pca_dim``.
    max_iter, tol : int, float
        FastICA stopping rule.
    fun : {"auto", "cube", "skew", "logcosh", "exp"}
        FastICA contrast (see :func:`fastica`).
    dim_est : {"pooled", "lap", "bic", "mdl", "aic"}
        Model-order estimator for ``n_components="auto"``: "pooled" (default) pools
        all runs, whitened in time, and counts the eigenvalues above a
        parallel-analysis noise bulk (:mod:`dpnbids.analysis.group_order`); the
        others take the median of per-run criteria (MELODIC's "lap", ...). Ignored
        for an integer ``n_components``.
    max_components : int, optional
        Extra cap on the automatic order (e.g. the cohort's smallest temporal
        dof from :mod:`dpnbids.preproc.dof`). Ignored for an integer
        ``n_components``.
    mask : array_like of bool, 3D, optional
        Group mask whose True voxels (C order) are the loader's columns; gives
        the geometry of the smoothness correction for ``"auto"``. Without it
        the automatic order uses N = number of voxels (biased upward on
        smoothed data) and a RuntimeWarning is issued.

    Attributes
    ----------
    components_ : ndarray, shape (K, V)
        Group maps, z-scored over voxels, signs flipped so each peak is positive,
        ordered by decreasing stability (ICASSO) or as FastICA returned them.
    stability_ : ndarray, shape (K,)
        ICASSO stability index Iq per component (NaN when n_repeats == 1).
    n_components_ : int
        Number of components actually returned.
    order_estimate_ : dpnbids.analysis.model_order.GroupOrderEstimate or None
        The automatic model-order estimate (``n_components="auto"``), else None.
    pca_components_ : ndarray, shape (pca_dim, V)
        Orthonormal spatial eigenvectors ``P`` of the concatenated data.
    singular_values_ : ndarray, shape (pca_dim,)
    explained_variance_ : ndarray, shape (pca_dim,)
        Eigenvalues divided by (total time points - 1).
    explained_variance_ratio_ : ndarray, shape (pca_dim,)
        Eigenvalue / total sum of squares of the normalised data.
    mixing_ : ndarray, shape (pca_dim, K)
        Group mixing matrix of the reduced data, as MELODIC's ``melodic_mix``
        under MIGP: row j is the loading of PCA dimension j (not a time point)
        on each component, ``Z - mean ~= mixing_ @ components_`` with
        ``Z = diag(singular_values_) @ pca_components_``. Subject time courses
        come from dual regression stage 1 or :meth:`backproject_gica1`.
    unmixing_ : ndarray, shape (K, pca_dim)
        ``components_ == unmixing_ @ (Z - mean)``.
    warnings_ : list of str
        What :func:`dpnbids.analysis.group_order.order_warnings` says about the fit
        (a capped estimate, unstable components); each is also a RuntimeWarning.
    subject_order_ : ndarray
        Order in which MIGP visited the subjects.
    subject_ids_ : list of str or None
    n_timepoints_ : int
        Total time points over subjects.
    n_features_in_ : int
        Number of voxels V.
    components_img_, mask_img_ : nibabel.Nifti1Image
        After :meth:`fit` on images only: ``components_`` as a 4D image, and the mask.
    """

    # the defaults are the configuration's (dpnbids.config.ICAConfig), the one source of them
    def __init__(self, n_components=ICAConfig.n_components, pca_dim=ICAConfig.pca_dim,
                 n_repeats=ICAConfig.ica_repeats, random_state=None, *, internal_dim=None,
                 max_iter=200, tol=1e-4, fun=ICAConfig.ica_contrast, dim_est=ICAConfig.dim_est,
                 max_components=None, mask=None):
        self.n_components = n_components
        self.pca_dim = pca_dim
        self.n_repeats = n_repeats
        self.random_state = random_state
        self.internal_dim = internal_dim
        self.max_iter = max_iter
        self.tol = tol
        self.fun = fun
        self.dim_est = dim_est
        self.max_components = max_components
        self.mask = mask

    def _check_params(self):
        if isinstance(self.n_components, str) and self.n_components == "auto":
            from dpnbids.config import DIM_ESTIMATORS as METHODS

            for name in ("pca_dim", "n_repeats"):
                val = getattr(self, name)
                if not isinstance(val, (int, np.integer)) or val < 1:
                    raise InputError(f"{name} must be a positive integer; received {val!r}.")
            if self.dim_est not in METHODS:
                raise InputError(f"dim_est must be one of {', '.join(METHODS)}; received "
                                 f"{self.dim_est!r}.")
            mc = self.max_components
            if mc is not None and (not isinstance(mc, (int, np.integer)) or mc < 1):
                raise InputError(f"max_components must be a positive integer or None; "
                                 f"received {mc!r}.")
            return
        for name in ("n_components", "pca_dim", "n_repeats"):
            val = getattr(self, name)
            if not isinstance(val, (int, np.integer)) or val < 1:
                raise InputError(f"{name} must be a positive integer; received {val!r}.")
        if self.pca_dim < self.n_components:
            raise InputError(f"`pca_dim` ({self.pca_dim}) must be at least `n_components` "
                             f"({self.n_components}): ICA cannot find more components than "
                             "the PCA keeps. Raise `pca_dim` or lower `n_components`.")

    def fit(self, imgs, mask_img=None, *, subject_ids: Sequence[str] | None = None
            ) -> "GroupICA":
        """Fit on 4D images (or their files) of one grid, within ``mask_img``.

        ``mask_img`` (3D, non-zero inside) defaults to the voxels whose series is
        finite and non-constant in at least 90% of the images. Sets, beside the
        array attributes, ``mask_img_`` and ``components_img_`` (4D z-scored
        group maps, one volume per component). Images are read one at a time.
        """
        imgs = [_as_img(i) for i in (imgs if isinstance(imgs, (list, tuple)) else [imgs])]
        if not imgs:
            raise InputError("GroupICA.fit needs at least one 4D image.")
        ref = imgs[0]
        for k, img in enumerate(imgs):
            if len(img.shape) != 4:
                raise DimensionError(f"image {k} has shape {img.shape}; GroupICA needs 4D "
                                     "(x, y, z, time) images.")
            if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine,
                                                                  atol=1e-3):
                raise DimensionError(f"image {k} (grid {img.shape[:3]}) is not on the grid of "
                                     f"image 0 ({ref.shape[:3]}); resample them onto one grid.")
        if mask_img is None:
            mask = _mask_from_imgs(imgs)
        else:
            mask_img = _as_img(mask_img)
            if mask_img.shape[:3] != ref.shape[:3] or not np.allclose(mask_img.affine,
                                                                      ref.affine, atol=1e-3):
                raise DimensionError(f"mask_img (grid {mask_img.shape[:3]}) is not on the "
                                     f"images' grid ({ref.shape[:3]}).")
            mask = np.asarray(mask_img.dataobj) > 0.5
        if not mask.any():
            raise InputError("the mask is empty: no voxel to decompose.")
        self.fit_arrays(lambda i: load_run_matrix(imgs[i], mask, normalise=False), len(imgs),
                        subject_ids=subject_ids, mask=mask)
        self.mask_img_ = nib.Nifti1Image(mask.astype(np.uint8), ref.affine)
        self.components_img_ = maps_to_img(self.components_, mask, ref.affine)
        return self

    def transform(self, imgs, *, des_norm: bool = True) -> list[SubjectMaps]:
        """Dual regression of each 4D image against ``components_img_`` (after :meth:`fit`).

        The data are not variance-normalised (FSL's convention: stage-2 maps keep
        each subject's network amplitude); see
        :func:`dpnbids.analysis.dual_regression.dual_regression`.
        """
        from dpnbids.analysis.dual_regression import dual_regression

        if not hasattr(self, "components_img_"):
            raise InputError("GroupICA.transform needs fit() on images first "
                             "(fit_arrays() keeps no image geometry).")
        mask = np.asarray(self.mask_img_.dataobj) > 0
        group = img_to_maps(self.components_img_, mask)
        out = []
        for img in (imgs if isinstance(imgs, (list, tuple)) else [imgs]):
            img = _as_img(img)
            res = dual_regression(load_run_matrix(img, mask, normalise=False), group,
                                  des_norm=des_norm)
            out.append(SubjectMaps(res.timecourses, maps_to_img(res.maps, mask, img.affine),
                                   maps_to_img(res.zmaps, mask, img.affine), int(res.dof)))
        return out

    def fit_arrays(self, subject_loader: Callable[[int], np.ndarray], n_subjects: int,
                   subject_ids: Sequence[str] | None = None, *, mask=None) -> "GroupICA":
        """Fit on ``n_subjects`` subjects given by ``subject_loader(i) -> (T_i, V)``.

        Each subject's data are variance-normalised here (idempotent, so a
        loader that already normalises is fine) and streamed through MIGP; only
        one subject is in memory at a time. ``mask`` overrides the constructor's
        (the geometry of the smoothness correction for ``n_components="auto"``).
        """
        self._check_params()
        mask = self.mask if mask is None else mask
        rng = _rng(self.random_state)
        migp_seed, ica_seed = (int(s) for s in rng.integers(0, _MAX_SEED, size=2))

        auto = isinstance(self.n_components, str)
        order_subjects = {}

        def load(i):
            return variance_normalise(np.asarray(subject_loader(i), dtype=np.float32))

        if auto:
            mask = None if mask is None else np.asarray(mask, dtype=bool)
            if mask is None:
                warnings.warn("n_components='auto' without a mask: the model order uses N = "
                              "number of voxels (no smoothness correction) and is biased "
                              "upward on smoothed data.", RuntimeWarning, stacklevel=2)
            load = self._order_loader(load, order_subjects, mask, n_subjects, subject_ids)

        res = _migp(load, n_subjects, dim=self.pca_dim, internal_dim=self.internal_dim,
                    random_state=migp_seed, subject_ids=subject_ids)
        dim = int(self.pca_dim)
        if res.maps.shape[0] < dim:
            raise DimensionError(f"the subjects have {res.n_timepoints} time points in total, "
                                 f"fewer than `pca_dim` {dim}; lower `pca_dim`.")
        lam = res.eigenvalues[:dim]
        self.order_estimate_ = None
        if auto:
            self.order_estimate_ = self._combine_order(order_subjects, mask, dim, ica_seed,
                                                       res.eigenvalues)
            n_comp = int(self.order_estimate_.n_components)
        else:
            n_comp = self.n_components
        if lam[n_comp - 1] <= lam[0] * 1e-10:
            raise DimensionError(f"the group data have rank below `n_components` "
                                 f"{n_comp}; lower `n_components`.")
        s = np.sqrt(lam)
        z = res.maps[:dim].astype(np.float64)
        s_safe = np.where(s > 0, s, 1)
        self.pca_components_ = (z / s_safe[:, None]).astype(np.float32)
        self.singular_values_ = s
        self.explained_variance_ = lam / max(res.n_timepoints - 1, 1)
        self.explained_variance_ratio_ = lam / res.total_ss if res.total_ss > 0 else lam * 0
        comps, stability = icasso(z, n_comp, n_repeats=self.n_repeats,
                                  random_state=ica_seed, max_iter=self.max_iter, tol=self.tol,
                                  fun=self.fun)
        comps, _ = flip_signs(zscore_rows(np.asarray(comps, dtype=np.float64)))
        zc = z - z.mean(axis=1, keepdims=True)
        cc = comps @ comps.T
        self.mixing_ = np.linalg.solve(cc, comps @ zc.T).T
        self.unmixing_ = np.linalg.solve(zc @ zc.T, zc @ comps.T).T
        self.components_ = comps.astype(np.float32)
        self.stability_ = np.asarray(stability, dtype=np.float64)
        self.n_components_ = comps.shape[0]
        self.subject_order_ = res.order
        self.subject_ids_ = list(subject_ids) if subject_ids is not None else None
        self.n_timepoints_ = res.n_timepoints
        self.n_features_in_ = z.shape[1]
        from dpnbids.analysis.group_order import order_warnings

        self.warnings_ = order_warnings(self.n_components_, estimate=self.order_estimate_,
                                        stability=self.stability_)
        for text in self.warnings_:
            warnings.warn(text, RuntimeWarning, stacklevel=2)
        return self

    def _order_loader(self, plain_load, order_subjects: dict, mask, n_subjects, subject_ids):
        """A loader that also collects, in ``order_subjects``, what the order estimate needs:
        one pass, the estimate rides along with MIGP (whitened runs for "pooled", an even
        share of them so memory stays bounded; per-run estimates for the other methods)."""
        from dpnbids.analysis.group_order import (MAX_POOLED_ROWS, pool_index, pool_stride,
                                                  whiten_run)
        from dpnbids.analysis.model_order import estimate_subject_order

        pool_every = [1]
        columns = []

        def load(i):
            y = plain_load(i)
            if mask is not None and y.ndim == 2 and y.shape[1] != int(mask.sum()):
                raise DimensionError(f"{_subject_name(i, subject_ids)} has {y.shape[1]} "
                                     f"in-mask voxels but the mask has {int(mask.sum())}.")
            if not (y.ndim == 2 and np.isfinite(y).all()):
                return y
            if self.dim_est != "pooled":
                order_subjects[i] = estimate_subject_order(y, mask, method=self.dim_est,
                                                           max_order=self.pca_dim)
            elif not order_subjects or i % pool_every[0] == 0:
                if not columns:  # the voxels the pooled estimate uses (all, or 1/8)
                    columns.append(pool_index(mask, y.shape[1], pool_stride(mask)))
                w = whiten_run(y[:, columns[0]])
                if not order_subjects:
                    pool_every[0] = max(1, int(np.ceil(
                        n_subjects * max(w.shape[0], 1) / MAX_POOLED_ROWS)))
                order_subjects[i] = w
            return y

        return load

    def _combine_order(self, order_subjects, mask, dim, seed, migp_eigenvalues):
        """The group order from what the loader collected (whitened runs or run estimates)."""
        runs = [order_subjects[i] for i in sorted(order_subjects)]
        if not runs:
            raise InputError("no run had finite 2D data to estimate the model order from.")
        if self.dim_est == "pooled":
            from dpnbids.analysis.group_order import estimate_pooled_order, pooled_group_estimate

            pooled = estimate_pooled_order(None, len(runs), mask, whitened=runs,
                                           random_state=seed)
            return pooled_group_estimate(pooled, max_order=self.max_components, pca_dim=dim)
        from dpnbids.analysis.model_order import combine_subject_orders

        return combine_subject_orders(runs, method=self.dim_est, max_order=self.max_components,
                                      pca_dim=dim, migp_eigenvalues=migp_eigenvalues)

    def backproject_gica1(self, subject_data, *, subject_pca_dim: int | None = None
                          ) -> tuple[np.ndarray, np.ndarray]:
        """GICA1 subject maps (K, V) and time courses (T, K); see :func:`gica1_backproject`.

        ``subject_data`` is the subject's raw (T, V) in-mask data; it is
        variance-normalised here as in :meth:`fit`.
        """
        if not hasattr(self, "components_"):
            raise InputError("GroupICA is not fitted yet; call fit() first.")
        y = variance_normalise(np.asarray(_check_2d(subject_data, "subject_data"),
                                          dtype=np.float32))
        return gica1_backproject(y, self.pca_components_, self.singular_values_,
                                 self.unmixing_, self.mixing_, subject_pca_dim=subject_pca_dim)
