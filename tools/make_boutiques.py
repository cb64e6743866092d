"""Write ``boutiques.json`` from the dpnbids argument parser.

The descriptor is generated, never edited by hand, so it cannot promise an
option the parser rejects::

    python tools/make_boutiques.py            # rewrite boutiques.json
    python tools/make_boutiques.py --check    # exit 1 if boutiques.json is stale

Every option of :func:`dpnbids.cli.parser.build_parser` becomes one Boutiques
input (``id`` = the argparse ``dest``), typed from its validator; ``--help``
and ``--version`` are not inputs. ``tests/unit/test_boutiques.py`` checks both
directions and that ``bosh exec simulate`` output parses.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DESCRIPTOR = REPO / "boutiques.json"
DOCKER_IMAGE = "dpn-bids"

# Validator name -> Boutiques type facts. A new validator in the parser makes
# build_descriptor() raise, so the mapping is kept in step on purpose.
_TYPES: dict[str, dict] = {
    "_strip_sub": {"type": "String"},
    "_strip_ses": {"type": "String"},
    "_task_label": {"type": "String"},
    "_input_set": {"type": "String"},
    "_threshold_rule": {"type": "String"},  # youden, balanced, fixed:T or sensitivity:S
    "_n_components": {"type": "String"},  # a positive integer or "auto"
    "_resolution": {"type": "String"},  # mm or a res label (res-2)
    "str": {"type": "String"},
    "Path": {"type": "String"},
    "PosixPath": {"type": "String"},
    "_existing_file": {"type": "File"},
    "_existing_dir": {"type": "File"},
    "_bids_filter": {"type": "File"},
    "positive_int": {"type": "Number", "integer": True, "minimum": 1},
    "nonneg_int": {"type": "Number", "integer": True, "minimum": 0},
    "int": {"type": "Number", "integer": True},
    "positive_float": {"type": "Number", "minimum": 0, "exclusive-minimum": True},
    "nonneg_float": {"type": "Number", "minimum": 0},
    "float": {"type": "Number"},
    "probability": {"type": "Number", "minimum": 0, "exclusive-minimum": True,
                     "maximum": 1, "exclusive-maximum": True},
    "_dropout": {"type": "Number", "minimum": 0, "maximum": 1, "exclusive-maximum": True},
    "_folds": {"type": "Number", "integer": True, "minimum": 2},
}
_SKIP_ACTIONS = (argparse._HelpAction, argparse._VersionAction)


def _type_name(action: argparse.Action) -> str:
    if action.type is None:
        return "str"
    return getattr(action.type, "__name__", type(action.type).__name__)


def _flag(action: argparse.Action) -> str:
    """The canonical long flag: the first ``--`` spelling (hyphenated)."""
    longs = [s for s in action.option_strings if s.startswith("--")]
    return longs[0] if longs else action.option_strings[0]


def _name(dest: str) -> str:
    return dest.replace("_", " ").capitalize()


def _help(action: argparse.Action) -> str:
    text = (action.help or "").replace("%%", "%")
    return " ".join(text.split())


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def option_input(action: argparse.Action) -> dict:
    """Boutiques input for one optional argparse action."""
    dest = action.dest
    entry: dict = {
        "id": dest,
        "name": _name(dest),
        "description": _help(action),
        "value-key": f"[{dest.upper()}]",
        "command-line-flag": _flag(action),
        "optional": True,
    }
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        # A count (-v/-vv) is offered as one level; repeat the flag by hand for more.
        entry["type"] = "Flag"
        return entry
    if not isinstance(action, argparse._StoreAction):
        raise TypeError(f"option {_flag(action)}: unsupported argparse action "
                        f"{type(action).__name__}; teach tools/make_boutiques.py about it")
    tname = _type_name(action)
    if tname not in _TYPES:
        raise TypeError(f"option {_flag(action)}: unknown validator {tname!r}; add it to "
                        "_TYPES in tools/make_boutiques.py")
    entry.update(_TYPES[tname])
    choices = action.choices
    if choices is None and tname == "_input_set":
        from dpnbids.cli.parser import INPUT_SETS

        choices = INPUT_SETS
    if choices is not None:
        entry["value-choices"] = list(choices)
    if action.nargs in ("+", "*"):
        entry["list"] = True
        if action.nargs == "+":
            entry["min-list-entries"] = 1
    elif action.nargs not in (None,):
        raise TypeError(f"option {_flag(action)}: unsupported nargs={action.nargs!r}")
    if action.default is not None and action.default is not argparse.SUPPRESS:
        entry["default-value"] = _jsonable(action.default)
    return entry


def build_descriptor(parser: argparse.ArgumentParser | None = None) -> dict:
    """The Boutiques descriptor (a dict) for ``parser`` (default: dpnbids's)."""
    from dpnbids import __version__
    from dpnbids.cli.parser import build_parser

    parser = parser or build_parser()
    positionals = {a.dest: a for a in parser._actions if not a.option_strings}
    expected = ["bids_dir", "output_dir", "analysis_level"]
    if list(positionals) != expected:
        raise TypeError(f"positional arguments {list(positionals)} differ from the BIDS-Apps "
                        f"contract {expected}; update tools/make_boutiques.py")
    options = [a for a in parser._actions
               if a.option_strings and not isinstance(a, _SKIP_ACTIONS)]
    # BIDS-Apps order: participant and session labels right after the positionals.
    first = ["participant_label", "session_label"]
    options.sort(key=lambda a: (first.index(a.dest) if a.dest in first else len(first)))
    inputs = [
        {"id": "bids_dir", "name": "BIDS directory", "type": "File", "value-key": "[BIDS_DIR]",
         "optional": False, "description": _help(positionals["bids_dir"])},
        {"id": "output_dir_name", "name": "Output directory name", "type": "String",
         "value-key": "[OUTPUT_DIR]", "optional": True,
         "description": _help(positionals["output_dir"]) + "; the same folder at both levels"},
        {"id": "participant_level_analysis_dir", "name": "Participant-level output directory",
         "type": "File", "value-key": "[OUTPUT_DIR]", "optional": True,
         "description": "the output directory of the participant-level runs (group level). Kept "
                        "for the Boutiques BIDS-app template; bosh drops [OUTPUT_DIR] from the "
                        "command line when only this input is given, so give output_dir_name at "
                        "both levels"},
        {"id": "analysis_level", "name": "Analysis level", "type": "String",
         "value-key": "[ANALYSIS_LEVEL]", "optional": False,
         "value-choices": list(positionals["analysis_level"].choices),
         "description": _help(positionals["analysis_level"])},
    ]
    inputs += [option_input(a) for a in options]
    command = " ".join(["mkdir -p [OUTPUT_DIR]; dpnbids [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL]"]
                       + [i["value-key"] for i in inputs[4:]])
    groups = [{
        "id": "output_directory",
        "name": "Output directory",
        "description": "the output directory: output_dir_name (String) at both levels; "
                       "the File alternative is part of the Boutiques BIDS-app template",
        "members": ["output_dir_name", "participant_level_analysis_dir"],
        "mutually-exclusive": True,
        "one-is-required": True,
    }]
    return {
        "name": "dpnbids",
        "tool-version": __version__,
        "description": " ".join(parser.description.split()),
        "author": "dpnbids developers",
        "url": "https://github.com/dpnbids/dpnbids",
        "command-line": command,
        "schema-version": "0.5",
        "container-image": {"type": "docker", "image": f"{DOCKER_IMAGE}:{__version__}",
                            "entrypoint": True},
        "inputs": inputs,
        "groups": groups,
        "output-files": [{
            "id": "output_dir",
            "name": "Output directory",
            "description": "BIDS derivatives dataset written by dpnbids",
            "path-template": "[OUTPUT_DIR]",
            "optional": False,
        }],
        "suggested-resources": {"cpu-cores": 4, "ram": 16, "walltime-estimate": 14400},
        "tags": {"domain": ["neuroinformatics", "fmri", "bids", "deep learning"]},
    }


def render(descriptor: dict) -> str:
    return json.dumps(descriptor, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description="Write boutiques.json from the dpnbids parser.")
    cli.add_argument("--check", action="store_true",
                     help="do not write; exit 1 if boutiques.json differs from the parser")
    cli.add_argument("--output", type=Path, default=DESCRIPTOR)
    args = cli.parse_args(argv)
    text = render(build_descriptor())
    if args.check:
        if not args.output.is_file() or args.output.read_text() != text:
            print(f"{args.output} is stale: run python tools/make_boutiques.py", file=sys.stderr)
            return 1
        print(f"{args.output} matches the parser")
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
