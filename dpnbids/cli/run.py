"""``dpnbids`` entry point: logging, checks at the door, dispatch, exit codes.

Exit codes: 0 success; 2 bad input or options; 3 data leakage detected;
4 one or more nodes failed (the message names subjects and crash files);
1 unexpected error (the traceback goes to OUTPUT_DIR/logs, not the console);
130 interrupted.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

# Deterministic kernels on CPU; must be set before any backend import.
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

LOGGER = logging.getLogger("dpnbids")


def _setup_console_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose + 1, 2)  # default INFO, -v DEBUG
    if verbose == 0:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s",
                                           datefmt="%H:%M:%S"))
    root = logging.getLogger("dpnbids")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)
    root.propagate = False
    nipype_level = logging.INFO if verbose >= 2 else logging.WARNING
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).setLevel(nipype_level)


def _add_file_logging(log_file: Path) -> None:
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s [%(levelname)s] %(message)s"))
    logging.getLogger("dpnbids").addHandler(handler)
    import nipype  # noqa: F401 - configures its loggers; we then route them to the file

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


def _error(message: str) -> None:
    sys.stderr.write(f"dpnbids: error: {message}\n")


def check_inputs(config):
    """All input checks that need the file system; nothing is written here."""
    from dpnbids import bids

    ex, sel = config.execution, config.selection
    bids.check_bids_root(ex.bids_dir)
    bids.check_output_dir(ex.bids_dir, ex.output_dir)
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
        from dpnbids.workflows.group import check_group_inputs

        check_group_inputs(config, inputs)
    else:
        from dpnbids.workflows.base import check_participant_inputs

        check_participant_inputs(config, inputs)
    return inputs, labels


def _write_provenance(config, logs_dir: Path) -> None:
    import subprocess

    from dpnbids.workflows.outputs import atomic_write_text

    stamp = time.strftime("%Y%m%d-%H%M%S")
    atomic_write_text(logs_dir / f"config-{config.execution.analysis_level}-{stamp}.toml",
                      config.to_toml())
    try:
        freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all"],
                                capture_output=True, text=True, timeout=120, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        freeze = "pip freeze unavailable\n"
    atomic_write_text(logs_dir / "pip-freeze.txt", freeze)


def main(argv=None) -> int:
    """Run dpnbids; return the process exit code."""
    from dpnbids.cli.parser import parse_args
    from dpnbids.exceptions import DpnbidsError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _parser, args = parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or bad options (2)
        return int(exc.code or 0)
    _setup_console_logging(args.verbose)

    from dpnbids.config import config_from_args

    output_dir = None
    config = None
    try:
        config = config_from_args(args, argv)
        inputs, labels = check_inputs(config)
    except DpnbidsError as exc:
        _error(str(exc))
        return exc.exit_code

    output_dir = config.execution.output_dir
    from dpnbids.workflows.outputs import DerivativesWriter

    writer = DerivativesWriter(output_dir)
    logs_dir = output_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_file = logs_dir / f"dpnbids-{config.execution.analysis_level}-{stamp}-{os.getpid()}.log"
    _add_file_logging(log_file)
    LOGGER.info("dpnbids %s: %s level on %s -> %s", config.version,
                config.execution.analysis_level, config.execution.bids_dir, output_dir)
    _write_provenance(config, logs_dir)
    code = 0
    try:
        if config.execution.analysis_level == "participant":
            from dpnbids.workflows.base import run_participant_level

            run_participant_level(config, inputs, writer)
        else:
            from dpnbids.workflows.group import run_group_level

            run_group_level(config, inputs, labels, writer)
    except DpnbidsError as exc:
        _error(str(exc))
        LOGGER.debug("error details", exc_info=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted; rerun with the same --work-dir to resume")
        code = 130
    except Exception:  # noqa: BLE001 - the traceback goes to the log file only
        LOGGER.debug("unexpected error", exc_info=True)
        import traceback

        crash = logs_dir / f"crash-{stamp}-{os.getpid()}.txt"
        crash.write_text(traceback.format_exc())
        _error(f"unexpected error: {sys.exc_info()[1]!r}. The traceback is in {crash}; "
               "please report it with the log file.")
        code = 1
    finally:
        writer.write_dataset_description(bids_dir=config.execution.bids_dir,
                                         container=config.execution.container,
                                         extra_sources=[config.preproc.fmriprep_dir])
    if code == 0:
        LOGGER.info("dpnbids finished successfully; outputs in %s", output_dir)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
