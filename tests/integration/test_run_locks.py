"""Per-subject locks: a subject already running into one OUTPUT_DIR is refused at once,
naming the lock and the process that holds it; a lock whose process died is taken over."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import dpnbids.cli.run as cli_run
from dpnbids.cli.locks import LOCK_DIR, RunLockedError, lock_names, pid_alive, run_locks

HOLDER = textwrap.dedent("""
    import sys, time
    from dpnbids.cli.locks import run_locks
    with run_locks(sys.argv[1], sys.argv[2:]):
        print("locked", flush=True)
        sys.stdin.readline()  # hold until the test closes stdin
""")


@pytest.fixture
def holder(tmp_path):
    """Start a process holding locks in an OUTPUT_DIR; yields a function (out, names)."""
    procs = []

    def start(out, *names):
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), *names],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.fixture
def no_compute(monkeypatch):
    calls = []
    monkeypatch.setattr(cli_run, "_run_level", lambda *args: calls.append(args))
    return calls


def _main(argv, capsys):
    code = cli_run.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_subject_running_elsewhere_is_refused_at_once(tiny_bids, tmp_path, capsys, holder,
                                                       no_compute):
    out = tmp_path / "out"
    proc = holder(out, "sub-02")
    lock = out / LOCK_DIR / "sub-02.lock"
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation",
                       "--participant-label", "01", "02"], capsys)
    assert code == 2, err
    assert "Traceback" not in err and err.count("dpnbids: error:") == 1
    assert str(lock) in err and f"PID {proc.pid}" in err and "sub-02" in err
    assert not no_compute, "nothing may run"
    assert not (out / "logs").exists(), "a refused run writes no logs"
    # the lock of sub-01, taken before sub-02 was refused, is released again
    with run_locks(out, ["sub-01"]):
        pass


def test_other_subjects_are_not_blocked(tiny_bids, tmp_path, capsys, holder, no_compute):
    out = tmp_path / "out"
    holder(out, "sub-01")
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation",
                       "--participant-label", "02", "03"], capsys)
    assert code == 0, err
    assert len(no_compute) == 1


def test_lock_is_held_during_the_run_and_released_after(tiny_bids, tmp_path, capsys,
                                                         monkeypatch):
    out = tmp_path / "out"
    seen = []

    def level(config, inputs, labels, writer):
        owner = json.loads((out / LOCK_DIR / "sub-01.lock.owner").read_text())
        seen.append(owner["pid"])
        with pytest.raises(RunLockedError, match=f"PID {os.getpid()}"):
            with run_locks(out, ["sub-01"]):
                pass

    monkeypatch.setattr(cli_run, "_run_level", level)
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation",
                       "--participant-label", "01"], capsys)
    assert code == 0, err
    assert seen == [os.getpid()]
    assert not (out / LOCK_DIR / "sub-01.lock.owner").exists()
    with run_locks(out, ["sub-01"]):
        pass


def test_stale_lock_of_a_dead_process_is_taken_over(tiny_bids, tmp_path, capsys, no_compute):
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    out = tmp_path / "out"
    (out / LOCK_DIR).mkdir(parents=True)
    (out / LOCK_DIR / "sub-01.lock").write_text("")
    (out / LOCK_DIR / "sub-01.lock.owner").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation",
                       "--participant-label", "01"], capsys)
    assert code == 0, err
    assert "stale lock" in err and f"PID {dead.pid}" in err
    assert no_compute


def test_a_killed_holder_releases_its_lock(tmp_path, holder):
    out = tmp_path / "out"
    proc = holder(out, "sub-01")
    with pytest.raises(RunLockedError):
        with run_locks(out, ["sub-01"]):
            pass
    proc.kill()
    proc.wait(timeout=30)
    with run_locks(out, ["sub-01"]) as held:  # the kernel released it
        assert held == [out / LOCK_DIR / "sub-01.lock"]


def test_lock_names():
    from types import SimpleNamespace

    part = SimpleNamespace(execution=SimpleNamespace(analysis_level="participant"))
    group = SimpleNamespace(execution=SimpleNamespace(analysis_level="group"))
    assert lock_names(part, {"01": None, "02": None}) == ["sub-01", "sub-02"]
    assert lock_names(group, {"01": None}) == ["group"]
