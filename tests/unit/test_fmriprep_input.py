"""Discovery of fMRIPrep derivatives in a small fake fMRIPrep tree."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.preproc.fmriprep import available_spaces, find_fmriprep_inputs

SPACE = "MNI152NLin2009cAsym"


def _nii(path: Path, shape, zoom, n_t=None, dtype=np.float32):
    path.parent.mkdir(parents=True, exist_ok=True)
    full = shape + ((n_t,) if n_t else ())
    img = nib.Nifti1Image(np.ones(full, dtype), np.diag([zoom, zoom, zoom, 1.0]))
    nib.save(img, str(path))


def make_fmriprep(root: Path, *, subject="01", sessions=(None,), runs=(1,),
                  spaces=((SPACE, "2", 2.0), ("T1w", None, 3.0)), task="rest",
                  legacy_confounds=False, description=True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if description:
        (root / "dataset_description.json").write_text(json.dumps({
            "Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.9.0",
            "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep",
                                                          "Version": "24.1.0"}]}))
    for ses in sessions:
        func = root / f"sub-{subject}" / (f"ses-{ses}" if ses else "") / "func"
        for run in runs:
            stem = f"sub-{subject}" + (f"_ses-{ses}" if ses else "") + f"_task-{task}"
            stem += f"_run-{run}" if run is not None else ""
            for space, res, zoom in spaces:
                ent = f"_space-{space}" + (f"_res-{res}" if res else "")
                shape = (7, 8, 9) if zoom == 2.0 else (5, 6, 7)
                _nii(func / f"{stem}{ent}_desc-preproc_bold.nii.gz", shape, zoom, n_t=4)
                (func / f"{stem}{ent}_desc-preproc_bold.json").write_text(
                    json.dumps({"RepetitionTime": 2.0}))
                _nii(func / f"{stem}{ent}_desc-brain_mask.nii.gz", shape, zoom,
                     dtype=np.uint8)
            conf = "regressors" if legacy_confounds else "timeseries"
            (func / f"{stem}_desc-confounds_{conf}.tsv").write_text("trans_x\n0\n0\n0\n0\n")
            (func / f"{stem}_desc-confounds_{conf}.json").write_text("{}")
    return root


def test_finds_runs_and_sessions(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep", sessions=("a", "b"), runs=(1, 2))
    runs = find_fmriprep_inputs(root, subject="sub-01", task="rest", space=SPACE,
                                resolution=2.0)
    assert len(runs) == 4
    first = runs[0]
    assert Path(first["bold"]).name == (
        f"sub-01_ses-a_task-rest_run-1_space-{SPACE}_res-2_desc-preproc_bold.nii.gz")
    assert Path(first["mask"]).name == (
        f"sub-01_ses-a_task-rest_run-1_space-{SPACE}_res-2_desc-brain_mask.nii.gz")
    assert Path(first["confounds"]).name == (
        "sub-01_ses-a_task-rest_run-1_desc-confounds_timeseries.tsv")
    assert first["confounds_json"].endswith("_desc-confounds_timeseries.json")
    assert first["bold_json"].endswith("_res-2_desc-preproc_bold.json")
    assert first["entities"] == {"subject": "01", "session": "a", "task": "rest",
                                 "acquisition": None, "ceagent": None,
                                 "reconstruction": None, "direction": None, "run": 1,
                                 "echo": None, "space": SPACE, "cohort": None, "res": "2"}
    assert [(r["entities"]["session"], r["entities"]["run"]) for r in runs] == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    only = find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE,
                                session=["b"], run=2)
    assert len(only) == 1 and only[0]["entities"]["session"] == "b"
    assert only[0]["entities"]["run"] == 2


def test_resolution_by_header_when_label_is_an_index(tmp_path):
    # fMRIPrep's res-1 index here points at a 2 mm image; res-2 at 3 mm
    root = make_fmriprep(tmp_path / "fmriprep", spaces=((SPACE, "1", 2.0), (SPACE, "2", 3.0)))
    runs = find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE, resolution=2.0)
    assert runs[0]["entities"]["res"] == "1"
    runs = find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE, resolution=3)
    assert runs[0]["entities"]["res"] == "2"
    runs = find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE,
                                resolution="res-2")
    assert runs[0]["entities"]["res"] == "2"
    # no resolution asked: the data's, the finest of several (2 mm here)
    runs = find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE)
    assert runs[0]["entities"]["res"] == "1" and runs[0]["voxel_size"] == (2.0, 2.0, 2.0)
    # a res label in the space, as fMRIPrep spells it
    runs = find_fmriprep_inputs(root, subject="01", task="rest", space=f"{SPACE}:res-2")
    assert runs[0]["entities"]["res"] == "2"


def test_missing_space_lists_existing_spaces(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep")
    with pytest.raises(InputError) as err:
        find_fmriprep_inputs(root, subject="01", task="rest", space="MNI152NLin6Asym",
                             resolution=2.0)
    msg = str(err.value)
    assert "sub-01_task-rest_run-1_space-MNI152NLin6Asym_res-2_desc-preproc_bold.nii.gz" in msg
    assert f"Spaces (with cohort/res labels) that exist for sub-01, task 'rest': " \
           f"['{SPACE}:res-2', 'T1w']" in msg
    assert f"`output_space` {SPACE}" in msg
    assert available_spaces(root, "01") == [f"{SPACE}:res-2", "T1w"]


def test_missing_resolution(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep")
    with pytest.raises(InputError, match=re.escape(
            f"space-{SPACE}_res-1_desc-preproc_bold.nii.gz (space-{SPACE} at 1.0 mm); found "
            f"instead: ['sub-01_task-rest_run-1_space-{SPACE}_res-2_desc-preproc_bold.nii.gz "
            "[2x2x2 mm]'")) as err:
        find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE, resolution=1.0)
    # the files are there at another resolution: never "re-run fMRIPrep"
    assert "re-run" not in str(err.value).lower()
    assert "drop `output_resolution`" in str(err.value)


def test_missing_mask_and_confounds_named(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep")
    func = root / "sub-01" / "func"
    (func / f"sub-01_task-rest_run-1_space-{SPACE}_res-2_desc-brain_mask.nii.gz").unlink()
    (func / "sub-01_task-rest_run-1_desc-confounds_timeseries.tsv").unlink()
    with pytest.raises(InputError) as err:
        find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE, resolution=2.0)
    msg = str(err.value)
    assert f"sub-01/func/sub-01_task-rest_run-1_space-{SPACE}_res-2_desc-brain_mask.nii.gz" in msg
    assert "sub-01/func/sub-01_task-rest_run-1_desc-confounds_timeseries.tsv" in msg


def test_legacy_confounds_name_and_no_run(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep", runs=(None,), legacy_confounds=True)
    runs = find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE, resolution=2)
    assert Path(runs[0]["confounds"]).name == "sub-01_task-rest_desc-confounds_regressors.tsv"
    assert runs[0]["entities"]["run"] is None


def test_not_fmriprep_and_unknown_subject_or_task(tmp_path):
    raw = make_fmriprep(tmp_path / "out" / "fmriprep", description=True)
    with pytest.raises(InputError, match=re.escape(
            f"`fmriprep_dir` {tmp_path / 'out'} is not an fMRIPrep derivatives dataset: it "
            "has no dataset_description.json. It contains")):
        find_fmriprep_inputs(tmp_path / "out", subject="01", task="rest", space=SPACE)
    with pytest.raises(InputError, match=re.escape(
            f"`fmriprep_dir` {raw} has no sub-02 folder. Subjects there: ['sub-01']")):
        find_fmriprep_inputs(raw, subject="02", task="rest", space=SPACE)
    with pytest.raises(InputError, match=re.escape(
            "no desc-preproc_bold for sub-01, task 'oneback'. Tasks with desc-preproc_bold "
            "for this subject: ['rest']")):
        find_fmriprep_inputs(raw, subject="01", task="oneback", space=SPACE)
    with pytest.raises(InputError, match="does not exist or is not a directory"):
        find_fmriprep_inputs(tmp_path / "missing", subject="01", task="rest", space=SPACE)


def test_mask_off_grid(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep")
    mask = (root / "sub-01" / "func"
            / f"sub-01_task-rest_run-1_space-{SPACE}_res-2_desc-brain_mask.nii.gz")
    _nii(mask, (7, 8, 10), 2.0, dtype=np.uint8)
    with pytest.raises(DimensionError, match=re.escape(
            f"sub-01_task-rest_run-1_space-{SPACE}_res-2_desc-brain_mask.nii.gz (shape "
            "(7, 8, 10)) is not on the grid of")):
        find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE, resolution=2.0)


# ----------------------------------------------------------------- synthetic generator
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from dpnbids.sim.generator import SynthParams, generate_dataset

    params = SynthParams(n_responders=1, n_nonresponders=1, n_volumes=80, n_runs=2, seed=3)
    return generate_dataset(tmp_path_factory.mktemp("synth") / "bids", params)


def test_synthetic_fmriprep_tree_end_to_end(synth):
    import pandas as pd

    from dpnbids.preproc.checks import load_bold
    from dpnbids.preproc.confounds import framewise_displacement
    from dpnbids.preproc.denoise import denoise

    runs = find_fmriprep_inputs(synth.fmriprep_dir, subject="01", task="rest",
                                space="MNI152NLin2009aSym", resolution=4.0)
    assert [r["entities"]["run"] for r in runs] == [1, 2]
    assert all(r["entities"]["res"] == "4" for r in runs)
    run = runs[0]
    img, tr = load_bold(run["bold"], sidecar=json.loads(Path(run["bold_json"]).read_text()),
                        min_volumes=50)
    assert tr == pytest.approx(2.6)
    conf = pd.read_csv(run["confounds"], sep="\t", na_values=["n/a"])
    motion = conf[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
    # Power FD agrees between the generator and dpnbids.preproc.confounds
    np.testing.assert_allclose(framewise_displacement(motion)[1:],
                               conf["framewise_displacement"].iloc[1:], atol=1e-5)
    mask = nib.load(run["mask"])
    out = denoise(img, conf, mask, tr, strategy="conn",
                  confounds_meta=json.loads(Path(run["confounds_json"]).read_text()))
    inside = out.get_fdata()[np.asanyarray(mask.dataobj) > 0]
    assert inside.std() > 0 and np.allclose(inside.mean(axis=1), 0, atol=1e-3 * inside.std())
    with pytest.raises(InputError, match=re.escape(
            "['MNI152NLin2009aSym:res-4']")):
        find_fmriprep_inputs(synth.fmriprep_dir, subject="01", task="rest",
                             space="MNI152NLin2009aSym", resolution=2.0)


def test_no_res_entity_native_voxels_taken_by_default(tmp_path):
    # fMRIPrep's default --output-spaces MNI152NLin2009cAsym: the BOLD's own 3 mm voxels
    # and no res- entity; dpnbids takes it with no --output-resolution
    root = make_fmriprep(tmp_path / "fmriprep", spaces=((SPACE, None, 3.0),))
    runs = find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE)
    assert Path(runs[0]["bold"]).name == f"sub-01_task-rest_run-1_space-{SPACE}_desc-preproc_bold.nii.gz"
    assert runs[0]["entities"]["res"] is None and runs[0]["voxel_size"] == (3.0, 3.0, 3.0)
    # an explicit resolution that is not there names what is, and how to take it
    with pytest.raises(InputError) as err:
        find_fmriprep_inputs(root, subject="01", task="rest", space=SPACE, resolution=2.0)
    assert "[3x3x3 mm]" in str(err.value) and "drop `output_resolution`" in str(err.value)


def test_cohort_entity(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep", spaces=(
        ("MNIPediatricAsym_cohort-1", "2", 2.0), ("MNIPediatricAsym_cohort-2", "2", 2.0)))
    runs = find_fmriprep_inputs(root, subject="01", task="rest",
                                space="MNIPediatricAsym:cohort-2")
    assert "_space-MNIPediatricAsym_cohort-2_res-2_desc-preproc_bold" in runs[0]["bold"]
    assert runs[0]["mask"].endswith("_space-MNIPediatricAsym_cohort-2_res-2_desc-brain_mask.nii.gz")
    assert runs[0]["entities"]["cohort"] == "2"
    with pytest.raises(InputError, match="several cohorts"):
        find_fmriprep_inputs(root, subject="01", task="rest", space="MNIPediatricAsym")
    with pytest.raises(InputError) as err:
        find_fmriprep_inputs(root, subject="01", task="rest", space="MNI152NLin6Asym")
    assert "`output_space` MNIPediatricAsym:cohort-1" in str(err.value)


def test_bad_space_syntax(tmp_path):
    root = make_fmriprep(tmp_path / "fmriprep")
    with pytest.raises(InputError, match="not a space name"):
        find_fmriprep_inputs(root, subject="01", task="rest", space="MNI152:res_2")
