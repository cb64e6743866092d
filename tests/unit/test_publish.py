"""A group run is one transaction: group/, group.html and the per-subject dual-regression
files are published together, and a publish killed at any step is completed next start."""
from __future__ import annotations

import json
import os

import pytest

from dpnbids import publish

SUBJECT_FILES = ("sub-01/func/sub-01_task-rest_desc-stage1_timeseries.tsv",
                 "sub-01/func/sub-01_task-rest_space-MNI_desc-stage2pe_components.nii.gz",
                 "sub-02/func/sub-02_task-rest_desc-stage1_timeseries.tsv")


def _stage_run(out, tag, subject_files):
    staging = publish.open_staging(out)
    group, tree = publish.staging_parts(staging)
    (group / "model").mkdir()
    (group / "model" / "bundle.json").write_text(tag)
    (group / "predictions.tsv").write_text(tag)
    (group / "group.html").write_text(tag)
    for rel in subject_files:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(tag)
    return staging


def _state(out):
    """Every published file's content, hidden transaction folders excluded."""
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_file() and not rel.parts[0].startswith(".") \
                and rel.name != publish.MANIFEST:
            found[str(rel)] = path.read_text()
    return found


def _expected(tag, subject_files):
    files = {"group/model/bundle.json": tag, "group/predictions.tsv": tag, "group.html": tag}
    files.update({rel: tag for rel in subject_files})
    return files


@pytest.fixture
def published(tmp_path):
    """An OUTPUT_DIR holding a published 'old' group run over three subject files."""
    out = tmp_path / "out"
    (out / "sub-01" / "func").mkdir(parents=True)
    (out / "sub-01" / "func" / "sub-01_task-rest_desc-denoised_bold.nii.gz").write_text("own")
    publish.publish_staging(_stage_run(out, "old", SUBJECT_FILES), out)
    return out


def test_publish_replaces_group_report_and_subject_files_together(published):
    out = published
    own = {"sub-01/func/sub-01_task-rest_desc-denoised_bold.nii.gz": "own"}
    assert _state(out) == {**_expected("old", SUBJECT_FILES), **own}
    new_files = SUBJECT_FILES[:2]  # sub-02 left out of the new run: its old file goes
    publish.publish_staging(_stage_run(out, "new", new_files), out)
    assert _state(out) == {**_expected("new", new_files), **own}
    manifest = json.loads((out / "group" / publish.MANIFEST).read_text())
    assert manifest["files"] == sorted(new_files)
    assert not [p for p in out.iterdir() if p.name.startswith(".group-")]


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("kill_at", range(12))
def test_a_publish_killed_at_any_rename_is_completed_at_the_next_start(published,
                                                                      monkeypatch, kill_at):
    out = published
    own = {"sub-01/func/sub-01_task-rest_desc-denoised_bold.nii.gz": "own"}
    new_files = SUBJECT_FILES[:2]
    staging = _stage_run(out, "new", new_files)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == kill_at:
            raise _Killed
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(publish.os, "replace", replace)
    with pytest.raises(_Killed):
        publish.publish_staging(staging, out)
    monkeypatch.setattr(publish.os, "replace", real_replace)
    monkeypatch.setattr(publish, "pid_alive", lambda pid: False)  # the killed run is gone
    done = publish.recover_publish(out)
    if (out / publish.JOURNAL).exists() or done is None:
        # killed before the journal (the commit point): the previous set is intact
        assert _state(out) == {**_expected("old", SUBJECT_FILES), **own}
    else:
        assert "completed the publish" in done
        assert _state(out) == {**_expected("new", new_files), **own}
    assert publish.pending_publish(out) is None
    publish.open_staging(out)  # the next run's staging removes what is left
    assert [p.name for p in out.iterdir() if p.name.startswith(".group-")] == \
        [f"{publish.STAGING_PREFIX}{os.getpid()}"]


def test_staging_named_by_a_pending_journal_is_kept_for_recovery(published, monkeypatch):
    out = published
    staging = _stage_run(out, "new", SUBJECT_FILES)
    monkeypatch.setattr(publish, "_roll_forward", lambda *a: (_ for _ in ()).throw(_Killed))
    with pytest.raises(_Killed):
        publish.publish_staging(staging, out)
    monkeypatch.undo()
    journal = json.loads((out / publish.JOURNAL).read_text())
    journal["pid"] = 2 ** 22 + 12345  # a process that does not exist
    (out / publish.JOURNAL).write_text(json.dumps(journal))
    publish.open_staging(out)  # a careless order of calls must not lose the staged set
    assert staging.exists()
    assert publish.recover_publish(out)
    assert _state(out)["group.html"] == "new"


def test_an_unreadable_journal_is_reported_not_guessed(published):
    from dpnbids.exceptions import InputError

    (published / publish.JOURNAL).write_text("{not json")
    with pytest.raises(InputError, match="interrupted group publish"):
        publish.recover_publish(published)
    assert _state(published)["group.html"] == "old"


def test_model_option_names_an_interrupted_publish_instead_of_a_bare_missing_folder(tmp_path):
    from dpnbids.cli.parser import _existing_dir, _existing_file

    out = tmp_path / "out"
    out.mkdir()
    (out / "a_file").write_text("x")
    with pytest.raises(Exception, match="'.*a_file' is a file"):
        _existing_dir(str(out / "a_file"))
    with pytest.raises(Exception, match="is a directory"):
        _existing_file(str(out))
    with pytest.raises(Exception, match="does not exist$"):
        _existing_dir(str(out / "group" / "model"))
    (out / publish.JOURNAL).write_text("{}")
    with pytest.raises(Exception, match="interrupted group publish"):
        _existing_dir(str(out / "group" / "model"))


def test_empty_or_folder_participants_tsv_is_one_clear_input_error(tmp_path):
    from dpnbids.bids import read_participants
    from dpnbids.exceptions import InputError

    (tmp_path / "participants.tsv").write_text("")
    with pytest.raises(InputError, match="is empty"):
        read_participants(tmp_path)
    (tmp_path / "participants.tsv").unlink()
    (tmp_path / "participants.tsv").mkdir()
    with pytest.raises(InputError, match="is a directory"):
        read_participants(tmp_path)


def test_a_run_without_a_report_does_not_leave_the_previous_report_beside_it(published):
    out = published
    staging = _stage_run(out, "new", SUBJECT_FILES)
    (publish.staging_parts(staging)[0] / "group.html").unlink()
    publish.publish_staging(staging, out)
    assert not (out / "group.html").exists()
    assert (out / "group" / "predictions.tsv").read_text() == "new"


def test_sigterm_during_the_renames_waits_until_the_set_is_published(published, monkeypatch):
    import signal
    import threading

    out = published
    staging = _stage_run(out, "new", SUBJECT_FILES)
    real_replace, got = os.replace, []

    def replace(src, dst):
        if str(dst).endswith("group") and not got:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives between two renames
            got.append(dst)
        real_replace(src, dst)

    def handler(signum, frame):
        state = {k: v for k, v in _state(out).items() if v != "own"}
        got.append(("signal", state == _expected("new", SUBJECT_FILES)))

    # a worker thread, as TensorFlow and nipype keep: the kernel may hand it a process-directed
    # signal, so a signal mask on the main thread alone would not hold SIGTERM back
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, daemon=True)
    worker.start()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        monkeypatch.setattr(publish.os, "replace", replace)
        publish.publish_staging(staging, out)
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
    assert ("signal", True) in got  # delivered only once every part was in place
    assert len([g for g in got if isinstance(g, tuple)]) == 1  # and once
