"""The nipype engine through the CLI: a failed subject does not stop the others, the run
names it and its crash file, and a rerun with the same work directory resumes from the
cached nodes instead of recomputing them."""
from __future__ import annotations

import gzip
import shutil

import pandas as pd
import pytest

from conftest import run_cli



@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from dpnbids.sim.generator import SynthParams, generate_dataset

    params = SynthParams(n_responders=2, n_nonresponders=1, n_volumes=60, seed=5)
    return generate_dataset(tmp_path_factory.mktemp("engine") / "bids", params)


def _denoised(out, sub):
    return sorted((out / f"sub-{sub}" / "func").glob("*desc-denoised_bold.nii.gz"))


def test_failed_subject_is_named_others_finish_and_rerun_resumes(cohort, tmp_path):
    bids, fmriprep = cohort.bids_dir, cohort.fmriprep_dir
    out, work = tmp_path / "out", tmp_path / "work"
    conf = next((fmriprep / "sub-02" / "func").glob("*desc-brain_mask.nii.gz"))
    good = tmp_path / "mask_backup.nii.gz"
    shutil.copyfile(conf, good)
    # sub-02's brain mask keeps its header but loses most of its voxels: the up-front checks
    # (which read headers) pass, and the first node that reads the voxels fails
    raw = gzip.decompress(conf.read_bytes())
    conf.write_bytes(gzip.compress(raw[:352 + 64]))
    argv = [bids, out, "participant", "--fmriprep-dir", fmriprep, "--output-resolution", "4",
            "-w", work, "--nprocs", "2", "--skip-bids-validation"]
    try:
        code = run_cli(argv)
    finally:
        shutil.copyfile(good, conf)
    err = run_cli.last_stderr
    assert code == 4, err
    assert "processing failed for sub-02 (the other subjects finished)" in err
    assert "crash-" in err and str(out / "logs") in err
    assert _denoised(out, "01") and _denoised(out, "03")
    assert not _denoised(out, "02")

    cached = sorted(work.glob("dpnbids_wf/sub_01_wf/bold_*_wf/confounds_denoise/result_*.pklz"))
    assert cached
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert run_cli(argv) == 0, run_cli.last_stderr
    # sub-01's node was not run again: its cached result is untouched; sub-02 now done
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert _denoised(out, "02")
    assert (out / "sub-02.html").exists()


def test_missing_confound_column_is_refused_up_front(cohort, tmp_path):
    fmriprep = cohort.fmriprep_dir
    conf = next((fmriprep / "sub-03" / "func").glob("*desc-confounds_timeseries.tsv"))
    good = tmp_path / "confounds_backup.tsv"
    shutil.copyfile(conf, good)
    out = tmp_path / "out"
    pd.read_csv(conf, sep="\t").drop(columns=["trans_x"]).to_csv(conf, sep="\t", index=False)
    try:
        code = run_cli([cohort.bids_dir, out, "participant", "--fmriprep-dir", fmriprep,
                        "--output-resolution", "4", "-w", tmp_path / "work",
                        "--skip-bids-validation"])
    finally:
        shutil.copyfile(good, conf)
    err = run_cli.last_stderr
    assert code == 2, err
    assert conf.name in err and "['trans_x']" in err and "--denoise-strategy" in err
    assert "Traceback" not in err
    assert not out.exists(), "OUTPUT_DIR must not be created on bad input"
