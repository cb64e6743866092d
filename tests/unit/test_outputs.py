"""The one derivatives writer: names from entities, atomic writes, shared files."""
from __future__ import annotations

import json
import multiprocessing as mp
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dpnbids.derivatives import (DerivativesWriter, atomic_write_bytes, build_name,
                                       res_label, split_bids_name)

SRC = "/data/sub-01/ses-A/func/sub-01_ses-A_task-rest_run-2_bold.nii.gz"


def test_split_and_build_roundtrip():
    ents, suffix, ext = split_bids_name(SRC)
    assert ents == {"sub": "01", "ses": "A", "task": "rest", "run": "2"}
    assert (suffix, ext) == ("bold", ".nii.gz")
    assert build_name(ents, suffix, ext) == "sub-01_ses-A_task-rest_run-2_bold.nii.gz"


def test_path_orders_entities_and_folders(tmp_path):
    w = DerivativesWriter(tmp_path)
    p = w.path(source=SRC, desc="preproc", space="MNI152NLin2009aSym", res="2")
    assert p == tmp_path / "sub-01" / "ses-A" / "func" / (
        "sub-01_ses-A_task-rest_run-2_space-MNI152NLin2009aSym_res-2_desc-preproc_bold.nii.gz")
    t1 = w.path(source="/d/sub-01/anat/sub-01_T1w.nii.gz", suffix="xfm", extension=".mat",
                **{"from": "T1w", "to": "MNI152NLin2009aSym", "mode": "image"})
    assert t1.name == "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat"
    with pytest.raises(ValueError, match="not alphanumeric"):
        w.path(source=SRC, desc="bad-value")


@pytest.mark.parametrize("res,label", [(2.0, "2"), (4, "4"), (1.5, "1p5")])
def test_res_label(res, label):
    assert res_label(res) == label


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "file.tsv"
    atomic_write_bytes(target, b"old\n")

    class Boom(Exception):
        pass

    w = DerivativesWriter(tmp_path)
    frame = pd.DataFrame({"x": [1]})
    original = frame.to_csv

    def failing(*args, **kwargs):
        raise Boom

    frame.to_csv = failing
    with pytest.raises(Boom):
        w.write_tsv(frame, target)
    frame.to_csv = original
    assert target.read_bytes() == b"old\n"
    assert sorted(os.listdir(target.parent)) == ["file.tsv"]


def test_write_nifti_reproducible_bytes(tmp_path, rng):
    img = nib.Nifti1Image(rng.normal(size=(7, 8, 9)).astype(np.float32), np.eye(4))
    w = DerivativesWriter(tmp_path)
    a = w.write_nifti(img, tmp_path / "a.nii.gz")
    b = w.write_nifti(img, tmp_path / "b.nii.gz")
    assert a.read_bytes() == b.read_bytes()
    np.testing.assert_array_equal(nib.load(str(a)).get_fdata(), img.get_fdata())


def _concurrent_description(args):
    out, bids = args
    for _ in range(20):
        DerivativesWriter(out).write_dataset_description(bids_dir=bids)
    return True


def test_concurrent_dataset_description(tmp_path):
    out = tmp_path / "out"
    with mp.get_context("spawn").Pool(4) as pool:
        assert all(pool.map(_concurrent_description, [(out, tmp_path / "bids")] * 8))
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "dpnbids"
    assert desc["SourceDatasets"][0]["URL"].startswith("file://")
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore)) and "logs/" in ignore
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]


def test_container_recorded(tmp_path):
    w = DerivativesWriter(tmp_path)
    w.write_dataset_description(bids_dir=tmp_path, container="dpn-bids:0.1.0")
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "dpn-bids:0.1.0"}


def test_written_layout_passes_bids_validator(tmp_path):
    """Every kind of file the participant/group levels write, through the writer."""
    from conftest import run_validator

    w = DerivativesWriter(tmp_path / "out")
    src = "/x/sub-01/func/sub-01_task-rest_bold.nii.gz"
    t1 = "/x/sub-01/anat/sub-01_T1w.nii.gz"
    bold = nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4))
    bold.header.set_xyzt_units("mm", "sec")
    bold.header["pixdim"][4] = 2.0
    mask = nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4))
    mask.header.set_xyzt_units("mm")
    std = {"space": "MNI152NLin2009aSym", "res": "2"}
    resmeta = {"Resolution": {"2": "2 mm"}}
    for desc in ("preproc", "denoised"):
        p = w.path(source=src, desc=desc, **std)
        w.write_nifti(bold, p)
        w.write_json({"RepetitionTime": 2.0, "SkullStripped": desc == "denoised", **resmeta},
                     p.with_name(p.name.replace(".nii.gz", ".json")))
    p = w.path(source=src, suffix="mask", desc="brain", **std)
    w.write_nifti(mask, p)
    w.write_json({"Type": "Brain", **resmeta}, p.with_name(p.name.replace(".nii.gz", ".json")))
    for desc in ("confounds", "stage1"):
        p = w.path(source=src, suffix="timeseries", extension=".tsv", desc=desc)
        w.write_tsv(pd.DataFrame({"a": [1.0, np.nan]}), p)
        w.write_json({}, p.with_suffix(".json"))
    for desc in ("stage2pe", "stage2z"):
        w.write_nifti(bold, w.path(source=src, suffix="components", desc=desc, **std))
    p = w.path(source=t1, space="MNI152NLin2009aSym", desc="preproc")
    w.write_nifti(mask, p)
    w.write_json({"SkullStripped": False}, p.with_name(p.name.replace(".nii.gz", ".json")))
    w.write_nifti(mask, w.path(source=t1, suffix="mask", space="MNI152NLin2009aSym",
                               desc="brain"))
    xfm = {"from": "T1w", "to": "MNI152NLin2009aSym", "mode": "image"}
    w.write_nifti(mask, w.path(source=t1, suffix="xfm", **xfm))
    w.write_text("x", w.path(source=t1, suffix="xfm", extension=".mat", desc="affine", **xfm))
    w.write_tsv(pd.DataFrame({"p": [0.5]}), w.path(source=src, suffix="prediction",
                                                   extension=".tsv", desc="dpnbids"))
    w.write_text("<html></html>", w.output_dir / "sub-01.html")
    w.write_text("a\n1\n", w.output_dir / "group" / "predictions.tsv")
    w.write_text("a = 1\n", w.output_dir / "logs" / "config.toml")
    w.write_dataset_description(bids_dir=tmp_path)
    proc = run_validator(w.output_dir)
    assert proc.returncode == 0, proc.stdout[-3000:]


_KILLED_WRITER = """
import sys, time
from pathlib import Path
from dpnbids.derivatives import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_killed_writers_temporary_is_removed_and_live_ones_kept(tmp_path):
    """A writer killed (SIGKILL) mid-write leaves only a hidden temporary beside the old
    file; :func:`remove_stale_temporaries` removes it, and keeps a live writer's and
    another host's."""
    import signal
    import socket
    import subprocess
    import sys

    from dpnbids.derivatives import is_stale_temporary, remove_stale_temporaries

    target = tmp_path / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    atomic_write_bytes(target, b"old")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)],
                            stdout=subprocess.PIPE, text=True)
    left = tmp_path / proc.stdout.readline().strip()
    assert left.exists() and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    live = target.with_name(f".tmp-x.tsv~{os.getpid()}@{socket.gethostname()}~abc.tsv")
    elsewhere = target.with_name(f".tmp-y.tsv~{proc.pid}@not-{socket.gethostname()}~abc.tsv")
    live.write_text("being written")
    elsewhere.write_text("another host's run")
    assert is_stale_temporary(left) and not is_stale_temporary(live)
    assert not is_stale_temporary(elsewhere) and not is_stale_temporary(target)
    assert remove_stale_temporaries(tmp_path) == [left]
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(
        [target.name, live.name, elsewhere.name])
    assert target.read_bytes() == b"old"
