"""SIGTERM to the main process only (as a scheduler sends it) ends the whole process
tree with one message and exit 143, leaving a work directory that a rerun resumes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_tiny_bids

from dpnbids.cli.signals import Terminated, descendants, end_process_tree


def test_descendants_and_end_process_tree_reach_grandchildren():
    code = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            "time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 30
        while not descendants(child.pid) and time.time() < deadline:
            time.sleep(0.1)
        # the child's own tree: this pytest process may hold other children (multiprocessing's
        # resource tracker, which end_process_tree spares on purpose)
        tree = [child.pid, *descendants(child.pid)]
        assert child.pid in descendants() and len(tree) >= 2
        stopped = end_process_tree(grace_s=2)
        assert set(tree) <= set(stopped)
        assert not [p for p in tree if p in descendants()]
        assert child.poll() is not None
    finally:
        if child.poll() is None:
            child.kill()


def test_terminated_exit_codes():
    assert Terminated(signal.SIGTERM).exit_code == 143
    assert Terminated(signal.SIGINT).exit_code == 130
    assert isinstance(Terminated(signal.SIGTERM), KeyboardInterrupt)


@pytest.mark.slow
def test_sigterm_to_the_main_pid_stops_every_process_with_one_message(tmp_path):
    """SIGTERM to the main PID only (as SLURM sends it at the walltime) ends the whole process
    tree with one message and exit 143; the same command then resumes from the work folder
    and completes."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    synth = generate_dataset(tmp_path / "bids", SynthParams(
        n_responders=1, n_nonresponders=1, seed=5, space="template", n_volumes=100,
        template_resolution=4.0))
    out, work = tmp_path / "out", tmp_path / "work"
    exe = str(Path(sys.executable).with_name("dpnbids"))
    proc = subprocess.Popen([exe, str(synth.bids_dir), str(out), "participant",
                             "--fmriprep-dir", str(synth.fmriprep_dir), "--skip-bids-validation",
                             "--nprocs", "2", "--omp-nthreads", "1", "-w", str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        tree = []
        while time.time() < deadline and proc.poll() is None:
            tree = descendants(proc.pid)
            if len(tree) >= 2 and _computed(work):
                break  # nipype's workers are running nodes, and one has finished
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be signalled"
        tree = descendants(proc.pid)
        started = time.time()
        os.kill(proc.pid, signal.SIGTERM)  # the main PID only, as SLURM does
        _, err = proc.communicate(timeout=60)
        assert time.time() - started < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.count("dpnbids: error:") == 1 and "SIGTERM" in err, err
    assert "--work-dir" in err and "Traceback" not in err
    time.sleep(1)
    table = {p for p in tree if Path(f"/proc/{p}").exists()
             and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1][:3]}
    assert not table, f"left running: {table}"
    assert work.exists()  # nipype's cache stays: a rerun resumes from it

    # the same command again: it completes, reusing the nodes that finished before the signal
    finished = {p: p.stat().st_mtime_ns for p in _computed(work)}
    again = subprocess.run(proc.args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    for sub in synth.subjects:
        assert list((out / f"sub-{sub}" / "func").glob("*.nii.gz")), f"sub-{sub}: no outputs"
    again_run = [str(p.relative_to(work)) for p, stamp in finished.items()
                 if not p.exists() or p.stat().st_mtime_ns != stamp]
    assert finished and not again_run, f"computed again after SIGTERM: {again_run}"


def _computed(work: Path) -> list[Path]:
    """Result files of finished nodes that compute something (the derivatives writers,
    ``ds_*``, run again on every call by design, as fMRIPrep's do)."""
    return [p for p in work.rglob("result_*.pklz") if not p.parent.name.startswith("ds_")]


def _main(argv, capsys):
    import dpnbids.cli.run as cli_run

    code = cli_run.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_a_write_failing_for_lack_of_space_names_the_folder_and_exits_4(tiny_bids, tmp_path,
                                                                       capsys, monkeypatch):
    import errno

    import dpnbids.cli.run as cli_run

    out = tmp_path / "out"
    target = out / "group" / "table2.tsv"

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(cli_run, "_run_level", full)
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation"], capsys)
    assert code == 4, err
    assert f"no space left on the device holding {out / 'group'}" in err
    assert err.count("dpnbids: error:") == 1 and "unexpected error" not in err


def test_a_disk_filling_during_a_stalled_run_ends_it_in_seconds(tiny_bids, tmp_path, capsys,
                                                               monkeypatch):
    """nipype's scheduler waits forever for workers that cannot write their results: the
    disk watch interrupts it."""
    import dpnbids.cli.run as cli_run
    from dpnbids.cli import signals

    work = tmp_path / "work"
    monkeypatch.setattr(signals.DiskWatch, "_free",
                        lambda self, folder: 0 if str(folder) == str(work) else 2**40)
    monkeypatch.setattr(cli_run, "_run_level", lambda *args: time.sleep(120))
    started = time.time()
    code, err = _main([tiny_bids, tmp_path / "out", "participant", "--skip-bids-validation",
                       "-w", work], capsys)
    assert code == 4, err
    assert time.time() - started < 30
    assert f"no space left on the device holding {work} (0 KiB free)" in err
    assert err.count("dpnbids: error:") == 1


def test_a_full_disk_behind_another_error_is_still_named(tiny_bids, tmp_path, capsys,
                                                        monkeypatch):
    import errno

    import dpnbids.cli.run as cli_run

    def wrapped(*args):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "w" / "x"))
        except OSError as exc:
            raise RuntimeError("saving the model failed") from exc

    monkeypatch.setattr(cli_run, "_run_level", wrapped)
    code, err = _main([tiny_bids, tmp_path / "out", "participant", "--skip-bids-validation"],
                      capsys)
    assert code == 4 and f"holding {tmp_path / 'w'}" in err and "unexpected" not in err, err


@pytest.fixture
def small_tmpfs(tmp_path):
    """An 8 MiB file system (needs root and a kernel that lets the container mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
            capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


@pytest.mark.slow
def test_a_full_work_disk_ends_the_run_in_seconds_for_real(tmp_path, small_tmpfs):
    bids = make_tiny_bids(tmp_path / "bids", labels=("1", "0"), n_volumes=120)
    out, work = tmp_path / "out", small_tmpfs / "work"
    exe = str(Path(sys.executable).with_name("dpnbids"))
    started = time.time()
    proc = subprocess.Popen([exe, str(bids), str(out), "participant", "--skip-bids-validation",
                             "--nprocs", "2", "--omp-nthreads", "1", "-w", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 4, err
    assert time.time() - started < 60
    assert f"no space left on the device holding {work}" in err
    assert err.count("dpnbids: error:") == 1 and "Traceback" not in err
    assert "Warning" not in err
