"""Door checks of BOLD, T1w and masks: exact errors for every bad input."""
from __future__ import annotations

import gzip
import re
import warnings

import nibabel as nib
import numpy as np
import pytest

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.preproc.checks import (check_mask_not_empty, check_preprocessed_bold,
                                    load_anat, load_bold, repetition_time)

SHAPE = (7, 8, 9)


def _bold(rng, n_t=20, tr=2.0, affine=None, dtype=np.float32):
    data = rng.normal(100, 5, SHAPE + (n_t,)).astype(dtype)
    img = nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr
    return img


def _save(img, path):
    nib.save(img, str(path))
    return path


def test_good_bold_returns_float32_and_sidecar_tr(tmp_path, rng):
    path = _save(_bold(rng, tr=2.0), tmp_path / "sub-01_task-rest_bold.nii.gz")
    img, tr = load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=10)
    assert tr == 2.0
    assert img.shape == SHAPE + (20,)
    assert img.get_data_dtype() == np.float32
    assert float(img.header["pixdim"][4]) == 2.0


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"BOLD file .*nope_bold\.nii\.gz does not exist"):
        load_bold(tmp_path / "nope_bold.nii.gz", sidecar={"RepetitionTime": 2.0})


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_truncated_file_is_detected(tmp_path, rng, ext):
    path = _save(_bold(rng), tmp_path / f"sub-01_task-rest_bold{ext}")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=re.escape(f"BOLD file sub-01_task-rest_bold{ext} could "
                                                   "not be read: it is corrupt or truncated")):
        load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=10)


def test_garbage_file_is_corrupt(tmp_path):
    path = tmp_path / "sub-01_task-rest_bold.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(InputError, match="corrupt or truncated"):
        load_bold(path, sidecar={"RepetitionTime": 2.0})


def test_3d_bold(tmp_path, rng):
    path = _save(nib.Nifti1Image(rng.normal(size=SHAPE).astype(np.float32), np.eye(4)),
                 tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.raises(DimensionError, match=re.escape(
            "BOLD file sub-01_task-rest_bold.nii.gz is 3D with shape (7, 8, 9). Expected a "
            "4D image (x, y, z, time) with at least 50 volumes.")):
        load_bold(path, sidecar={"RepetitionTime": 2.0})


def test_too_few_volumes_says_how_many_and_why(tmp_path, rng):
    path = _save(_bold(rng, n_t=12), tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.raises(InputError, match=re.escape(
            "BOLD file sub-01_task-rest_bold.nii.gz has 12 volumes; at least 50 are needed "
            "(non-steady-state detection, the 0.008 Hz high-pass")) as err:
        load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=50)
    assert "`min_volumes`" in str(err.value)


def test_missing_repetition_time(tmp_path, rng):
    img = _bold(rng, tr=0.0)
    path = _save(img, tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.raises(InputError, match=re.escape(
            "BOLD file sub-01_task-rest_bold.nii.gz has no RepetitionTime")) as err:
        load_bold(path, sidecar={}, min_volumes=10)
    assert 'Add "RepetitionTime" (seconds) to the JSON sidecar sub-01_task-rest_bold.json' \
        in str(err.value)


def test_header_tr_used_with_warning_when_sidecar_lacks_it(tmp_path, rng):
    path = _save(_bold(rng, tr=1.5), tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.warns(UserWarning, match="no RepetitionTime in the JSON sidecar; using the "
                                         "header value 1.5 s"):
        _, tr = load_bold(path, sidecar=None, min_volumes=10)
    assert tr == 1.5


def test_header_tr_in_msec_is_converted(tmp_path, rng):
    img = _bold(rng)
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = 2500.0
    path = _save(img, tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.warns(UserWarning):
        _, tr = load_bold(path, min_volumes=10)
    assert tr == pytest.approx(2.5)


def test_inconsistent_tr_warns_and_sidecar_wins(tmp_path, rng):
    path = _save(_bold(rng, tr=3.0), tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.warns(UserWarning, match=re.escape(
            "BOLD file sub-01_task-rest_bold.nii.gz: the NIfTI header says TR = 3 s but the "
            "JSON sidecar says RepetitionTime = 2 s; using the sidecar")):
        img, tr = load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=10)
    assert tr == 2.0
    assert float(img.header["pixdim"][4]) == 2.0


def test_repetition_time_reads_the_header_only(tmp_path, rng):
    """The workflow builder takes a run's TR from its header and sidecar: no voxel is read
    (the door read the whole image once), so a truncated data block does not matter here."""
    path = _save(_bold(rng, tr=3.0), tmp_path / "sub-01_task-rest_bold.nii")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    proxy = nib.load(str(path))
    assert repetition_time(proxy, {"RepetitionTime": 3.0}, name=path.name) == 3.0
    with pytest.warns(UserWarning, match="no RepetitionTime in the JSON sidecar; using the "
                                         "header value 3 s"):
        assert repetition_time(proxy, {}, name=path.name) == 3.0
    with pytest.raises(InputError, match="RepetitionTime in the JSON sidecar is '2'"):
        repetition_time(proxy, {"RepetitionTime": "2"}, name=path.name)


def test_preprocessed_bold_door_check_counts_volumes(tmp_path, rng):
    path = _save(_bold(rng, n_t=20), tmp_path / "sub-01_task-rest_bold.nii.gz")
    assert check_preprocessed_bold(path, n_confound_rows=20, min_volumes=20) == 20
    with pytest.raises(InputError, match=r"has 20 volumes; at least 21 are needed.*"
                                         "`min_volumes`"):
        check_preprocessed_bold(path, min_volumes=21)
    with pytest.raises(DimensionError, match="20 volumes but its confounds table has 19 rows"):
        check_preprocessed_bold(path, n_confound_rows=19)


def test_tr_in_milliseconds_in_sidecar(tmp_path, rng):
    path = _save(_bold(rng, tr=2.0), tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.raises(InputError, match="looks like milliseconds. BIDS expects seconds; "
                                         "write 2"):
        load_bold(path, sidecar={"RepetitionTime": 2000}, min_volumes=10)


def test_nan_and_inf_are_counted(tmp_path, rng):
    img = _bold(rng)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0, :3] = np.nan
    data[1, 2, 3, 4] = np.inf
    path = _save(nib.Nifti1Image(data, img.affine, img.header),
                 tmp_path / "sub-01_task-rest_bold.nii.gz")
    with pytest.raises(InputError, match=re.escape(
            "BOLD file sub-01_task-rest_bold.nii.gz contains 3 NaN and 1 Inf values "
            f"(out of {data.size})")):
        load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=10)


def test_oblique_non_ras_scaled_int16_is_fine(tmp_path, rng):
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[-3.0 * c, 0, 3.0 * s, 90], [0, 3.0, 0, -100],
                       [-3.0 * s, 0, -3.0 * c, 60], [0, 0, 0, 1]])  # LAI-ish, oblique
    data = rng.integers(0, 3000, SHAPE + (15,)).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(0.5, 10.0)  # Philips-style scaling
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    path = _save(img, tmp_path / "sub-01_task-rest_bold.nii.gz")
    out, tr = load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=10)
    np.testing.assert_allclose(out.get_fdata(), data * 0.5 + 10.0, rtol=1e-6)
    np.testing.assert_allclose(out.affine, affine)
    assert tr == 2.0


def test_load_anat_good_and_squeezes_single_volume(tmp_path, rng):
    data = rng.normal(100, 10, SHAPE + (1,)).astype(np.float32)
    path = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "sub-01_T1w.nii.gz")
    img = load_anat(path)
    assert img.shape == SHAPE
    np.testing.assert_allclose(img.get_fdata(), data[..., 0], rtol=1e-6)


def test_load_anat_4d_rejected(tmp_path, rng):
    path = _save(nib.Nifti1Image(rng.normal(size=SHAPE + (2,)).astype(np.float32), np.eye(4)),
                 tmp_path / "sub-01_T1w.nii.gz")
    with pytest.raises(DimensionError, match=re.escape(
            "T1w file sub-01_T1w.nii.gz is 4D with shape (7, 8, 9, 2). Expected a 3D image")):
        load_anat(path)


def test_load_anat_truncated_and_nan(tmp_path, rng):
    data = rng.normal(100, 10, SHAPE).astype(np.float32)
    path = _save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "sub-01_T1w.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[:-200])
    with pytest.raises(InputError, match=r"T1w file sub-01_T1w\.nii\.gz could not be read"):
        load_anat(path)
    data[2, 2, 2] = np.nan
    _save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(InputError, match=r"T1w file sub-01_T1w\.nii\.gz contains 1 NaN and "
                                         r"0 Inf values"):
        load_anat(path)


def test_all_zero_t1w(tmp_path):
    path = _save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)),
                 tmp_path / "sub-01_T1w.nii.gz")
    with pytest.raises(InputError, match=r"T1w file sub-01_T1w\.nii\.gz is all zeros"):
        load_anat(path)


def test_empty_mask_named(tmp_path):
    mask = nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4))
    with pytest.raises(InputError, match=re.escape(
            "The brain mask of sub-01_task-rest_bold is empty: 0 voxels above 0.5 out of 504 "
            "(shape (7, 8, 9)); expected at least 1.")):
        check_mask_not_empty(mask, "brain mask of sub-01_task-rest_bold")
    data = np.zeros(SHAPE, np.uint8)
    data[2:4, 2:4, 2:4] = 1
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_mask_not_empty(path, "mask") == 8
