"""fMRIPrep 23.x output through both levels, called as a new user would.

The natural call is ``dpnbids BIDS OUT participant --fmriprep-dir FMRIPREP
--output-space MNI152NLin2009cAsym`` with no other flag (then ``group``). The
fixtures (:mod:`fmriprep_fixtures`) are shaped like fMRIPrep 23.2 output, not
like dpnbids' own writer: ``res-2`` on the 97x115x97 template grid, the BOLD's
own 3x3x4 mm voxels with no ``res-``, several spaces side by side, ``n/a``
first rows, varying outlier and CompCor columns. MNI152NLin2009cAsym is not
available offline here, so these runs also prove that nothing needs a
template download. Only the cross-validation is trimmed (folds, epochs), as
six subjects cannot fill ten folds.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, run_validator, validator_exe
from fmriprep_fixtures import make_fmriprep_dataset

SPACE = "MNI152NLin2009cAsym"
#: Six subjects cannot fill the default ten folds; nothing else is changed.
CV_SMALL = ["--folds", "2", "--epochs", "3", "--n-bootstrap", "50", "--input-sets", "ASC"]
COMMON = ["--skip-bids-validation", "--nprocs", "2", "--omp-nthreads", "1"]


def _call(ds, out, level, *extra, work=None):
    argv = [str(ds["bids"]), str(out), level, "--fmriprep-dir", str(ds["fmriprep"]),
            "--output-space", SPACE, *COMMON, *extra]
    if work is not None:
        argv += ["-w", str(work)]
    return run_cli(argv)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Three subjects with res-2 (and NLin6 and T1w beside it), three with the native
    3x3x4 mm output only: both of fMRIPrep's kinds in one cohort."""
    root = tmp_path_factory.mktemp("fmriprep_mixed")
    subjects = {"01": 1, "02": 0, "03": 1, "04": 0, "05": 1, "06": 0}
    layouts = {s: (["res2", "nlin6", "T1w"] if i < 3 else ["native"])
               for i, s in enumerate(subjects)}
    return make_fmriprep_dataset(root, subjects=subjects, layouts=layouts, n_volumes=110,
                                 tr=2.0, seed=4)


@pytest.mark.slow
def test_natural_call_both_levels_on_mixed_fmriprep_grids(mixed, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    assert _call(mixed, out, "participant", work=work) == 0, run_cli.last_stderr
    res2 = sorted(out.glob(f"sub-0[123]/func/*_space-{SPACE}_res-2_desc-denoised_bold.nii.gz"))
    native = sorted(out.glob(f"sub-0[456]/func/*_space-{SPACE}_desc-denoised_bold.nii.gz"))
    assert len(res2) == 3 and len(native) == 3
    assert nib.load(res2[0]).shape[:3] == (97, 115, 97)
    img = nib.load(native[0])
    assert img.shape[:3] == (65, 77, 49)
    assert np.allclose(nib.affines.voxel_sizes(img.affine), (3, 3, 4))
    meta = json.loads(Path(str(native[0]).replace(".nii.gz", ".json")).read_text())
    assert meta["TemporalDegreesOfFreedom"] >= 10 and "_res-" not in native[0].name
    assert "3x3x4 mm voxels" in meta["VoxelSize"]
    # the reports render without the (unavailable) template
    for sub in ("01", "04"):
        assert "BOLD reference" in (out / f"sub-{sub}.html").read_text()

    code = _call(mixed, out, "group", *CV_SMALL, work=work)
    assert code == 0, run_cli.last_stderr
    group = out / "group"
    comps = sorted(group.glob(f"task-rest_space-{SPACE}_res-4_desc-ica_components.nii.gz"))
    assert comps, sorted(p.name for p in group.iterdir())
    sidecar = json.loads((group / comps[0].name.replace(".nii.gz", ".json")).read_text())
    grid = sidecar["AnalysisGrid"]
    assert grid["Resampled"] and grid["VoxelSize"] == [4.0, 4.0, 4.0]
    assert "coarsest input voxel size" in grid["Reason"]
    assert "MNI152 variant" in sidecar["NetworkLabels"]
    order = sidecar["ModelOrder"]
    assert order["Requested"] == "auto" and 1 <= order["NumberOfComponents"] <= order["Cap"]
    assert nib.load(comps[0]).shape[:3] == tuple(grid["Shape"])
    # stage-2 maps of every subject on the common grid
    stage2 = sorted(out.glob(f"sub-*/func/*_space-{SPACE}_res-4_desc-stage2pe_components.nii.gz"))
    assert len(stage2) == 6
    # ... published with group/ as one set: the group folder lists them as its own
    owned = json.loads((group / "published_files.json").read_text())["files"]
    assert {str(p.relative_to(out)) for p in stage2} <= set(owned)
    assert not list(out.glob(".group-*"))
    html = (out / "group.html").read_text()
    assert "Model order" in html and "analysis_grid" in html
    if validator_exe():
        proc = run_validator(out)
        assert proc.returncode == 0, proc.stdout[-3000:]
    # the model scores a new patient whose fMRIPrep run is on its own 3x3x4 mm grid
    new = tmp_path / "new"
    assert _call(mixed, new, "participant", "--participant-label", "05", "--model",
                 str(group / "model"), work=tmp_path / "w_new") == 0, run_cli.last_stderr
    pred = pd.read_csv(next(new.glob("sub-05/func/*_desc-dpnbids_prediction.tsv")), sep="\t")
    assert 0.0 <= float(pred["probability_response"].iloc[0]) <= 1.0
    assert next(new.glob(f"sub-05/func/*_space-{SPACE}_res-4_desc-stage2pe_components.nii.gz"))


@pytest.mark.slow
def test_native_only_subject_and_censoring(tmp_path):
    """fMRIPrep's default output (no res-, 3x3x4 mm) with --fd-thresh: names keep no res-,
    the JSON records the censored volumes and the dof budget."""
    ds = make_fmriprep_dataset(tmp_path / "ds", subjects={"01": 1, "02": 0},
                               layouts=("native",), n_volumes=110, tr=2.0, seed=2, n_spikes=4)
    out = tmp_path / "out"
    assert _call(ds, out, "participant", "--participant-label", "01", "--fd-thresh", "0.5",
                 work=tmp_path / "w") == 0, run_cli.last_stderr
    den = out / "sub-01" / "func" / f"sub-01_task-rest_space-{SPACE}_desc-denoised_bold.nii.gz"
    meta = json.loads(Path(str(den).replace(".nii.gz", ".json")).read_text())
    n_cens = meta["NumberOfCensoredVolumes"]
    assert n_cens >= 4 and meta["FramewiseDisplacementThreshold"] == 0.5
    assert nib.load(den).shape[3] == 110 - n_cens
    assert (out / "sub-01.html").exists()


def test_short_run_refused_in_seconds(tmp_path):
    ds = make_fmriprep_dataset(tmp_path / "ds", subjects={"01": 1, "02": 0},
                               layouts=("native",), n_volumes=60, tr=2.0, seed=1)
    out = tmp_path / "out"
    started = time.time()
    code = _call(ds, out, "participant", "--min-volumes", "30")
    assert code == 2 and time.time() - started < 60
    err = run_cli.last_stderr
    assert "temporal degrees of freedom" in err and "--denoise-strategy" in err
    assert "Traceback" not in err and not out.exists()


def test_too_many_volumes_censored_refused(tmp_path):
    ds = make_fmriprep_dataset(tmp_path / "ds", subjects={"01": 1, "02": 0},
                               layouts=("native",), n_volumes=110, tr=2.0, seed=1, n_spikes=8)
    out = tmp_path / "out"
    code = _call(ds, out, "participant", "--fd-thresh", "0.01", "--participant-label", "01")
    assert code == 2 and not out.exists()
    assert "censored by --fd-thresh" in run_cli.last_stderr


def test_missing_space_names_the_flag(tmp_path):
    ds = make_fmriprep_dataset(tmp_path / "ds", subjects={"01": 1, "02": 0},
                               layouts=("nlin6",), n_volumes=60, tr=2.0, seed=1)
    out = tmp_path / "out"
    code = _call(ds, out, "participant")
    err = run_cli.last_stderr
    assert code == 2 and not out.exists()
    assert "--output-space MNI152NLin6Asym" in err and "re-run fmriprep on" not in err.lower()


@pytest.mark.slow  # runs the participant level first: 42 s of CPU (2026-12-07)
def test_group_refuses_fixed_order_above_dof_before_loading(tmp_path):
    """--n-components 40 on 110-volume runs: refused in the checks, no image data read."""
    ds = make_fmriprep_dataset(tmp_path / "ds", subjects={"01": 1, "02": 0, "03": 1, "04": 0},
                               layouts=("native",), n_volumes=110, tr=2.0, seed=3)
    from dpnbids.group.level import check_model_order
    from dpnbids.workflows.inputs import RunFiles
    from dpnbids.preproc.dof import RunDof

    # the refusal itself, from dof budgets alone
    budget = RunDof(110, 2.0, 36, 17, 17, 0, 19)
    runs = [RunFiles("01", Path("a"), Path("b"))]

    class _Cfg:
        class ica:
            n_components = 40
            back_projection = "dual_regression"

        class preproc:
            denoise_strategy, high_pass, low_pass = "conn", 0.008, 0.09

    from dpnbids.exceptions import InputError

    with pytest.raises(InputError, match="at most 17 components"):
        check_model_order(_Cfg, runs, {"sub-01": budget})
    _Cfg.ica.back_projection = "gica1"  # GICA1 needs no stage-1 time courses
    assert check_model_order(_Cfg, runs, {"sub-01": budget}) == 17
    # and through the CLI, on real participant outputs, with nothing written
    out = tmp_path / "out"
    assert _call(ds, out, "participant", work=tmp_path / "w") == 0, run_cli.last_stderr
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    started = time.time()
    code = _call(ds, out, "group", "--n-components", "40", "--folds", "2")
    assert code == 2 and time.time() - started < 60
    assert "--n-components 40 is more than" in run_cli.last_stderr
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # the group level's budget (from the outputs' confounds) is the participant level's
    den = next(out.glob("sub-01/func/*desc-denoised_bold.json"))
    dof = json.loads(den.read_text())["TemporalDegreesOfFreedom"]
    assert f"keeps {dof} temporal degrees of freedom" in run_cli.last_stderr
    conf = pd.read_csv(next(out.glob("sub-01/func/*desc-confounds_timeseries.tsv")), sep="\t")
    assert len(conf) == 110


def test_mixed_repetition_times_refused():
    from dpnbids.exceptions import InputError
    from dpnbids.preproc.dof import RunDof
    from dpnbids.group.level import check_same_tr

    same = {"sub-01": RunDof(110, 2.0, 36, 17, 17, 0, 19),
            "sub-02": RunDof(120, 2.0, 39, 17, 17, 0, 22)}
    assert check_same_tr(same) == 2.0
    mixed = {**same, "sub-03": RunDof(100, 2.5, 36, 17, 17, 0, 19)}
    with pytest.raises(InputError, match=r"TR 2 s: sub-01, sub-02; TR 2.5 s: sub-03"):
        check_same_tr(mixed)
