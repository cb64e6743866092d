"""Messages name parameters; the command line shows them as flags (dpnbids.messages).

Below the command line, an error, a log record or a report names a parameter by its
configuration field in backticks (```fd_thresh```); the CLI's error line, its log handlers
and the HTML reports show the flag (``--fd-thresh``)."""
from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

import pytest

from dpnbids.cli.parser import build_parser
from dpnbids.exceptions import ConfigError, InputError
from dpnbids.messages import PARAMETER, as_flags, option_flags

PACKAGE = Path(__file__).resolve().parents[2] / "dpnbids"
#: the command line and the app's glue may name flags (the glue only in the metadata of the
#: derivatives it writes, e.g. a sidecar's Description; its messages use fields too)
MAY_NAME_FLAGS = ("cli", "workflows", "group")


def _message_strings():
    """(module path, line, text) of every string constant that is not a docstring."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                first = node.body[0] if node.body else None
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.add(id(first.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                yield path.relative_to(PACKAGE), node.lineno, node.value


def test_flags_are_the_parsers_own():
    parser = build_parser()
    expected = {a.dest: next(o for o in a.option_strings if o.startswith("--"))
                for a in parser._actions  # argparse has no public list of its actions
                if any(o.startswith("--") for o in a.option_strings)
                and a.dest not in ("help", "version", "verbose")}
    assert option_flags() == expected


def test_as_flags_names_options_and_leaves_other_words():
    text = "`fd_thresh` 0.5 leaves 12 volumes; see `model.keras`, `responder` and `pca_dim`"
    assert as_flags(text) == ("--fd-thresh 0.5 leaves 12 volumes; see `model.keras`, "
                              "`responder` and --pca-dim")
    assert as_flags("`a` and `b`", {"a": "--alpha"}) == "--alpha and `b`"


def test_no_module_below_the_command_line_names_a_flag():
    long_flag = re.compile(r"(?<![\w-])(--[a-z][a-z0-9_-]*)")
    ours = set(option_flags().values()) | {"--n-cpus", "--participant_label"}
    found = [f"dpnbids/{path}:{line}: {flag}" for path, line, text in _message_strings()
             if path.parts[0] not in MAY_NAME_FLAGS
             for flag in long_flag.findall(text) if flag in ours]
    assert not found, "name the configuration field in backticks instead:\n" + "\n".join(found)


def test_every_parameter_named_in_a_message_is_an_option():
    fields = option_flags()
    unknown = [f"dpnbids/{path}:{line}: `{name}`" for path, line, text in _message_strings()
               for name in PARAMETER.findall(text) if name not in fields]
    assert not unknown, "a backticked name that is no option (a typo?):\n" + "\n".join(unknown)


def test_config_error_lists_the_fields_its_message_names():
    err = ConfigError("`low_pass` (0.01 Hz) must be above `high_pass` (0.02 Hz); `low_pass`")
    assert err.params == ("low_pass", "high_pass")
    assert isinstance(err, InputError)


def test_science_error_reaches_the_user_as_flags(capsys):
    from dpnbids.cli import run as cli_run
    from dpnbids.learn.splits import make_outer_splits

    labels = [1] * 6 + [0] * 14
    with pytest.raises(InputError) as info:
        make_outer_splits([f"{i:02d}" for i in range(20)], labels, n_folds=10, random_state=0)
    assert "`folds`" in str(info.value)  # a Python user reads the keyword
    cli_run._error(str(info.value))
    err = capsys.readouterr().err
    assert "--folds 6" in err and "`" not in err


def test_log_records_reach_the_user_as_flags():
    from dpnbids.cli import run as cli_run

    record = logging.LogRecord("dpnbids.preproc.pipeline", logging.WARNING, __file__, 1,
                               "%s: no SliceTiming and no `slice_order`", ("sub-01",), None)
    console = cli_run._ConsoleFormatter("[%(levelname)s] %(message)s")
    log_file = cli_run._FlagFormatter("%(name)s [%(levelname)s] %(message)s")
    assert console.format(record) == "[WARNING] sub-01: no SliceTiming and no --slice-order"
    assert log_file.format(record).endswith("no SliceTiming and no --slice-order")


def test_python_warnings_reach_the_user_as_flags(capsys):
    import warnings

    from dpnbids.cli import run as cli_run

    logger = logging.getLogger("dpnbids")
    saved = logger.handlers[:], logger.propagate, logger.level
    try:
        with warnings.catch_warnings():  # restores showwarning
            warnings.simplefilter("always")
            cli_run._setup_console_logging(0)
            warnings.warn("components may be unstable; consider more `ica_repeats`",
                          RuntimeWarning, stacklevel=1)
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no source line
    assert "[WARNING] components may be unstable; consider more --ica-repeats " \
           "(RuntimeWarning)" in err


def test_reports_show_flags():
    from dpnbids.reports.subject import page

    html = page("t", [("s", "S", "<p>raise `fd_thresh` or `model.keras`</p>")])
    assert "raise --fd-thresh or `model.keras`" in html
