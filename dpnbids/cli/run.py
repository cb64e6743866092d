"""``dpnbids`` entry point: logging, checks at the door, dispatch, exit codes.

Exit codes: 0 success; 2 bad input or options; 3 data leakage detected;
4 one or more nodes failed (the message names subjects and crash files);
1 unexpected error (the traceback goes to OUTPUT_DIR/logs, not the console);
130 interrupted (SIGINT), 143 terminated (SIGTERM): the whole process tree is
stopped and a rerun with the same ``--work-dir`` resumes. A full disk (work
directory or OUTPUT_DIR: under 16 MiB free, or a write failing with ENOSPC) stops
the run within seconds with exit 4, naming the folder.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

from dpnbids.messages import as_flags

# Deterministic kernels on CPU; must be set before any backend import. The Keras backend
# and its threads are chosen after parsing (dpnbids.learn.backend.configure).
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LOGGER = logging.getLogger(__name__)


class _FlagFormatter(logging.Formatter):
    """Records name parameters as the command line's flags (``--fd-thresh``, not
    ```fd_thresh```: :mod:`dpnbids.messages`)."""

    def format(self, record):
        return as_flags(super().format(record))


class _ConsoleFormatter(_FlagFormatter):
    """One line per record: tracebacks go to the log file, never to the console."""

    def format(self, record):
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _setup_console_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ConsoleFormatter("%(asctime)s [%(levelname)s] %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger("dpnbids")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    root.propagate = False
    # a worker pool broken by a signal or a full disk logs its callbacks' tracebacks
    # here: they belong in the log file (see _add_file_logging), not on the console
    futures = logging.getLogger("concurrent.futures")
    futures.handlers[:] = [logging.NullHandler()]
    futures.propagate = False
    nipype_level = logging.INFO if verbose >= 2 else logging.WARNING
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(nipype_level)
    # this process's Python warnings (dpnbids' own and its libraries') become log records:
    # one line on the console and in the log file, parameters shown as flags
    warnings.showwarning = _log_warning


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    LOGGER.warning("%s (%s)", message, category.__name__)


def _add_file_logging(log_file: Path) -> None:
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(_FlagFormatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    logging.getLogger("dpnbids").addHandler(handler)
    # importing nipype configures its loggers; we then route them to the file
    from nipype import config as ncfg
    from nipype import logging as nlogging

    verbose = logging.getLogger("dpnbids").level <= logging.DEBUG
    ncfg.update_config({"logging": {"workflow_level": "INFO" if verbose else "WARNING",
                                    "interface_level": "WARNING", "utils_level": "WARNING"}})
    nlogging.update_logging(ncfg)
    nipype_logger = logging.getLogger("nipype")
    # node tracebacks go to the log and crash files, not the console
    nipype_logger.handlers[:] = [handler]
    nipype_logger.propagate = False
    logging.getLogger("concurrent.futures").handlers[:] = [handler]


def _error(message: str) -> None:
    sys.stderr.write(f"dpnbids: error: {as_flags(message)}\n")


def check_inputs(config):
    """All input checks that need the file system; nothing is written here."""
    from dpnbids import bids

    ex, sel = config.execution, config.selection
    bids.check_bids_root(ex.bids_dir)
    bids.check_output_dir(ex.bids_dir, ex.output_dir)
    bids.check_work_dir(ex.work_dir)
    if not ex.skip_bids_validation:
        bids.run_bids_validator(ex.bids_dir)
    need_t1w = config.preproc.fmriprep_dir is None and ex.analysis_level == "participant"
    inputs = bids.collect_inputs(ex.bids_dir, participant_label=sel.participant_label,
                                 session_label=sel.session_label, task=sel.task_id,
                                 bids_filters=sel.bids_filters, need_t1w=need_t1w)
    labels = None
    if ex.analysis_level == "group":
        labels = bids.load_labels(ex.bids_dir, sel.responder_column, list(inputs),
                                  min_per_class=config.cnn.folds)
        from dpnbids.group.level import check_group_inputs
        from dpnbids.workflows.confounds import check_confound_columns

        check_confound_columns(config, [s for s, v in labels.items() if v is not None])
        check_group_inputs(config, inputs)
    else:
        from dpnbids.workflows.base import check_participant_inputs

        check_participant_inputs(config, inputs)
    return inputs, labels


def _write_provenance(config, logs_dir: Path, run_id: str) -> None:
    """The configuration and ``pip freeze`` of this run, named by run (never shared)."""
    import subprocess

    from dpnbids.derivatives import atomic_write_text

    atomic_write_text(logs_dir / f"config-{config.execution.analysis_level}-{run_id}.toml",
                      config.to_toml())
    try:
        freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"],
                                capture_output=True, text=True, timeout=120, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        freeze = "pip freeze unavailable\n"
    atomic_write_text(logs_dir / f"pip-freeze-{run_id}.txt", freeze)


def _write_crash(folder: Path, run_id: str) -> Path | None:
    """Write the current traceback to ``folder/crash-<run_id>.txt``; None if impossible."""
    import traceback

    try:
        folder.mkdir(parents=True, exist_ok=True)
        crash = folder / f"crash-{run_id}.txt"
        crash.write_text(traceback.format_exc())
    except OSError:
        return None
    return crash


def _internal_error(folder: Path, run_id: str) -> int:
    LOGGER.debug("unexpected error", exc_info=True)
    crash = _write_crash(folder, run_id)
    where = f"The traceback is in {crash}" if crash else "No traceback could be written"
    _error(f"unexpected error: {sys.exc_info()[1]!r}. {where}; please report it with the "
           "log file.")
    return 1


def _start_run_logs(config, run_id: str) -> Path:
    """Create OUTPUT_DIR/logs, start the log file, write provenance; return the logs folder."""
    logs_dir = config.execution.output_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    _add_file_logging(logs_dir / f"dpnbids-{config.execution.analysis_level}-{run_id}.log")
    LOGGER.info("dpnbids %s: %s level on %s -> %s", config.version,
                config.execution.analysis_level, config.execution.bids_dir,
                config.execution.output_dir)
    _write_provenance(config, logs_dir, run_id)
    return logs_dir


def _subject_locks(config, inputs):
    """Per-subject (or group) locks in OUTPUT_DIR: the same subject never runs twice at once."""
    from dpnbids.cli.locks import lock_names, run_locks

    return run_locks(config.execution.output_dir, lock_names(config, inputs))


def _run_level(config, inputs, labels, writer) -> None:
    from dpnbids.derivatives import remove_stale_temporaries

    for path in remove_stale_temporaries(config.execution.output_dir):
        LOGGER.info("removed %s, left by a killed run", path)
    if config.execution.analysis_level == "participant":
        from dpnbids.publish import pending_publish
        from dpnbids.workflows.base import run_participant_level

        if pending_publish(config.execution.output_dir):
            LOGGER.warning("%s records a group publish that was interrupted: group/, "
                           "group.html and the per-subject dual-regression files may come from "
                           "two runs until the group level is run again on this OUTPUT_DIR "
                           "(it completes the publish first).",
                           pending_publish(config.execution.output_dir))

        run_participant_level(config, inputs, writer)
    else:
        from dpnbids.group.level import run_group_level

        run_group_level(config, inputs, labels, writer)


def _signal_text(exc) -> str:
    signum = getattr(exc, "signum", None)
    if signum is None or signum == 2:
        return "interrupted (SIGINT)"
    import signal

    return f"terminated by {signal.Signals(signum).name}"


def _stopped(exc, code: int | None = None) -> int:
    """Stop the worker processes left behind; the exit code (128 + signal by default)."""
    from dpnbids.cli.signals import end_process_tree

    end_process_tree()
    return int(code if code is not None else getattr(exc, "exit_code", 130))


def _configure_backend(config) -> None:
    """Choose the Keras backend and its threads before anything imports Keras."""
    from dpnbids.learn.backend import configure

    backend = configure(config.execution.keras_backend, config.execution.omp_nthreads)
    LOGGER.debug("Keras backend %s with %d compute threads", backend,
                 config.execution.omp_nthreads)


def _start_forkserver(config) -> None:
    """Start MultiProc's forkserver now, so that it imports its preloaded modules (3-4 s)
    while this process runs the door checks, instead of before the first node.

    The server's environment is fixed when it starts, and every worker is forked from it:
    the Keras backend's variables (:func:`_configure_backend`) and ITK's thread count are
    set first. It writes nothing, and it exits with this process (a refused run included).
    """
    from dpnbids.config import FORKSERVER_PRELOAD, uses_forkserver

    ex = config.execution
    if not uses_forkserver(ex):
        return
    import multiprocessing
    from multiprocessing import forkserver

    from dpnbids.preproc.itk import pin_itk_threads

    pin_itk_threads(ex.omp_nthreads)
    multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
    try:
        forkserver.ensure_running()
    except OSError as exc:  # only a head start: nipype starts (or reports) it later anyway
        LOGGER.debug("the forkserver did not start early: %s", exc)


def main(argv=None) -> int:
    """Run dpnbids (:func:`run`) with SIGTERM/SIGINT turned into a clean stop."""
    from dpnbids.cli import signals

    previous = signals.install()
    try:
        return run(argv)
    finally:
        signals.restore(previous)


def run(argv=None) -> int:
    """Run dpnbids; return the process exit code.

    Nothing is written before the input checks pass: a refused run leaves
    OUTPUT_DIR as it was (not even ``logs/``). Every :class:`DpnbidsError` ends
    in one message on stderr and its exit code; any other error ends in exit 1
    with the traceback in a crash file (``OUTPUT_DIR/logs`` once it exists,
    the temporary folder before) and the log, never on the console.
    """
    import tempfile

    from dpnbids.cli.parser import parse_args
    from dpnbids.exceptions import DpnbidsError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _parser, args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or bad options (2)
        return int(exc.code or 0)
    _setup_console_logging(args.verbose)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"

    from dpnbids.config import config_from_args

    try:
        config = config_from_args(args, argv)
        _configure_backend(config)
        _start_forkserver(config)
        inputs, labels = check_inputs(config)
    except DpnbidsError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt as exc:
        _error(f"{_signal_text(exc)} before any output was written")
        return _stopped(exc)
    except Exception:  # noqa: BLE001 - OUTPUT_DIR is not touched before the checks pass
        return _internal_error(Path(tempfile.gettempdir()) / "dpnbids-crashes", run_id)

    return _execute(config, inputs, labels, run_id)


def _no_space(exc: BaseException) -> OSError | None:
    """The 'no space left' (or quota) OSError behind ``exc``, following its causes."""
    import errno

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC,
                                                      getattr(errno, "EDQUOT", errno.ENOSPC)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _disk_full_text(folder, detail: str) -> str:
    return (f"no space left on the device holding {folder} ({detail}). The run was stopped; "
            "free some space (or give another -w / OUTPUT_DIR) and rerun the same command "
            "with the same --work-dir to resume.")


def _execute(config, inputs, labels, run_id: str) -> int:
    """Run the level once the checks passed (from here on OUTPUT_DIR is written)."""
    from dpnbids.cli.signals import DiskFull, DiskWatch
    from dpnbids.derivatives import DerivativesWriter
    from dpnbids.exceptions import DpnbidsError

    output_dir = config.execution.output_dir
    logs_dir = output_dir / "logs"
    writer = DerivativesWriter(output_dir)
    watch = DiskWatch([config.execution.work_dir, output_dir], on_stuck=lambda folder, free: (
        _error(_disk_full_text(folder, f"{free // 1024} KiB free")), logging.shutdown()))
    code = 0
    started = False
    try:
        with _subject_locks(config, inputs), watch:
            logs_dir = _start_run_logs(config, run_id)
            started = True
            _run_level(config, inputs, labels, writer)
    except DpnbidsError as exc:
        _error(str(exc))
        LOGGER.debug("error details", exc_info=True)
        code = exc.exit_code
    except KeyboardInterrupt as exc:
        exc = watch.check(exc)
        if isinstance(exc, DiskFull):
            _error(_disk_full_text(exc.path, f"{exc.free // 1024} KiB free"))
            code = _stopped(exc, 4)
        else:
            _error(f"{_signal_text(exc)}; every process of this run was stopped. Rerun the "
                   "same command (with the same --work-dir) to resume.")
            code = _stopped(exc)
    except Exception as exc:  # noqa: BLE001 - the traceback goes to the log file only
        full = _no_space(exc)
        if full is not None:  # a full disk, under whatever wrapper, is named as such
            _error(_disk_full_text(Path(full.filename or output_dir).parent,
                                   f"writing {full.filename or 'a file'}: {full.strerror}"))
            code = _stopped(exc, 4)
        elif isinstance(exc, OSError) and not started:
            # OUTPUT_DIR passed the checks but cannot be written after all
            _error(f"cannot write to OUTPUT_DIR {output_dir}: {exc.strerror or exc} "
                   f"({exc.filename or logs_dir}). Give a folder you can write to.")
            code = 2
        else:
            code = _internal_error(logs_dir, run_id)
    finally:
        if started:
            code = _finish(config, writer, code, logs_dir, run_id)
    if code == 0:
        LOGGER.info("dpnbids finished successfully; outputs in %s", output_dir)
    return code


def _finish(config, writer, code: int, logs_dir: Path, run_id: str) -> int:
    """dataset_description.json, written whatever the outcome (as fMRIPrep does)."""
    try:
        writer.write_dataset_description(bids_dir=config.execution.bids_dir,
                                         container=config.execution.container,
                                         extra_sources=[config.preproc.fmriprep_dir])
    except Exception:
        if code == 0:
            return _internal_error(logs_dir, run_id)
        LOGGER.debug("dataset_description.json not written", exc_info=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
