"""Messages that name parameters, worded for whoever reads them.

The science (and everything below the command line) names a parameter in an error, a log
record or a report by its configuration field in backticks: ``"`fd_thresh` 0.5 leaves 12
volumes"``. A Python user reads the keyword they pass. The command line's sinks (its error
line, its log handlers) and the HTML reports show the flag instead (``--fd-thresh 0.5 leaves
12 volumes``) through :func:`as_flags`. The flags come from ``cli/options.toml``, the
parser's own source, so a renamed flag is renamed in every message at once.

A backticked word that is no option (``"`model.keras`"``, ``"`responder`"``) is left as it is.
"""
from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

#: the options of the command line (read here as data: this module imports nothing above it)
OPTIONS_FILE = Path(__file__).resolve().parent / "cli" / "options.toml"

#: a parameter named in a message: a configuration field in backticks
PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


@functools.cache
def option_flags() -> dict[str, str]:
    """Each option's configuration field (its parser ``dest``) and its first long flag."""
    with OPTIONS_FILE.open("rb") as fh:
        spec = tomllib.load(fh)
    flags = {}
    for group in spec["group"]:
        for option in group["option"]:
            names = option["flags"]
            dest = option.get("dest", names[0].lstrip("-").replace("-", "_"))
            flags[dest] = next(n for n in names if n.startswith("--"))
    return flags


def as_flags(text: str, flags: Mapping[str, str] | None = None) -> str:
    """``text`` with every backticked option field written as its flag (``--fd-thresh``)."""
    flags = option_flags() if flags is None else flags
    return PARAMETER.sub(lambda m: flags.get(m[1], m[0]), text)
