"""The real studyforrest subject (Philips 3T, oblique, scaled, no SliceTiming) end to end.

Runs ``dpnbids ... participant --task-id oneback`` once and checks the
normalised T1w brain mask against the template (Dice >= 0.9), that
BOLD-to-T1w coregistration improves the similarity cost over the identity,
that slice timing was skipped with a warning, and that the report is written.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli as main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "studyforrest"
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    if not (DATA / "sub-01").is_dir():
        pytest.fail(f"the real test subject is missing: expected {DATA} (../shared beside "
                    "the repository)")
    root = tmp_path_factory.mktemp("real")
    out = root / "out"
    code = main([str(DATA), str(out), "participant", "--task-id", "oneback",
                 "--skip-bids-validation", "-w", str(root / "work"), "--nprocs", "2",
                 "--omp-nthreads", "2"])
    assert code == 0
    return out


def test_normalised_mask_dice(real_run):
    from dpnbids.preproc.anat import dice
    from dpnbids.templates import load_template

    mask = real_run / "sub-01" / "anat" / "sub-01_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz"
    img = nib.load(str(mask))
    zooms = img.header.get_zooms()[:3]
    tmpl = load_template("MNI152NLin2009aSym", float(zooms[0]), "mask")
    assert img.shape == tmpl.shape
    d = dice(np.asarray(img.dataobj) > 0.5, np.asarray(tmpl.dataobj) > 0.5)
    print(f"real subject normalised brain-mask Dice = {d:.3f}")
    assert d >= 0.9


def test_coregistration_improves_cost(real_run):
    side = next((real_run / "sub-01" / "func").glob("*desc-preproc_bold.json"))
    meta = json.loads(side.read_text())
    costs = meta["CoregistrationCost"]
    print(f"coregistration cost identity={costs['identity']:.4f} final={costs['final']:.4f}")
    assert costs["final"] < costs["identity"]
    assert meta["RepetitionTime"] == pytest.approx(1.79355, abs=1e-3)
    assert meta["SliceTimingCorrected"] is False


def test_outputs_and_report(real_run):
    func = real_run / "sub-01" / "func"
    for desc in ("preproc_bold", "denoised_bold", "brain_mask"):
        files = list(func.glob(f"*space-MNI152NLin2009aSym_res-2_desc-{desc}.nii.gz"))
        assert len(files) == 1, desc
    bold = nib.load(str(next(func.glob("*desc-denoised_bold.nii.gz"))))
    assert bold.shape[:3] == (99, 117, 95) and 140 <= bold.shape[3] <= 156
    confounds = next(func.glob("*desc-confounds_timeseries.tsv")).read_text().splitlines()
    header = confounds[0].split("\t")
    for col in ("trans_x", "rot_z", "framewise_displacement", "dvars", "global_signal",
                "white_matter", "csf", "a_comp_cor_04", "trans_x_derivative1"):
        assert col in header
    report = (real_run / "sub-01.html").read_text()
    assert "slice-timing" in report.lower()
