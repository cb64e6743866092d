"""The built-in preprocessing is bit-reproducible, and killed runs resume.

The participant tests run the participant level of the installed CLI on one
native-space synthetic subject (4 mm BOLD, 50 volumes: the fewest ``--min-volumes``
accepts, 4 mm outputs) with one process and one ITK thread, and compare every derivative
with a clean run's: NIfTI headers and data arrays, TSV and JSON bytes, and the subject
report once its command line and date are blanked. ``logs/`` and the run locks are left
out (they name the run).

* Two clean runs are bit-identical (issue #17: antsRegistration was seeded from the
  clock, and ITK's thread count was set after ITK had read it; see
  :mod:`dpnbids.preproc.itk`).
* A run killed with SIGKILL in the middle of its BOLD registration, then rerun with the
  same ``--work-dir``, takes over the dead run's lock, reuses the nodes that had
  finished (nipype's cache) and writes the same derivatives as the clean run.
* A group run killed with SIGKILL during its cross-validation, then rerun with the same
  ``--work-dir``, reuses its dual-regression nodes and publishes the same group results
  as a clean run; only measured times differ (``timings.json``, the report's Timings
  table, Keras's save date and Python object ids inside ``model.keras``).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import run_cli

pytestmark = [pytest.mark.slow]

ONE_THREAD = ["--participant-label", "01", "--output-resolution", "4", "--dummy-scans", "0",
              "--skip-bids-validation", "--nprocs", "1", "--omp-nthreads", "1",
              "--random-seed", "5"]
#: per-run files that name the run (its PID, time, command line), not derivatives
_RUN_RECORDS = ("logs", ".locks", ".dpnbids.lock")
_REPORT_ROW = re.compile(r'(<td class="l">(?:command line|date \(UTC\))</td>\s*<td>)[^<]*(</td>)')
_TIMINGS_TABLE = re.compile(r"<h3>Timings</h3>\s*<table>.*?</table>", re.DOTALL)
#: files that hold measured times only (they must exist in both runs)
_MEASURED = ("group/timings.json",)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from conftest import make_native_dataset

    root = tmp_path_factory.mktemp("repro")
    synth = make_native_dataset(root, n_volumes=50)
    return synth.bids_dir, root


def _command(bids: Path, out: Path, work: Path) -> list[str]:
    return [str(bids), str(out), "participant", *ONE_THREAD, "-w", str(work)]


@pytest.fixture(scope="module")
def clean_run(dataset):
    bids, root = dataset
    out = root / "clean" / "out"
    assert run_cli(_command(bids, out, root / "clean" / "work")) == 0
    return out


def derivative_files(out: Path) -> list[str]:
    """Every file under OUTPUT_DIR (hidden ones included) except the run records."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and p.relative_to(out).parts[0] not in _RUN_RECORDS)


def _text(path: Path, out: Path) -> str:
    """A text derivative with its run's folder (``out``'s parent, which also holds the
    run's work folder: the command line and configuration record them) as ``RUN``."""
    text = path.read_text().replace(str(out.parent), "RUN")
    if path.suffix == ".html":
        text = _TIMINGS_TABLE.sub("", _REPORT_ROW.sub(r"\1\2", text))
    return text


def _keras_members(path: Path) -> dict:
    """A ``.keras`` zip without what Keras writes from the clock and the Python heap."""
    import zipfile

    def strip_ids(obj):
        if isinstance(obj, dict):
            return {k: strip_ids(v) for k, v in obj.items() if k != "shared_object_id"}
        if isinstance(obj, list):
            return [strip_ids(v) for v in obj]
        return obj

    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist() if n != "metadata.json"}
    members["config.json"] = strip_ids(json.loads(members["config.json"]))
    return members


def _checked_names(checksums: Path) -> list[str]:
    """The files a ``checksums.sha256`` lists, each checked against its own folder."""
    import hashlib

    names = []
    for line in checksums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        actual = hashlib.sha256((checksums.parent / name).read_bytes()).hexdigest()
        names.append(name if actual == digest else f"{name} (checksum wrong)")
    return names


def differences(out_a: Path, out_b: Path) -> list[str]:
    """Derivatives of ``out_b`` that are not bit-identical to those of ``out_a``.

    Text files are compared with each run's folder written ``RUN``; the reports without
    their command line, date and Timings table; ``model.keras`` without Keras's save date
    and object ids; checksum files by the files they list (each checked); files of
    measured times only by their presence.
    """
    names_a, names_b = derivative_files(out_a), derivative_files(out_b)
    diffs = [f"only in {out_a}: {n}" for n in sorted(set(names_a) - set(names_b))]
    diffs += [f"only in {out_b}: {n}" for n in sorted(set(names_b) - set(names_a))]
    for name in sorted(set(names_a) & set(names_b)):
        a, b = out_a / name, out_b / name
        if name.endswith((".nii", ".nii.gz")):
            img_a, img_b = nib.load(a), nib.load(b)
            data_a, data_b = np.asanyarray(img_a.dataobj), np.asanyarray(img_b.dataobj)
            if img_a.header.binaryblock != img_b.header.binaryblock:
                diffs.append(f"{name}: NIfTI headers differ")
            elif not np.array_equal(data_a, data_b):
                diffs.append(f"{name}: {np.count_nonzero(data_a != data_b)} voxels differ, by "
                             f"up to {np.abs(data_a.astype(float) - data_b).max():.4g}")
        elif name in _MEASURED:
            continue
        elif name.endswith(".keras"):
            if _keras_members(a) != _keras_members(b):
                diffs.append(f"{name}: model weights or configuration differ")
        elif name.endswith(".sha256"):
            if _checked_names(a) != _checked_names(b):
                diffs.append(f"{name}: {_checked_names(a)} != {_checked_names(b)}")
        elif name.endswith((".json", ".tsv", ".html", ".txt", ".bidsignore")):
            if _text(a, out_a) != _text(b, out_b):
                diffs.append(f"{name}: contents differ")
        elif a.read_bytes() != b.read_bytes():
            diffs.append(f"{name}: contents differ")
    return diffs


def test_differences_finds_a_changed_voxel(tmp_path):
    """The comparison the two tests below rely on sees one changed voxel and a new file."""
    for name in ("a", "b"):
        (tmp_path / name / "logs").mkdir(parents=True)
        (tmp_path / name / "logs" / f"run-{name}.log").write_text(name)  # run record: ignored
        data = np.zeros((3, 4, 5), np.float32)
        data[1, 2, 3] = 1.0 if name == "b" else 0.0
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / name / "x_bold.nii.gz")
        (tmp_path / name / "x.json").write_text(json.dumps({"a": 1}))
    assert differences(tmp_path / "a", tmp_path / "a") == []
    (tmp_path / "b" / ".x_bold.nii.gz.tmp").write_text("left by a killed writer")
    found = differences(tmp_path / "a", tmp_path / "b")
    assert found == [f"only in {tmp_path / 'b'}: .x_bold.nii.gz.tmp",
                     "x_bold.nii.gz: 1 voxels differ, by up to 1"]


def test_one_thread_runs_are_bit_identical(dataset, clean_run):
    bids, root = dataset
    out = root / "second" / "out"
    assert run_cli(_command(bids, out, root / "second" / "work")) == 0
    assert len(derivative_files(out)) >= 15
    assert differences(clean_run, out) == []


def _wait_for(path_glob: str, root: Path, proc: subprocess.Popen, timeout: float) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {path_glob} appeared")
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{path_glob} did not appear within {timeout} s")


def _end_the_killed_runs_processes(pgid: int) -> None:
    """After the driver alone was killed, end what it left (MultiProc's forkserver and its
    idle pool workers), as a scheduler ending the job's process group would. Otherwise they
    outlive the test suite: nothing is left to stop them."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_participant_run_resumes_after_sigkill(dataset, clean_run):
    from dpnbids.cli.locks import pid_alive

    bids, root = dataset
    out, work = root / "killed" / "out", root / "killed" / "work"
    command = [str(Path(sys.executable).with_name("dpnbids")), *_command(bids, out, work)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    anat = _wait_for("**/anat_preproc/result_anat_preproc.pklz", work, proc, 600)
    _wait_for("**/bold_to_std/_inputs.pklz", work, proc, 600)
    time.sleep(5)  # well inside the BOLD registration (about 30 s on these data)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _end_the_killed_runs_processes(proc.pid)
    assert not list(work.glob("**/bold_to_std/result_bold_to_std.pklz"))
    owner = json.loads((out / ".locks" / "sub-01.lock.owner").read_text())
    assert owner["pid"] == proc.pid and not pid_alive(owner["pid"])
    anat_mtime = anat.stat().st_mtime_ns

    assert run_cli(command[1:]) == 0
    assert "stale lock" in run_cli.last_stderr
    assert anat.stat().st_mtime_ns == anat_mtime, "the finished anat_preproc node was re-run"
    assert not (out / ".locks" / "sub-01.lock.owner").exists()
    assert differences(clean_run, out) == []


GROUP = ["--fmriprep-dir", None, "--output-resolution", "4", "--skip-bids-validation",
         "--nprocs", "1", "--omp-nthreads", "1", "--random-seed", "11"]
GROUP_CV = ["--folds", "2", "--epochs", "3", "--n-bootstrap", "50", "--input-sets", "ASC"]


@pytest.fixture(scope="module")
def group_cohort(tmp_path_factory):
    """A template-space cohort (4 + 4 subjects, fMRIPrep-style inputs) after the
    participant level, and a clean group run of it."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    root = tmp_path_factory.mktemp("group")
    synth = generate_dataset(root / "bids", SynthParams(
        n_responders=4, n_nonresponders=4, seed=2, space="template", n_volumes=80,
        template_resolution=4.0, effect_size=3.0))
    options = [str(synth.fmriprep_dir) if o is None else o for o in GROUP]
    participant = root / "participant" / "out"
    assert run_cli([str(synth.bids_dir), str(participant), "participant", *options,
                    "-w", str(root / "participant" / "work")]) == 0
    clean = root / "clean" / "out"
    shutil.copytree(participant, clean)
    assert run_cli([str(synth.bids_dir), str(clean), "group", *options, *GROUP_CV,
                    "-w", str(root / "clean" / "work")]) == 0
    return synth, options, participant, clean, root


def test_group_run_resumes_after_sigkill(group_cohort):
    from dpnbids.cli.locks import pid_alive
    from dpnbids.group.level import STAGING_PREFIX

    synth, options, participant, clean, root = group_cohort
    out, work = root / "killed" / "out", root / "killed" / "work"
    shutil.copytree(participant, out)
    command = [str(Path(sys.executable).with_name("dpnbids")), str(synth.bids_dir), str(out),
               "group", *options, *GROUP_CV, "-w", str(work)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_for(STAGING_PREFIX + "*/group/cv/splits.tsv", out, proc, 600)  # dual regression done
    time.sleep(2)
    assert proc.poll() is None, "the group run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _end_the_killed_runs_processes(proc.pid)
    assert not (out / "group").exists() and list(out.glob(STAGING_PREFIX + "*"))
    owner = json.loads((out / ".locks" / "group.lock.owner").read_text())
    assert owner["pid"] == proc.pid and not pid_alive(owner["pid"])
    results = sorted(work.glob("dualreg_wf/dual_regression_*/result_*.pklz"))
    assert len(results) == 8
    mtimes = [p.stat().st_mtime_ns for p in results]

    assert run_cli(command[1:]) == 0
    assert "stale lock" in run_cli.last_stderr
    assert [p.stat().st_mtime_ns for p in results] == mtimes, "dual regression was re-run"
    assert not list(out.glob(STAGING_PREFIX + "*"))
    assert len(derivative_files(out / "group")) >= 15
    assert differences(clean, out) == []
