"""A group run is one transaction: ``group/``, ``group.html`` and the per-subject files
the group level owns (dual-regression stage-1 time courses and stage-2 maps, GICA1
back-projections) are published together, or not at all.

A group run writes everything into a hidden staging folder,
``OUTPUT_DIR/.group-staging-<pid>/``::

    group/            becomes OUTPUT_DIR/group/
    group.html        becomes OUTPUT_DIR/group.html
    subjects/sub-X/.. each file becomes OUTPUT_DIR/sub-X/..

When the staging folder is complete, :func:`publish_staging` records the plan in a
journal (``OUTPUT_DIR/.group-publish.json``, written atomically: the commit point)
and then moves every part into place, the previous parts (and the per-subject files
the previous group run published, listed in ``group/published_files.json``) into
``.group-backup-<pid>/``. A run killed before the journal exists leaves the previous
set untouched (its staging folder is removed by the next run); one killed after
it is completed by :func:`recover_publish` at the next start of the group level,
because every move is idempotent and the staging folder was complete. Renames stay
inside OUTPUT_DIR, one file system, so each is atomic.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

from dpnbids.derivatives import atomic_write_text, pid_alive

LOGGER = logging.getLogger(__name__)

STAGING_PREFIX = ".group-staging-"
BACKUP_PREFIX = ".group-backup-"
JOURNAL = ".group-publish.json"
#: Inside group/: the per-subject files (relative to OUTPUT_DIR) this group run published.
MANIFEST = "published_files.json"


def staging_parts(staging: Path) -> tuple[Path, Path]:
    """(group folder, per-subject tree) of a staging folder."""
    return Path(staging) / "group", Path(staging) / "subjects"


def open_staging(output_dir) -> Path:
    """A fresh staging folder for this run (with its ``group/`` and ``subjects/``).

    Leftovers of killed runs are removed first: staging and backup folders whose
    process is gone and that no pending journal names (call :func:`recover_publish`
    before this). A live process's folders are another run's and are left alone.
    """
    output_dir = Path(output_dir)
    pending = _journal_folders(output_dir)
    for prefix in (STAGING_PREFIX, BACKUP_PREFIX):
        for old in output_dir.glob(f"{prefix}*"):
            pid = old.name[len(prefix):]
            if old.name in pending or (pid.isdigit() and int(pid) != os.getpid()
                                       and pid_alive(pid)):
                continue
            shutil.rmtree(old, ignore_errors=True)
    staging = output_dir / f"{STAGING_PREFIX}{os.getpid()}"
    for part in staging_parts(staging):
        part.mkdir(parents=True, exist_ok=True)
    return staging


def _journal_folders(output_dir: Path) -> set:
    journal = _read_journal(output_dir)
    return {journal["staging"], journal["backup"]} if journal else set()


def _read_journal(output_dir: Path) -> dict | None:
    file = Path(output_dir) / JOURNAL
    if not file.is_file():
        return None
    try:
        journal = json.loads(file.read_text())
        if {"staging", "backup", "new", "old", "pid"} <= set(journal):
            return journal
    except (OSError, ValueError):
        pass
    return {"damaged": True}


def _subject_files(tree: Path) -> list[str]:
    return sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())


def previous_subject_files(output_dir) -> list[str]:
    """The per-subject files the published ``group/`` owns (empty for older outputs)."""
    file = Path(output_dir) / "group" / MANIFEST
    try:
        listed = json.loads(file.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [f for f in listed if isinstance(f, str) and _inside(f)]


def _inside(rel: str) -> bool:
    """A relative path under a sub-* folder (a damaged manifest never moves other files)."""
    parts = Path(rel).parts
    return bool(parts) and parts[0].startswith("sub-") and ".." not in parts \
        and not Path(rel).is_absolute()


def publish_staging(staging, output_dir) -> Path:
    """Publish a complete staging folder as one set; return ``OUTPUT_DIR/group``."""
    staging, output_dir = Path(staging), Path(output_dir)
    group, tree = staging_parts(staging)
    new = _subject_files(tree)
    atomic_write_text(group / MANIFEST, json.dumps(
        {"Description": "Per-subject files written by the group run that wrote this folder; "
                        "the next group run replaces them together with this folder.",
         "files": new}, indent=2) + "\n")
    if (group / "group.html").exists():
        os.replace(group / "group.html", staging / "group.html")
    journal = {"pid": os.getpid(), "host": socket.gethostname(), "staging": staging.name,
               "backup": f"{BACKUP_PREFIX}{os.getpid()}", "new": new,
               "old": previous_subject_files(output_dir),
               "report": (staging / "group.html").exists()}
    atomic_write_text(output_dir / JOURNAL, json.dumps(journal, indent=2) + "\n")
    _without_interruption(_roll_forward, output_dir, journal)
    LOGGER.info("group results published in %s (with %d per-subject files)",
                output_dir / "group", len(new))
    return output_dir / "group"


def _without_interruption(function, *args):
    """Run ``function`` with SIGINT and SIGTERM held back (renames only: a fraction of a
    second); a signal that came meanwhile is delivered afterwards. SIGKILL cannot be held
    back: :func:`recover_publish` completes what it interrupts.

    The signals are held by Python handlers, not by the thread's signal mask: a process
    with worker threads (TensorFlow's pools, nipype's) would let the kernel hand a
    process-directed SIGTERM to an unmasked thread, and Python would then run the old
    handler in the main thread between two renames."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return function(*args)
    pending: list[int] = []

    def hold(signum, _frame):
        if signum not in pending:
            pending.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, and it could not be restored
            previous[signum] = signal.signal(signum, hold)
    try:
        return function(*args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in pending:
            signal.raise_signal(signum)


def _move_aside(target: Path, backup: Path) -> None:
    """Move ``target`` to ``backup`` (a backup already there is the older one: keep it)."""
    if not (target.exists() or target.is_symlink()):
        return
    if backup.exists() or backup.is_symlink():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        return
    backup.parent.mkdir(parents=True, exist_ok=True)
    os.replace(target, backup)


def _roll_forward(output_dir: Path, journal: dict) -> None:
    """Carry out a journal's moves; every step can be repeated after a kill."""
    staging, backup = output_dir / journal["staging"], output_dir / journal["backup"]
    moves = [("group", staging / "group"), ("group.html", staging / "group.html")]
    moves += [(rel, staging / "subjects" / rel) for rel in journal["new"] if _inside(rel)]
    for rel, staged in moves:
        if staged.exists():
            _move_aside(output_dir / rel, backup / rel)
            (output_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, output_dir / rel)
    for rel in set(journal["old"]) - set(journal["new"]):
        if _inside(rel):
            _move_aside(output_dir / rel, backup / rel)
    if not journal.get("report", True):  # a report of the previous run would now mislead
        _move_aside(output_dir / "group.html", backup / "group.html")
    (output_dir / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(backup, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)


def recover_publish(output_dir) -> str | None:
    """Complete a group publish that a killed run left half done; return what was done.

    Returns None when there is nothing to recover, or when the journal's run is
    still alive on this host (another group run is publishing). A journal that
    cannot be read is left in place and reported (the caller refuses to go on).
    """
    output_dir = Path(output_dir)
    journal = _read_journal(output_dir)
    if journal is None:
        return None
    if journal.get("damaged"):
        from dpnbids.exceptions import InputError

        raise InputError(
            f"{output_dir / JOURNAL} records an interrupted group publish but cannot be read. "
            "The previous group results may be split between group/ and the hidden "
            f"{STAGING_PREFIX}*/{BACKUP_PREFIX}* folders; remove group/, group.html and those "
            "folders and rerun the group level.")
    if journal.get("host") == socket.gethostname() and int(journal["pid"]) != os.getpid() \
            and pid_alive(journal["pid"]):
        return None
    _roll_forward(output_dir, journal)
    return (f"completed the publish of the group run {journal['pid']} that was interrupted "
            f"after it finished: group/, group.html and {len(journal['new'])} per-subject "
            "files now all come from that run")


def pending_publish(output_dir) -> Path | None:
    """The journal of an unfinished group publish in OUTPUT_DIR, if any (read only)."""
    file = Path(output_dir) / JOURNAL
    return file if file.is_file() else None
