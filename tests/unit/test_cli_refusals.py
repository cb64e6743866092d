"""The top-level handler: every user error ends in one message and exit 2, an internal
error in exit 1 with its traceback in a file only, and nothing is written before the
input checks pass (not even ``logs/``)."""
from __future__ import annotations

import os
import time

import pytest

import dpnbids.cli.run as cli_run
from dpnbids.exceptions import InputError, WorkflowError


def _run(argv, capsys):
    code = cli_run.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _assert_refused(code, err, *fragments, exit_code=2):
    assert code == exit_code, err
    assert "Traceback" not in err
    assert err.count("dpnbids: error:") == 1, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


@pytest.fixture
def no_compute(monkeypatch):
    """The checks run for real; the level itself is replaced by ``no_compute.level``."""
    holder = type("Holder", (), {"level": staticmethod(lambda *args: None)})
    monkeypatch.setattr(cli_run, "_run_level", lambda *args: holder.level(*args))
    return holder


def test_output_dir_under_a_file(tiny_bids, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    code, err = _run([tiny_bids, afile / "sub", "participant", "--skip-bids-validation"],
                     capsys)
    _assert_refused(code, err, f"{afile} is a file", "cannot be created")
    assert afile.read_text() == "not a folder\n"


def test_output_dir_read_only_is_refused(tiny_bids, tmp_path, capsys, monkeypatch):
    """As root every folder is writable, so the permission answer is simulated here."""
    parent = tmp_path / "ro"
    parent.mkdir()
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if os.path.realpath(path) == str(parent.resolve()) and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    code, err = _run([tiny_bids, parent / "out", "participant", "--skip-bids-validation"],
                     capsys)
    _assert_refused(code, err, "is not writable", str(parent), "chmod u+w")
    assert list(parent.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root can write into read-only folders")
def test_output_dir_read_only_for_real(tiny_bids, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, err = _run([tiny_bids, out, "participant", "--skip-bids-validation"], capsys)
    finally:
        out.chmod(0o755)
    _assert_refused(code, err, "is not writable", str(out))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("value", ["1", "0"])
def test_one_fold_refused_by_the_parser(tiny_bids, tmp_path, capsys, value):
    out = tmp_path / "out"
    code, err = _run([tiny_bids, out, "group", "--folds", value], capsys)
    assert code == 2 and "--folds" in err and "Traceback" not in err
    assert ">= 2" in err or "positive integer" in err
    assert not out.exists()


def test_refusal_leaves_an_existing_output_dir_untouched(tiny_bids, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, err = _run([tiny_bids, out, "participant", "--skip-bids-validation",
                      "--participant-label", "99"], capsys)
    _assert_refused(code, err, "sub-99")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"], "no logs/ on a refusal"


def test_internal_error_in_the_checks(tiny_bids, tmp_path, capsys, monkeypatch):
    def broken(config):
        raise RuntimeError("boom in the checks")

    monkeypatch.setattr(cli_run, "check_inputs", broken)
    out = tmp_path / "out"
    code, err = _run([tiny_bids, out, "participant", "--skip-bids-validation"], capsys)
    _assert_refused(code, err, "unexpected error", "boom in the checks", exit_code=1)
    assert not out.exists()
    crash = err.split("The traceback is in ")[1].split(";")[0]
    assert "Traceback" in open(crash).read() and "boom in the checks" in open(crash).read()
    os.unlink(crash)


def test_internal_error_in_the_run_goes_to_the_log_only(tiny_bids, tmp_path, capsys,
                                                         no_compute):
    def broken(*args):
        raise KeyError("boom in the run")

    no_compute.level = broken
    out = tmp_path / "out"
    code, err = _run([tiny_bids, out, "participant", "--skip-bids-validation", "-v"], capsys)
    _assert_refused(code, err, "unexpected error", "boom in the run", str(out / "logs"),
                    exit_code=1)
    crashes = list((out / "logs").glob("crash-*.txt"))
    assert len(crashes) == 1 and "Traceback" in crashes[0].read_text()
    log = next((out / "logs").glob("dpnbids-participant-*.log")).read_text()
    assert "Traceback" in log and "boom in the run" in log
    assert (out / "dataset_description.json").exists()


@pytest.mark.parametrize("exc,code", [(InputError("the bundle is damaged"), 2),
                                      (WorkflowError("processing failed for sub-01"), 4)])
def test_user_error_in_the_run_is_one_message(tiny_bids, tmp_path, capsys, no_compute,
                                              exc, code):
    def broken(*args):
        raise exc

    no_compute.level = broken
    out = tmp_path / "out"
    got, err = _run([tiny_bids, out, "participant", "--skip-bids-validation", "-v"], capsys)
    _assert_refused(got, err, str(exc), exit_code=code)


def test_logs_and_pip_freeze_are_per_run(tiny_bids, tmp_path, capsys, no_compute):
    out = tmp_path / "out"
    argv = [tiny_bids, out, "participant", "--skip-bids-validation"]
    assert _run(argv, capsys)[0] == 0
    time.sleep(1.1)  # one process: the run id differs by its time stamp
    assert _run(argv, capsys)[0] == 0
    logs = out / "logs"
    assert not (logs / "pip-freeze.txt").exists()
    assert len(list(logs.glob("pip-freeze-*-*.txt"))) == 2
    assert len(list(logs.glob("config-participant-*.toml"))) == 2
    assert len(list(logs.glob("dpnbids-participant-*.log"))) == 2
    pid = str(os.getpid())
    assert all(p.stem.endswith(pid) for p in logs.glob("pip-freeze-*.txt"))


def test_group_without_participant_outputs_writes_nothing(tiny_bids, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    code, err = _run([tiny_bids, out, "group", "--skip-bids-validation", "--folds", "2"],
                     capsys)
    _assert_refused(code, err, "run the participant level first")
    assert list(out.iterdir()) == [], "no logs/ before the checks pass"
