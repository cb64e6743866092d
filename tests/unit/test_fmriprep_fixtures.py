"""The fMRIPrep 23.x fixture itself: names, grids, tables and the raw dataset."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import run_validator
from fmriprep_fixtures import (NLIN6_AFFINE, RES2_AFFINE, layout_spec, make_fmriprep_dataset,
                               native_grid, space_entities)

ALL = ("res2", "native", "nlin6", "cohort", "T1w")


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmriprep_fx")
    return make_fmriprep_dataset(root, subjects={"01": 1, "02": 0}, unlabelled="03",
                                 n_volumes=40, layouts={"01": ALL, "02": ("native",),
                                                        "03": ("res2",)},
                                 n_nonsteady=2, n_spikes=3, seed=3)


def test_grids_are_fmriprep_grids():
    assert layout_spec("res2")["shape"] == (97, 115, 97)
    assert np.array_equal(layout_spec("res2")["affine"], RES2_AFFINE)
    assert layout_spec("nlin6")["shape"] == (91, 109, 91)
    assert np.array_equal(layout_spec("nlin6")["affine"], NLIN6_AFFINE)
    affine, shape = native_grid()
    assert shape == (65, 77, 49)
    assert np.allclose(np.diag(affine)[:3], (3, 3, 4))
    # the native grid covers the res-2 template's world box
    corner_hi = affine @ np.r_[np.array(shape) - 1, 1]
    assert np.all(corner_hi[:3] >= (RES2_AFFINE @ np.r_[96, 114, 96, 1])[:3])
    assert np.allclose(affine[:3, 3], RES2_AFFINE[:3, 3])
    assert space_entities("native") == "space-MNI152NLin2009cAsym"
    assert space_entities("cohort") == "space-MNIPediatricAsym_cohort-1_res-2"


def test_names_parse_as_bids_entities(fx):
    from bids.layout import parse_file_entities

    files = [p for p in fx["fmriprep"].rglob("*") if p.is_file() and p.name.startswith("sub-")
             and p.parent.name in ("anat", "func")]
    assert len(files) > 60
    for path in files:
        ents = parse_file_entities(str(path))
        assert ents.get("subject") in ("01", "02", "03"), path.name
        if "_space-" in path.name:
            assert "space" in ents, path.name
        if "_res-2_" in path.name:
            assert str(ents.get("res")) == "2", path.name
    cohort = fx["subjects"]["01"]["runs"][0]["bold"]["cohort"]
    ents = parse_file_entities(str(cohort))  # pybids has no cohort entity (niworkflows has)
    assert ents["space"] == "MNIPediatricAsym" and "_cohort-1_res-2_" in cohort.name
    assert ents["desc"] == "preproc" and ents["suffix"] == "bold"


def test_layout_of_each_subject(fx):
    func = fx["fmriprep"] / "sub-01" / "func"
    stem = "sub-01_task-rest"
    for name in ("desc-confounds_timeseries.tsv", "desc-confounds_timeseries.json",
                 "desc-coreg_boldref.nii.gz", "desc-hmc_boldref.nii.gz",
                 "from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt",
                 "from-orig_to-boldref_mode-image_desc-hmc_xfm.txt"):
        assert (func / f"{stem}_{name}").exists(), name
    for lay in ALL:
        ent = space_entities(lay)
        for suffix in ("boldref.nii.gz", "desc-brain_mask.nii.gz", "desc-preproc_bold.nii.gz",
                       "desc-preproc_bold.json"):
            assert (func / f"{stem}_{ent}_{suffix}").exists(), (lay, suffix)
    anat = fx["fmriprep"] / "sub-01" / "anat"
    for name in ("desc-preproc_T1w.nii.gz", "desc-brain_mask.nii.gz", "dseg.nii.gz",
                 "label-GM_probseg.nii.gz", "label-WM_probseg.nii.gz", "label-CSF_probseg.nii.gz",
                 "from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
                 "space-MNI152NLin2009cAsym_res-2_desc-preproc_T1w.nii.gz",
                 "space-MNI152NLin2009cAsym_res-2_desc-brain_mask.nii.gz",
                 "space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz"):
        assert (anat / f"sub-01_{name}").exists(), name
    assert not list((fx["fmriprep"] / "sub-02" / "func").glob("*_res-2_*"))
    assert not list((fx["fmriprep"] / "sub-03" / "func").glob("*MNI152NLin2009cAsym_desc-*"))
    for top in ("logs", "sub-01.html", "sub-01/figures", "desc-aseg_dseg.tsv",
                "desc-aparcaseg_dseg.tsv"):
        assert (fx["fmriprep"] / top).exists(), top
    assert list((fx["fmriprep"] / "sub-01" / "figures").glob("*.svg"))
    desc = json.loads((fx["fmriprep"] / "dataset_description.json").read_text())
    assert desc["Name"] == "fMRIPrep - fMRI PREProcessing workflow"
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "fMRIPrep"
    assert desc["GeneratedBy"][0]["Version"].startswith("23.")


def test_bold_grids_dtypes_and_sidecars(fx):
    runs = fx["subjects"]["01"]["runs"][0]
    expected = {"res2": ((97, 115, 97), (2, 2, 2)), "native": ((65, 77, 49), (3, 3, 4)),
                "nlin6": ((91, 109, 91), (2, 2, 2))}
    for lay, path in runs["bold"].items():
        img = nib.load(path)
        assert img.get_data_dtype() == np.float32
        assert img.shape[3] == 40
        assert np.isclose(img.header.get_zooms()[3], 2.0)
        assert np.allclose(img.affine, layout_spec(lay)["affine"])
        if lay in expected:
            assert img.shape[:3] == expected[lay][0]
            assert np.allclose(np.abs(np.diag(img.affine))[:3], expected[lay][1])
        mask = np.asanyarray(nib.load(runs["mask"][lay]).dataobj) > 0
        data = np.asanyarray(img.dataobj)
        assert mask.any() and not data[~mask].any()  # zero outside the brain
        assert np.all(data[mask].mean(axis=-1) > 100)
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert meta["RepetitionTime"] == 2.0 and meta["TaskName"] == "rest"
        assert meta["SkullStripped"] is False and "StartTime" in meta and meta["Sources"]


def test_confounds_table_as_fmriprep_23(fx):
    info = fx["subjects"]["01"]
    path = info["runs"][0]["confounds"]
    first = path.read_text().splitlines()[1].split("\t")
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    header = list(table.columns)
    row0 = dict(zip(header, first))
    for col in header:
        na_first = (col.endswith(("_derivative1", "_derivative1_power2"))
                    or col in ("dvars", "std_dvars", "framewise_displacement", "rmsd"))
        assert (row0[col] == "n/a") == na_first, col
    for base in ("global_signal", "csf", "white_matter", "trans_x", "rot_z"):
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            assert base + suffix in header
    n_cos = int(np.floor(2 * 40 * 2.0 / 128)) - 1  # nipype's DCT order, less the constant
    assert sum(c.startswith("cosine") for c in header) == max(n_cos, 0)
    for col in ("csf_wm", "tcompcor", "t_comp_cor_00", "c_comp_cor_00",
                "w_comp_cor_00", "a_comp_cor_00", "non_steady_state_outlier00",
                "non_steady_state_outlier01"):
        assert col in header, col
    assert "non_steady_state_outlier02" not in header
    for prefix, n in info["n_compcor"].items():
        assert sum(c.startswith(prefix + "_") for c in header) == n
        assert 5 <= n <= 40
    # derivatives follow fMRIPrep's definitions
    d = np.diff(table["trans_x"].to_numpy())
    assert np.allclose(table["trans_x_derivative1"].to_numpy()[1:], d)
    assert np.allclose(table["trans_x_derivative1_power2"].to_numpy()[1:], d ** 2)
    # one motion_outlier spike per flagged volume
    fd = table["framewise_displacement"].fillna(0).to_numpy()
    flagged = np.flatnonzero((fd > 0.5) | (table["std_dvars"].fillna(0).to_numpy() > 1.5))
    spikes = [c for c in header if c.startswith("motion_outlier")]
    assert len(spikes) == flagged.size >= 3
    assert [int(np.argmax(table[c].to_numpy())) for c in spikes] == list(flagged)
    assert set(info["spike_frames"][0]) <= set(flagged)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["a_comp_cor_00"]["Mask"] == "combined"
    assert meta["c_comp_cor_00"]["Mask"] == "CSF" and meta["w_comp_cor_00"]["Mask"] == "WM"
    assert meta["t_comp_cor_00"]["Method"] == "tCompCor"
    for key in ("Method", "Retained", "SingularValue", "VarianceExplained",
                "CumulativeVarianceExplained"):
        assert key in meta["a_comp_cor_00"]
    assert any(k.startswith("dropped_") and not v["Retained"] for k, v in meta.items())


def test_raw_dataset_participants_and_validator(fx):
    parts = pd.read_csv(fx["bids"] / "participants.tsv", sep="\t", dtype=str)
    assert list(parts.participant_id) == ["sub-01", "sub-02", "sub-03"]
    assert list(parts.responder) == ["1", "0", "n/a"] or parts.responder.isna().iloc[2]
    sidecar = json.loads((fx["bids"] / "sub-01" / "func" / "sub-01_task-rest_bold.json")
                         .read_text())
    assert sidecar["RepetitionTime"] == 2.0 and sidecar["TaskName"] == "rest"
    proc = run_validator(fx["bids"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
