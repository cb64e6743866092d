"""Tests for dpnbids.preproc.bold (BOLD geometry)."""
import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dpnbids.exceptions import InputError
from dpnbids.preproc import bold as pbold


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_ras_ants_roundtrip(tmp_path, rng):
    params = np.array([1.5, -0.7, 2.0, 0.02, -0.03, 0.01])
    m = pbold.params_to_rigid(params)
    np.testing.assert_allclose(pbold.rigid_to_params(m), params, atol=1e-12)
    np.testing.assert_allclose(pbold.ants_affine_to_ras(pbold.ras_to_ants_affine(m)), m)
    path = pbold.write_ants_affine(tmp_path / "x.mat", m)
    np.testing.assert_allclose(pbold.read_ants_affine(path), m, atol=1e-5)


def test_ants_apply_matches_nibabel(tmp_path, rng):
    """A RAS pull shift written with write_ants_affine moves the image as scipy does."""
    import ants

    data = ndimage.gaussian_filter(rng.standard_normal((17, 18, 19)), 2).astype(np.float32)
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])  # LAS, non-RAS on purpose
    affine[:3, 3] = [10, -20, -15]
    img = pbold._to_ants(data, affine)
    m = np.eye(4)
    m[:3, 3] = [4.0, 0.0, -2.0]  # sample at x + shift (RAS mm)
    out = ants.apply_transforms(fixed=img, moving=img,
                                transformlist=[pbold.write_ants_affine(tmp_path / "s.mat", m)],
                                interpolator="linear").numpy()
    vox = np.linalg.inv(affine) @ m @ affine
    expected = ndimage.affine_transform(data, vox[:3, :3], vox[:3, 3], order=1)
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(out[inner], expected[inner], atol=1e-4)


def test_empty_mask_raises(tmp_path):
    img = nib.Nifti1Image(np.zeros((7, 8, 9), np.float32), np.eye(4))
    nib.save(img, tmp_path / "blank.nii.gz")
    with pytest.raises(InputError, match="empty brain mask.*blank.nii.gz"):
        pbold.bold_reference_and_mask(tmp_path / "blank.nii.gz", tmp_path)


@pytest.mark.slow
def test_hmc_recovers_synthetic_motion(tmp_path, rng):
    from dpnbids.templates import load_template

    tmpl = load_template("MNI152NLin2009aSym", 4, "T1w")
    vol = ndimage.gaussian_filter(np.asarray(tmpl.dataobj, np.float32), 1)
    affine = tmpl.affine
    n = 12
    truth = np.zeros((n, 6))
    truth[1:, :3] = rng.uniform(-2, 2, (n - 1, 3))
    truth[1:, 3:] = np.radians(rng.uniform(-2, 2, (n - 1, 3)))
    series = np.empty(vol.shape + (n,), np.float32)
    for t in range(n):
        vox = np.linalg.inv(affine) @ pbold.params_to_rigid(truth[t]) @ affine
        # volume t sampled so that vol_t(M_t x) = ref(x)  =>  vol_t(y) = ref(M_t^-1 y)
        inv = np.linalg.inv(vox)
        series[..., t] = ndimage.affine_transform(vol, inv[:3, :3], inv[:3, 3], order=3)
    series += rng.normal(0, 0.01 * vol.max(), series.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(series, affine), tmp_path / "bold.nii.gz")
    res = pbold.estimate_head_motion(tmp_path / "bold.nii.gz", tmp_path / "hmc", reference=0)
    assert res.params.shape == (n, 6)
    np.testing.assert_array_less(np.abs(res.params[:, :3] - truth[:, :3]), 0.3)
    np.testing.assert_array_less(np.degrees(np.abs(res.params[:, 3:] - truth[:, 3:])), 0.3)
