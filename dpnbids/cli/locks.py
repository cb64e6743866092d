"""Run locks: one subject (or the group level) is processed by one run at a time.

The same subject run twice at once into one OUTPUT_DIR (a cluster job submitted
again while the first still runs) would have both runs write the same files.
Each run therefore takes ``OUTPUT_DIR/.locks/sub-<label>.lock`` for its
subjects (``group.lock`` at the group level) before it writes anything else,
and a second run is refused at once with a message naming the lock and the
process holding it.

The lock is an OS file lock (:mod:`filelock`), released by the kernel when its
process dies, so a killed run never blocks the next one. Who holds it is
recorded beside it in ``<lock>.owner`` (JSON: pid, host, start time, command).
An owner record left by a process that no longer runs is stale: it is reported
in the log and taken over.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from dpnbids.derivatives import atomic_write_text, pid_alive
from dpnbids.exceptions import InputError

LOGGER = logging.getLogger(__name__)

LOCK_DIR = ".locks"


class RunLockedError(InputError):
    """Another run holds the lock of a subject (or of the group level) in OUTPUT_DIR."""


def _owner_file(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + ".owner")


def _read_owner(lock_file: Path) -> dict:
    try:
        owner = json.loads(_owner_file(lock_file).read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _describe(owner: dict) -> str:
    if not owner:
        return "another process (it has not recorded its PID yet: it is starting)"
    text = f"PID {owner.get('pid', '?')} on host {owner.get('host', '?')}"
    if owner.get("started"):
        text += f", started {owner['started']}"
    if owner.get("command"):
        text += f" ({owner['command'][:200]})"
    return text


def _write_owner(lock_file: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    target = _owner_file(lock_file)
    atomic_write_text(target, json.dumps(owner))


def _acquire(lock_file: Path):
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = _read_owner(lock_file)
        raise RunLockedError(
            f"{lock_file.stem} is already being processed into this OUTPUT_DIR: the lock "
            f"{lock_file} is held by {_describe(owner)}. Wait for that run to finish (or stop "
            "it), or give another OUTPUT_DIR. A lock whose process has died is released "
            "by the system and taken over by the next run.") from None
    stale = _read_owner(lock_file)
    if stale and stale.get("host") == socket.gethostname() and not pid_alive(stale.get("pid")):
        LOGGER.warning("taking over the stale lock %s left by %s, which no longer runs",
                       lock_file, _describe(stale))
    _write_owner(lock_file)
    return lock


@contextlib.contextmanager
def run_locks(output_dir, names):
    """Hold ``OUTPUT_DIR/.locks/<name>.lock`` for every name (sorted) while the block runs.

    Raises
    ------
    RunLockedError
        One of the locks is held by another run; none is kept.
    """
    lock_dir = Path(output_dir) / LOCK_DIR
    held = []
    try:
        if names:
            lock_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(set(names)):
            lock_file = lock_dir / f"{name}.lock"
            held.append((_acquire(lock_file), lock_file))
        yield [path for _, path in held]
    finally:
        for lock, lock_file in reversed(held):
            with contextlib.suppress(OSError):
                if _read_owner(lock_file).get("pid") == os.getpid():
                    _owner_file(lock_file).unlink()
            lock.release()


def lock_names(config, inputs) -> list[str]:
    """The locks a run takes: its subjects at the participant level, ``group`` else."""
    if config.execution.analysis_level == "participant":
        return [f"sub-{label}" for label in inputs]
    return ["group"]
