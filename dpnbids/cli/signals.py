"""SIGTERM and SIGINT end the whole process tree: one message, exit 128 + signal.

A scheduler (SLURM at the walltime) sends SIGTERM to the main process only. Left to the
default action, the main process dies silently while nipype's pool workers, the
multiprocessing forkserver and its resource tracker keep running (or the interpreter
waits for the workers at exit). :func:`install` turns both signals into a
:class:`Terminated` exception in the main thread, so the run unwinds through its normal
handlers (staging folders removed, locks released, nipype's work directory left as
it is: a rerun with the same ``-w`` resumes); :func:`end_process_tree` then stops every
descendant process, politely first.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time


class Terminated(KeyboardInterrupt):
    """The run received SIGTERM or SIGINT (a KeyboardInterrupt, so every handler that
    already cleans up after Ctrl-C does so for SIGTERM too)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _ignore(_signum, _frame) -> None:
    """A second SIGTERM/SIGINT while the run unwinds: already being handled."""


def install() -> dict:
    """Raise :class:`Terminated` in the main thread on SIGTERM or SIGINT (once: a
    second signal while the run unwinds is ignored, so the message stays one).
    Returns the previous handlers, for :func:`restore`."""

    def handler(signum, _frame):
        # a Python-level no-op, not SIG_IGN: an ignored disposition would be inherited by
        # the processes started while the run unwinds, and they could not be stopped
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        raise Terminated(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, handler)
    return previous


def restore(previous: dict) -> None:
    """Put back the handlers :func:`install` replaced (a caller that imports ``main``)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _parent_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, state)} of every process: /proc where there is one, else ``ps``."""
    table = {}
    if os.path.isdir("/proc"):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry)] = (int(fields[1]), fields[0])
        return table
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid=", "-o", "state="],
                             capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return table
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[1].isdigit():
            table[int(parts[0])] = (int(parts[1]), parts[2][:1])
    return table


def descendants(pid: int | None = None) -> list[int]:
    """Live (non-zombie) descendants of ``pid`` (this process by default)."""
    pid = os.getpid() if pid is None else int(pid)
    table = _parent_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _state) in table.items():
        children.setdefault(parent, []).append(child)
    found, frontier = [], [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            found.append(child)
            frontier.append(child)
    return [p for p in found if table.get(p, (0, "Z"))[1] not in ("Z", "X")]


def _reap() -> None:
    """Collect this process's exited children, so that they do not linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _resource_tracker_pid() -> int | None:
    """multiprocessing's resource tracker: it must outlive the workers to clean up after
    them, and exits by itself when this process does."""
    try:
        from multiprocessing import resource_tracker

        return resource_tracker._resource_tracker._pid
    except (ImportError, AttributeError):
        return None


def end_process_tree(grace_s: float = 5.0, *, spare_tracker: bool = True) -> list[int]:
    """SIGTERM every descendant, SIGKILL those still alive after ``grace_s``; return them.

    multiprocessing's resource tracker is spared by default: it exits with this process
    once the workers that held its pipe are gone. A process that ends with ``os._exit``
    cannot release its semaphores, and the tracker would print a warning about them on
    the console: ``spare_tracker=False`` ends it too (SIGKILL, silently)."""
    tracker = _resource_tracker_pid()
    if not spare_tracker and tracker:
        try:
            os.kill(tracker, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    targets = [p for p in descendants() if p != tracker]
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    alive = targets
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        _reap()
        # by pid, not by descent: a worker whose parent died has been re-parented
        table = _parent_table()
        alive = [p for p in targets if table.get(p, (0, "Z"))[1] not in ("Z", "X")]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    _reap()
    return targets


#: Below this many free bytes on the work or output folder's file system a run stops:
#: nipype's workers fail to write their results there and its scheduler would wait forever.
MIN_FREE_BYTES = 16 * 2**20


class DiskFull(KeyboardInterrupt):
    """A watched folder's file system filled up; raised in the main thread."""

    def __init__(self, path, free: int):
        super().__init__(str(path))
        self.path, self.free = path, int(free)


class DiskWatch:
    """Watch the free space of ``folders`` every ``interval_s`` from a daemon thread; when one
    falls under ``min_free`` bytes, interrupt the main thread (which raises
    :class:`DiskFull` through :meth:`check`, see :func:`dpnbids.cli.run.main`). If the run
    has not ended ``grace_s`` later (a library swallowed the interrupt), ``on_stuck(folder,
    free)`` reports it and the process tree is ended with exit 4: never a hang."""

    def __init__(self, folders, *, interval_s: float = 2.0, min_free: int = MIN_FREE_BYTES,
                 on_stuck=None, grace_s: float = 5.0):
        self.folders = [f for f in folders if f is not None]
        self.interval_s, self.min_free = interval_s, min_free
        self.on_stuck, self.grace_s = on_stuck, grace_s
        self.full: tuple | None = None
        self._stop = None

    def _free(self, folder):
        import shutil

        probe = folder
        while not os.path.exists(probe) and os.path.dirname(str(probe)) != str(probe):
            probe = os.path.dirname(str(probe))
        try:
            return shutil.disk_usage(probe).free
        except OSError:
            return None

    def _run(self):
        import threading

        while not self._stop.wait(self.interval_s):
            for folder in self.folders:
                free = self._free(folder)
                if free is not None and free < self.min_free:
                    self.full = (folder, free)
                    # a real signal to the main thread: it also ends a blocking sleep
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                    if not self._stop.wait(self.grace_s) and self.on_stuck is not None:
                        # the interrupt was swallowed somewhere below: stop for good
                        self.on_stuck(folder, free)
                        end_process_tree(spare_tracker=False)
                        os._exit(4)
                    return

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        threading.Thread(target=self._run, name="dpnbids-disk-watch", daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        return False

    def check(self, exc: BaseException) -> BaseException:
        """The exception to report: :class:`DiskFull` when the watch interrupted the run."""
        if self.full is not None and isinstance(exc, KeyboardInterrupt):
            return DiskFull(*self.full)
        return exc
