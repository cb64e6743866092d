"""Command-line parser for dpnbids (BIDS-Apps contract, fMRIPrep option names).

``build_parser()`` builds the parser with named option groups; validators are
bound to the parser so every bad value ends in ``parser.error`` (exit 2).
Cross-option checks that need the file system live in
:func:`dpnbids.cli.run.main` (via :mod:`dpnbids.bids`), before any output is
written.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpnbids import __version__
from dpnbids.cli import types
from dpnbids.config import (CV_SCHEMES, DIM_ESTIMATORS, ICA_CONTRASTS, KERAS_BACKENDS,
                            option_defaults, option_sections)
from dpnbids.exceptions import ConfigError
from dpnbids.messages import as_flags

DEFAULTS = option_defaults()

INPUT_SETS = ("ASC", "SSC", "RSP")
SLICE_ORDERS = ("ascending", "descending", "interleaved")
DENOISE_STRATEGIES = ("conn", "24p", "acompcor", "minimal", "none")
BACK_PROJECTIONS = ("dual_regression", "gica1")
EARLY_STOPPING = ("loss", "auc")
SALIENCY_METHODS = ("none", "gradients", "integrated-gradients", "occlusion")
PLUGINS_HELP = "MultiProc (default when --nprocs > 1), Linear, SLURM, SGE, PBS ..."


def _bids_label(entity: str, what: str, example: str, name: str):
    """argparse type ``name``: a BIDS label, with or without its ``<entity>-`` prefix."""
    def parse(value: str) -> str:
        value = value.strip()
        if value.startswith(f"{entity}-"):
            value = value[len(entity) + 1:]
        if not value or not value.isalnum():
            raise argparse.ArgumentTypeError(
                f"{what} label {value!r} is not a BIDS label: use alphanumeric characters "
                f"only, e.g. {example}")
        return value
    parse.__name__ = parse.__qualname__ = name  # tools/make_boutiques.py keys types by name
    return parse


_strip_sub = _bids_label("sub", "participant", "'01' or 'sub-01'", "_strip_sub")
_strip_ses = _bids_label("ses", "session", "'01' or 'ses-01'", "_strip_ses")
_task_label = _bids_label("task", "task", "'rest'", "_task_label")


_positive_int = types.positive_int
_nonneg_int = types.nonneg_int
_positive_float = types.positive_float
_nonneg_float = types.nonneg_float


def _folds(value: str) -> int:
    folds = types.positive_int(value)
    if folds < 2:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 2 (cross-validation needs a training and a test fold), "
            f"got {value!r}")
    return folds


def _n_components(value: str):
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return types.positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {value!r}") from None


def _resolution(value: str):
    """--output-resolution: millimetres (float) or a res label ('res-2' -> '2')."""
    text = value.strip()
    if text.startswith("res-"):
        label = text[4:]
        if not label or not label.isalnum():
            raise argparse.ArgumentTypeError(f"expected a res label like res-2, got {value!r}")
        return label
    return types.positive_float(text)
_probability = types.probability


def _dropout(value: str) -> float:
    fvalue = _nonneg_float(value)
    if fvalue >= 1:
        raise argparse.ArgumentTypeError(f"expected a dropout rate in [0, 1), got {value!r}")
    return fvalue


def _not_a(kind: str, value: str, path: Path) -> argparse.ArgumentTypeError:
    """'does not exist' only when nothing is there; a folder for a file (or the reverse)
    is named as such."""
    if path.is_dir():
        found = "is a directory"
    elif path.exists():
        found = "is a file" if path.is_file() else "is not a regular file"
    else:
        found = "does not exist"
        from dpnbids.publish import pending_publish

        for parent in path.parents[:2]:  # OUTPUT_DIR/group/model of a half-published run
            if pending_publish(parent):
                found += (f"; {parent} holds an interrupted group publish: rerun the group "
                          "level on that OUTPUT_DIR, which completes it first")
                break
    return argparse.ArgumentTypeError(f"expected {kind}, but {value!r} {found}")


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise _not_a("a file", value, path)
    return path


def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_dir():
        raise _not_a("a directory", value, path)
    return path


def _bids_filter(value: str) -> dict:
    path = Path(value).expanduser()
    if not path.is_file():
        raise _not_a("a BIDS filter file (JSON)", value, path.absolute())
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file {value!r} is not valid JSON ({exc}); expected an object such as "
            '{"bold": {"session": "01"}, "t1w": {"acquisition": null}}') from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise argparse.ArgumentTypeError(
            f"BIDS filter file {value!r} must hold a JSON object mapping query names "
            '("bold", "t1w") to objects of BIDS entities, e.g. {"bold": {"session": "01"}}')
    unknown = sorted(set(data) - {"bold", "t1w", "sbref"})
    if unknown:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file {value!r} has unknown queries {unknown}; "
            "expected only 'bold' and 't1w' (and 'sbref')")
    return data


def _threshold_rule(value: str) -> str:
    from dpnbids.exceptions import InputError
    from dpnbids.learn.calibration import parse_threshold_rule

    try:
        kind, number = parse_threshold_rule(value)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return kind if number is None else f"{kind}:{number:g}"


def _input_set(value: str) -> str:
    upper = value.strip().upper()
    if upper not in INPUT_SETS:
        raise argparse.ArgumentTypeError(
            f"unknown input set {value!r}; choose from {', '.join(INPUT_SETS)}")
    return upper


#: ``type`` names of options.toml -> argparse types.
TYPES = {f.__name__.lstrip("_"): f for f in (
    _strip_sub, _strip_ses, _task_label, _positive_int, _nonneg_int, _positive_float,
    _nonneg_float, _folds, _n_components, _resolution, _probability, _dropout,
    _existing_file, _existing_dir, _bids_filter, _input_set, _threshold_rule, Path)}
#: ``choices`` names of options.toml -> the allowed values.
CHOICES = {"SLICE_ORDERS": SLICE_ORDERS, "DENOISE_STRATEGIES": DENOISE_STRATEGIES,
           "DIM_ESTIMATORS": DIM_ESTIMATORS, "ICA_CONTRASTS": ICA_CONTRASTS,
           "BACK_PROJECTIONS": BACK_PROJECTIONS, "INPUT_SETS": INPUT_SETS,
           "EARLY_STOPPING": EARLY_STOPPING, "SALIENCY_METHODS": SALIENCY_METHODS,
           "KERAS_BACKENDS": KERAS_BACKENDS, "CV_SCHEMES": CV_SCHEMES}
OPTIONS_FILE = Path(__file__).with_name("options.toml")


def _add_option(group, spec: dict) -> None:
    """One option of options.toml: dest from the first flag, default from the config."""
    spec = dict(spec)
    flags = spec.pop("flags")
    dest = spec.pop("dest", flags[0][2:].replace("-", "_"))
    if "type" in spec:
        spec["type"] = TYPES[spec["type"]]
    if "choices" in spec:
        spec["choices"] = CHOICES[spec["choices"]]
    if spec.pop("config_default", True) and dest in DEFAULTS \
            and spec.get("action") != "store_true":
        default = DEFAULTS[dest]
        spec["default"] = list(default) if isinstance(default, tuple) else default
    group.add_argument(*flags, dest=dest, **spec)


def build_parser() -> argparse.ArgumentParser:
    """Build the dpnbids argument parser: the BIDS-Apps positionals, then the option
    groups of options.toml (their help texts, types and choices live there)."""
    import tomllib

    parser = argparse.ArgumentParser(
        prog="dpnbids",
        description=(
            "dpnbids: predict response to IV lidocaine in painful diabetic neuropathy from "
            "resting-state fMRI (Teh et al., Neuroinformatics 2023), without data leakage. "
            "Run 'participant' (preprocessing, denoising; dual regression or prediction with "
            "--group-maps/--model) and then 'group' (group ICA, dual regression, component "
            "statistics, 3D-CNN nested cross-validation, final model)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("bids_dir", type=Path,
                        help="the root folder of a BIDS dataset (sub-XX folders at the top level)")
    parser.add_argument("output_dir", type=Path,
                        help="the output folder (a BIDS derivatives dataset); must not be inside "
                             "bids_dir except under bids_dir/derivatives/")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="processing stage: 'participant' per subject, 'group' across subjects")
    parser.add_argument("--version", action="version", version=f"dpnbids {__version__}")
    group = None
    for section in tomllib.loads(OPTIONS_FILE.read_text(encoding="utf-8"))["group"]:
        group = parser.add_argument_group(section["title"])
        for spec in section["option"]:
            _add_option(group, spec)
    group.add_argument("-v", "--verbose", dest="verbose", action="count",
                       default=DEFAULTS["verbose"], help="increase verbosity (-v info, -vv debug)")
    return parser


def parse_args(argv=None):
    """Parse ``argv`` into an :class:`argparse.Namespace` (exit 2 on bad options)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        option_sections(args)  # the rules between options live in the configuration
    except ConfigError as exc:
        parser.error(as_flags(str(exc)))
    return parser, args
