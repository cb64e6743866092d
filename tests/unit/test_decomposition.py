"""GroupICA on images (nilearn-style fit/transform) agrees with the array-level fit."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from dpnbids.analysis.decomposition import GroupICA
from dpnbids.analysis.dual_regression import dual_regression
from dpnbids.analysis.masking import img_to_maps
from dpnbids.exceptions import DimensionError
from test_ica import best_abs_r, planted

SHAPE = (14, 13, 12)
AFFINE = np.array([[3.0, 0, 0, -20], [0, 3.0, 0, -30], [0, 0, 3.0, -10], [0, 0, 0, 1]])


def _mask():
    mask = np.zeros(SHAPE, bool)
    mask[1:-1, 1:-1, 1:-1] = True
    return mask


def _images(rng, mask):
    maps, subjects = planted(rng, n_subjects=6, n_voxels=int(mask.sum()), support=150)
    imgs = []
    for data in subjects:
        vol = np.zeros(SHAPE + (data.shape[0],), np.float32)
        vol[mask] = data.T
        imgs.append(nib.Nifti1Image(vol, AFFINE))
    return maps, subjects, imgs


def test_fit_on_images_equals_array_fit_and_recovers_sources(rng, tmp_path):
    mask = _mask()
    maps, subjects, imgs = _images(rng, mask)
    files = []
    for k, img in enumerate(imgs):  # files and in-memory images are both accepted
        files.append(tmp_path / f"run{k}.nii.gz")
        img.to_filename(files[-1])
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), AFFINE)
    on_imgs = GroupICA(n_components=5, pca_dim=10, random_state=4).fit(files[:3] + imgs[3:],
                                                                        mask_img)
    on_arrays = GroupICA(n_components=5, pca_dim=10, random_state=4).fit_arrays(
        lambda i: subjects[i], len(subjects))
    np.testing.assert_allclose(on_imgs.components_, on_arrays.components_, atol=1e-5)
    assert on_imgs.components_img_.shape == SHAPE + (5,)
    np.testing.assert_array_equal(on_imgs.components_img_.affine, AFFINE)
    np.testing.assert_array_equal(img_to_maps(on_imgs.components_img_, mask),
                                  on_imgs.components_)
    assert best_abs_r(on_imgs.components_, maps).min() > 0.9


def test_default_mask_is_the_non_constant_voxels(rng):
    mask = _mask()
    _, _, imgs = _images(rng, mask)
    ica = GroupICA(n_components=3, pca_dim=6, random_state=0).fit(imgs)
    np.testing.assert_array_equal(np.asarray(ica.mask_img_.dataobj) > 0, mask)


def test_transform_is_dual_regression_against_the_fitted_maps(rng):
    mask = _mask()
    _, subjects, imgs = _images(rng, mask)
    ica = GroupICA(n_components=5, pca_dim=10, random_state=1).fit(imgs, None)
    out = ica.transform(imgs[:2])
    assert len(out) == 2
    for res, data in zip(out, subjects[:2]):
        ref = dual_regression(data, ica.components_, des_norm=True)
        np.testing.assert_allclose(res.timecourses, ref.timecourses, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(img_to_maps(res.maps_img, mask), ref.maps, rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(img_to_maps(res.zmaps_img, mask), ref.zmaps, rtol=1e-4,
                                   atol=1e-4)
        assert res.dof == ref.dof
        np.testing.assert_array_equal(res.maps_img.affine, AFFINE)


def test_images_on_different_grids_are_refused(rng):
    mask = _mask()
    _, _, imgs = _images(rng, mask)
    moved = nib.Nifti1Image(np.asarray(imgs[1].dataobj), AFFINE @ np.diag([1, 1, 1.1, 1]))
    with pytest.raises(DimensionError, match="not on the grid"):
        GroupICA(n_components=3, pca_dim=6).fit([imgs[0], moved])
    with pytest.raises(DimensionError, match="4D"):
        GroupICA(n_components=3, pca_dim=6).fit([nib.Nifti1Image(mask.astype(np.float32),
                                                                 AFFINE)])


def test_load_run_matrix_reads_gzipped_nifti_in_one_call(tmp_path, rng):
    """The one-call decompression gives the same in-mask matrix as nibabel's reader."""
    import nibabel as nib

    from dpnbids.analysis.masking import load_run_matrix

    data = rng.normal(size=(7, 8, 9, 12)).astype(np.float32)
    mask = rng.random((7, 8, 9)) > 0.4
    for name in ("run.nii.gz", "run.nii"):
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / name))
        got = load_run_matrix(tmp_path / name, mask, normalise=False)
        np.testing.assert_array_equal(got, data[mask].T)
        assert got.flags.c_contiguous and got.dtype == np.float32
    # a scaled integer file goes through nibabel's reader (slope applied)
    img = nib.Nifti1Image((data * 100).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(0.01, 0.0)
    nib.save(img, str(tmp_path / "int.nii.gz"))
    ref = np.asarray(nib.load(str(tmp_path / "int.nii.gz")).dataobj, dtype=np.float32)[mask].T
    np.testing.assert_allclose(load_run_matrix(tmp_path / "int.nii.gz", mask, normalise=False),
                               ref)
