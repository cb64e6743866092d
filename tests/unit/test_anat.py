"""Anatomical preprocessing: input checks, generator truth recovered, real subject."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.preproc.anat import dice, load_t1w, nifti_to_ants, preprocess_anat

REAL_T1W = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "studyforrest" \
    / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
if not REAL_T1W.exists():
    REAL_T1W = Path("/work/shared/data/studyforrest/sub-01/anat/sub-01_T1w.nii.gz")
SPACE = "MNI152NLin2009aSym"


@pytest.fixture(scope="module", autouse=True)
def templateflow_home(tmp_path_factory):
    """Seed the offline template into a temporary TemplateFlow home."""
    old = os.environ.get("TEMPLATEFLOW_HOME")
    os.environ["TEMPLATEFLOW_HOME"] = str(tmp_path_factory.mktemp("templateflow"))
    yield
    if old is None:
        os.environ.pop("TEMPLATEFLOW_HOME", None)
    else:
        os.environ["TEMPLATEFLOW_HOME"] = old


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture(scope="module")
def synthetic_native(tmp_path_factory):
    """Two native-space subjects from the generator (sub-02: LAS grid, int16)."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    out = tmp_path_factory.mktemp("synth") / "bids"
    return generate_dataset(out, SynthParams(space="native", n_responders=1, n_nonresponders=1,
                                             n_volumes=40, tr=2.6, seed=0))


# --------------------------------------------------------------------- checks at the door
def test_dice_values():
    a = np.zeros((7, 8, 9), bool)
    b = np.zeros((7, 8, 9), bool)
    a[:4] = True
    b[2:6] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 2 * 72 / (4 * 72 + 4 * 72))
    assert dice(a, ~a) == 0.0
    with pytest.raises(DimensionError, match=r"\(7, 8, 9\)"):
        dice(a, np.zeros((7, 8, 8)))


def test_corrupt_gzip_is_input_error(tmp_path, rng):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(7, 8, 9)).astype(np.float32), np.eye(4)), good)
    raw = good.read_bytes()
    bad = tmp_path / "sub-99_T1w.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"sub-99_T1w\.nii\.gz.*corrupt or truncated"):
        load_t1w(bad)
    garbage = tmp_path / "sub-98_T1w.nii.gz"
    garbage.write_bytes(gzip.compress(b"not a nifti at all"))
    with pytest.raises(InputError, match=r"sub-98_T1w\.nii\.gz"):
        preprocess_anat(garbage, tmp_path / "out")


def test_nan_inf_2d_4d_are_input_errors(tmp_path, rng):
    data = rng.normal(100, 10, (17, 18, 19)).astype(np.float32)
    data[3, 4, 5] = np.nan
    data[1, 2, 3] = np.inf
    nan_file = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan_file)
    with pytest.raises(InputError, match=r"sub-01_T1w\.nii\.gz contains 1 NaN and 1 Inf"):
        preprocess_anat(nan_file, tmp_path / "out")
    flat = tmp_path / "sub-02_T1w.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(17, 18)).astype(np.float32), np.eye(4)), flat)
    with pytest.raises(InputError, match=r"sub-02_T1w\.nii\.gz is 2D with shape \(17, 18\).*Expected a 3D"):
        preprocess_anat(flat, tmp_path / "out")
    four = tmp_path / "sub-03_T1w.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(17, 18, 19, 2)).astype(np.float32), np.eye(4)),
             four)
    with pytest.raises(InputError, match=r"sub-03_T1w\.nii\.gz is 4D with shape \(17, 18, 19, 2\)"):
        load_t1w(four)
    missing = tmp_path / "sub-04_T1w.nii.gz"
    with pytest.raises(InputError, match=r"sub-04_T1w\.nii\.gz does not exist"):
        load_t1w(missing)
    const = tmp_path / "sub-05_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.full((17, 18, 19), 7.0, np.float32), np.eye(4)), const)
    with pytest.raises(InputError, match=r"sub-05_T1w\.nii\.gz is constant"):
        load_t1w(const)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_single_volume_4d_and_scaled_ints_are_accepted(tmp_path, rng):
    data = rng.integers(0, 1000, (17, 18, 19, 1)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([-1.5, 1.2, 1.1, 1.0]))
    img.header.set_slope_inter(0.5, 3.0)
    path = tmp_path / "t1.nii.gz"
    nib.save(img, path)
    out = load_t1w(path)
    assert out.shape == (17, 18, 19)
    np.testing.assert_allclose(out.get_fdata(), data[..., 0] * 0.5 + 3.0, rtol=1e-6)


def test_nifti_to_ants_keeps_physical_space(rng):
    """A voxel lands at the same physical point in nibabel (RAS) and ANTs (LPS)."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation(0.1, 0.2, -0.3) @ np.diag([-1.5, 1.2, 0.9])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    img = nib.Nifti1Image(rng.normal(size=(7, 8, 9)).astype(np.float32), affine)
    aimg = nifti_to_ants(img)
    np.testing.assert_allclose(aimg.numpy(), img.get_fdata(), rtol=1e-6)
    import ants

    ras = affine @ np.array([3, 5, 7, 1.0])
    lps = np.array(ants.transform_index_to_physical_point(aimg, (3, 5, 7)))
    np.testing.assert_allclose(lps, ras[:3] * [-1, -1, 1], atol=1e-4)
    with pytest.raises(InputError, match="registration"):
        preprocess_anat(__file__, ".", registration="Bogus")


# --------------------------------------------------------------------- planted truth
@pytest.mark.slow
def test_synthetic_native_subject_matches_truth(synthetic_native, tmp_path):
    """Generator's T1w (template moved by a known affine): Dice >= 0.9, points on truth."""
    import ants
    import pandas as pd

    from dpnbids.templates import get_template

    t1w = synthetic_native.bids_dir / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    a_t1w_to_tpl = np.loadtxt(synthetic_native.truth_dir / "sub-02"
                              / "sub-02_from-T1w_to-template_affine.txt")
    truth = np.linalg.inv(a_t1w_to_tpl)  # template point -> T1w point (RAS mm)
    res = preprocess_anat(t1w, tmp_path / "anat", omp_nthreads=2, random_seed=3)
    assert res.dice_std_mask >= 0.9, res
    assert res.warnings == []
    assert [Path(p).name for p in res.xfm_t1w_to_std] == ["t1w_to_std_1Warp.nii.gz",
                                                           "t1w_to_std_0GenericAffine.mat"]
    # native outputs keep the input grid
    src = nib.load(str(t1w))
    for key in ("t1w_preproc", "t1w_brain", "t1w_mask", "wm_probseg", "csf_probseg",
                "gm_probseg"):
        out = nib.load(getattr(res, key))
        assert out.shape == src.shape, key
        np.testing.assert_allclose(out.affine, src.affine, atol=1e-3)
    # the native brain mask equals the template mask moved into the subject by the truth
    tmask = nib.load(str(get_template(SPACE, 2.0, "mask")))
    grid = np.vstack([np.indices(src.shape).reshape(3, -1),
                      np.ones((1, int(np.prod(src.shape))))])
    planted = ndimage.map_coordinates(
        tmask.get_fdata(), (np.linalg.inv(tmask.affine) @ a_t1w_to_tpl @ src.affine @ grid)[:3],
        order=1).reshape(src.shape) > 0.5
    assert dice(nib.load(res.t1w_mask).get_fdata() > 0.5, planted) >= 0.9
    # template points inside the brain map to the true T1w points (LPS in ANTs)
    ijk = np.argwhere(tmask.get_fdata() > 0.5)[::97]
    ras = (tmask.affine @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    pts = pd.DataFrame(ras * [-1, -1, 1], columns=["x", "y", "z"])
    mapped = ants.apply_transforms_to_points(3, pts, res.xfm_t1w_to_std).to_numpy()
    expected = ((truth @ np.c_[ras, np.ones(len(ras))].T)[:3].T) * [-1, -1, 1]
    err = np.linalg.norm(mapped - expected, axis=1)
    assert np.median(err) < 1.5, np.percentile(err, [50, 95])
    assert np.percentile(err, 95) < 3.5, np.percentile(err, [50, 95])
    # WM prior lands on bright voxels, CSF on dark ones
    pre = nib.load(res.t1w_preproc).get_fdata()
    wm = nib.load(res.wm_probseg).get_fdata() > 0.9
    csf = nib.load(res.csf_probseg).get_fdata() > 0.5
    assert wm.sum() > 1000 and csf.sum() > 100
    assert np.median(pre[wm]) > 1.5 * np.median(pre[csf])


# --------------------------------------------------------------------- real subject
@pytest.mark.slow
@pytest.mark.skipif(not REAL_T1W.exists(), reason="studyforrest sub-01 not present")
def test_real_oblique_philips_t1w(tmp_path):
    """studyforrest sub-01 (274x384x384, oblique, Philips-scaled) end to end."""
    res = preprocess_anat(REAL_T1W, tmp_path, omp_nthreads=2, random_seed=0)
    assert res.dice_std_mask >= 0.9, res
    assert res.registration_cost < -0.3
    src = nib.load(str(REAL_T1W))
    mask_img = nib.load(res.t1w_mask)
    assert mask_img.shape == src.shape
    np.testing.assert_allclose(mask_img.affine, src.affine, atol=1e-3)
    volume_ml = mask_img.get_fdata().astype(bool).sum() * np.prod(src.header.get_zooms()) / 1e3
    assert 900 < volume_ml < 2200, volume_ml
    std = nib.load(res.t1w_std)
    assert std.shape == (99, 117, 95)
    for path in res.xfm_t1w_to_std + res.xfm_std_to_t1w:
        assert Path(path).is_file()
