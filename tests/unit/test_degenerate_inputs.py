"""Degenerate data refused at the door, before any compute: a RepetitionTime that is not a
number, a BOLD run without signal over time, duplicate participants.tsv rows."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import make_tiny_bids, run_cli
from dpnbids.exceptions import InputError
from dpnbids.preproc.checks import check_bold_has_signal, load_bold


def _bold(tmp_path, data, name="sub-01_task-rest_bold.nii.gz"):
    path = tmp_path / name
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    nib.save(img, str(path))
    return path


@pytest.fixture
def noisy(rng):
    return rng.normal(100, 5, (7, 8, 9, 60))


@pytest.mark.parametrize("value", [True, False, "2.0", "2 s", [2.0], {"seconds": 2}])
def test_repetition_time_must_be_a_number(tmp_path, noisy, value):
    path = _bold(tmp_path, noisy)
    with pytest.raises(InputError, match="RepetitionTime") as info:
        load_bold(path, sidecar={"RepetitionTime": value}, min_volumes=50)
    assert "positive number of seconds" in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("value", [2, 2.0, np.float64(2.0)])
def test_numeric_repetition_time_accepted(tmp_path, noisy, value):
    _img, tr = load_bold(_bold(tmp_path, noisy), sidecar={"RepetitionTime": value},
                         min_volumes=50)
    assert tr == 2.0


def test_constant_bold_refused(tmp_path, rng):
    volume = rng.normal(100, 5, (7, 8, 9))
    data = np.repeat(volume[..., None], 60, axis=3)
    path = _bold(tmp_path, data)
    for given in (path, nib.load(str(path)), data):
        with pytest.raises(InputError, match="constant over time"):
            check_bold_has_signal(given)
    with pytest.raises(InputError, match=f"{path.name} is constant over time"):
        load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=50)


def test_all_zero_bold_refused(tmp_path):
    path = _bold(tmp_path, np.zeros((7, 8, 9, 60)))
    with pytest.raises(InputError, match="all zeros"):
        check_bold_has_signal(path)
    with pytest.raises(InputError, match="all zeros"):
        load_bold(path, sidecar={"RepetitionTime": 2.0}, min_volumes=50)


def test_signal_in_a_few_voxels_is_enough(rng):
    data = np.full((7, 8, 9, 60), 100.0, dtype=np.float32)  # constant background
    data[3, 4, 5] += rng.normal(0, 1, 60).astype(np.float32)
    check_bold_has_signal(data)  # no error
    check_bold_has_signal(np.zeros((7, 8, 9)))  # not 4D: left to the shape checks


def test_bool_repetition_time_refused_by_the_cli(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids")
    (bids / "task-rest_bold.json").write_text(json.dumps(
        {"RepetitionTime": True, "TaskName": "rest"}))
    out = tmp_path / "out"
    code = run_cli([bids, out, "participant", "--skip-bids-validation"])
    err = run_cli.last_stderr
    assert code == 2, err
    assert "RepetitionTime" in err and "True" in err and "Traceback" not in err
    assert not out.exists()


def test_constant_bold_refused_by_the_cli(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids")
    bold = bids / "sub-02" / "func" / "sub-02_task-rest_bold.nii.gz"
    img = nib.load(str(bold))
    first = np.asanyarray(img.dataobj)[..., :1]
    nib.save(nib.Nifti1Image(np.repeat(first, img.shape[3], axis=3), img.affine, img.header),
             str(bold))
    out = tmp_path / "out"
    code = run_cli([bids, out, "participant", "--skip-bids-validation"])
    err = run_cli.last_stderr
    assert code == 2, err
    assert "sub-02_task-rest_bold.nii.gz is constant over time" in err
    assert "Traceback" not in err and not out.exists()


def test_duplicate_participant_rows(tmp_path):
    from dpnbids.bids import load_labels

    bids = make_tiny_bids(tmp_path / "bids", labels=("1", "0", "1", "0"))
    tsv = bids / "participants.tsv"
    tsv.write_text(tsv.read_text() + "sub-02\t1\n03\t0\n")
    with pytest.raises(InputError, match="duplicate row") as info:
        load_labels(bids, "responder")
    message = str(info.value)
    assert "sub-02 on lines 3, 6" in message and "sub-03 on lines 4, 7" in message
    assert "sub-01" not in message and "one row per participant_id" in message

    out = tmp_path / "out"
    code = run_cli([bids, out, "group", "--skip-bids-validation", "--folds", "2"])
    err = run_cli.last_stderr
    assert code == 2 and "duplicate row" in err and "sub-02" in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("value,fragment", [(True, "(bool)"), ("2", "(str)"), (0, "positive"),
                                            (2000, "looks like milliseconds")])
def test_sidecar_repetition_time_for_any_path(value, fragment):
    """The helper the fMRIPrep path uses for its sidecars as well."""
    from dpnbids.preproc.checks import sidecar_repetition_time

    with pytest.raises(InputError, match="RepetitionTime") as info:
        sidecar_repetition_time(value, name="x_bold.nii.gz")
    assert fragment in str(info.value) and "x_bold.nii.gz" in str(info.value)
    assert sidecar_repetition_time(0.8, name="x") == 0.8
