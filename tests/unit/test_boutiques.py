"""boutiques.json: generated from the parser, BIDS-valid, and accepted back by the parser."""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from dpnbids.cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR = REPO / "boutiques.json"
OUTPUT_IDS = {"output_dir_name", "participant_level_analysis_dir"}
POSITIONAL_IDS = {"bids_dir", "analysis_level"} | OUTPUT_IDS

boutiques = pytest.importorskip("boutiques", reason="boutiques is not installed (pip install boutiques)")
from boutiques import bosh  # noqa: E402 - only once importorskip found boutiques
from boutiques.validator import DescriptorValidationError  # noqa: E402 - same


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_boutiques", REPO / "tools" / "make_boutiques.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def descriptor():
    return json.loads(DESCRIPTOR.read_text())


@pytest.fixture(scope="module")
def parser_options():
    parser = build_parser()
    return {a.dest: a for a in parser._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))}


def test_descriptor_is_generated_from_current_parser():
    gen = _load_generator()
    expected = gen.render(gen.build_descriptor())
    assert DESCRIPTOR.read_text() == expected, (
        "boutiques.json is stale: run `python tools/make_boutiques.py` and commit it")


def test_every_parser_option_is_a_descriptor_input(descriptor, parser_options):
    ids = {inp["id"] for inp in descriptor["inputs"]}
    missing = sorted(set(parser_options) - ids)
    assert not missing, f"parser options missing from boutiques.json: {missing}"


def test_every_descriptor_input_is_a_parser_option(descriptor, parser_options):
    for inp in descriptor["inputs"]:
        if inp["id"] in POSITIONAL_IDS:
            continue
        assert inp["id"] in parser_options, f"boutiques.json promises {inp['id']!r}; the parser has no such option"
        action = parser_options[inp["id"]]
        assert inp["command-line-flag"] in action.option_strings
        if action.choices is not None:
            assert inp["value-choices"] == list(action.choices)
        if inp["type"] == "Flag":
            assert action.nargs == 0
        else:
            assert action.nargs != 0
            assert bool(inp.get("list")) == (action.nargs in ("+", "*"))


def test_positionals_follow_bids_apps_contract(descriptor):
    cmd = descriptor["command-line"]
    assert cmd.startswith("mkdir -p [OUTPUT_DIR]; dpnbids [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL] "
                          "[PARTICIPANT_LABEL] [SESSION_LABEL]")
    level = next(i for i in descriptor["inputs"] if i["id"] == "analysis_level")
    assert level["value-choices"] == ["participant", "group"]
    # every value-key is used exactly once on the command line
    keys = {i["value-key"] for i in descriptor["inputs"]}
    for key in keys:
        assert key in cmd


def test_bosh_validate_bids_passes():
    bosh(["validate", "--bids", str(DESCRIPTOR)])


def test_bosh_validate_bids_rejects_a_broken_descriptor(tmp_path, descriptor):
    broken = copy.deepcopy(descriptor)
    broken["command-line"] = broken["command-line"].replace("[BIDS_DIR] [OUTPUT_DIR]", "[OUTPUT_DIR] [BIDS_DIR]")
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(DescriptorValidationError, match="command-line"):
        bosh(["validate", "--bids", str(path)])


def _valid_value(inp, action, tmp_path):
    """A value the parser accepts for descriptor input ``inp``."""
    if inp["type"] == "Flag":
        return True
    if inp["type"] == "File":
        tname = getattr(action.type, "__name__", "")
        path = tmp_path / inp["id"]
        if tname == "_existing_dir":
            path.mkdir(exist_ok=True)
        elif tname == "_bids_filter":
            path.write_text(json.dumps({"bold": {"session": "01"}}))
        else:
            path.write_text("plugin: Linear\n")
        value = str(path)
    elif "value-choices" in inp:
        value = inp["value-choices"][-1]
    elif inp["type"] == "Number":
        if inp.get("maximum") == 1:
            value = 0.25
        elif inp.get("integer"):
            value = int(inp.get("minimum", 0)) + 2
        else:
            value = 1.5
    else:
        value = {"participant_label": "01", "session_label": "02", "task_id": "rest",
                 "n_components": "auto", "output_resolution": "res-2",
                 "threshold_rule": "sensitivity:0.9"}.get(inp["id"], "abc")
    return [value] if inp.get("list") else value


def _simulate(invocation: dict, tmp_path: Path) -> list[str]:
    inv = tmp_path / "invocation.json"
    inv.write_text(json.dumps(invocation))
    out = bosh(["exec", "simulate", str(DESCRIPTOR), "-i", str(inv)])
    mkdir, _, command = out.shell_command.partition("; ")
    assert mkdir.startswith("mkdir -p ")
    argv = shlex.split(command)
    assert argv[0] == "dpnbids"
    return argv[1:]


def test_simulated_command_with_every_option_parses(tmp_path, descriptor, parser_options):
    invocation = {"bids_dir": str(tmp_path), "output_dir_name": str(tmp_path / "out"),
                  "analysis_level": "participant"}
    for inp in descriptor["inputs"]:
        if inp["id"] in POSITIONAL_IDS:
            continue
        invocation[inp["id"]] = _valid_value(inp, parser_options[inp["id"]], tmp_path)
    argv = _simulate(invocation, tmp_path)
    args = build_parser().parse_args(argv)
    assert args.analysis_level == "participant"
    assert Path(args.output_dir) == tmp_path / "out"
    for inp in descriptor["inputs"]:
        if inp["id"] in POSITIONAL_IDS:
            continue
        got, want = getattr(args, inp["id"]), invocation[inp["id"]]
        if inp["type"] == "Flag":
            assert got not in (False, 0, None), inp["id"]
        elif inp["type"] == "File" and not isinstance(got, dict):
            assert Path(got) == Path(want), inp["id"]
        elif inp["type"] == "Number":
            assert got == pytest.approx(want), inp["id"]
        elif inp["id"] == "output_resolution":
            assert got == "2"  # a res label, its "res-" stripped
        elif inp["type"] == "String" and inp["id"] not in ("work_dir",):
            assert got == want, inp["id"]


def test_simulated_group_command_parses(tmp_path):
    (tmp_path / "out").mkdir()
    argv = _simulate({"bids_dir": str(tmp_path), "output_dir_name": str(tmp_path / "out"),
                      "analysis_level": "group", "n_components": "5", "pca_dim": 8,
                      "input_sets": ["ASC", "SSC"]}, tmp_path)
    from dpnbids.cli.parser import parse_args

    _, args = parse_args(argv)
    assert args.analysis_level == "group"
    assert Path(args.output_dir) == tmp_path / "out"
    assert (args.n_components, args.pca_dim, args.input_sets) == (5, 8, ["ASC", "SSC"])


def test_generator_refuses_an_unknown_validator():
    gen = _load_generator()
    parser = build_parser()
    parser.add_argument("--odd", type=lambda v: v)
    with pytest.raises(TypeError, match="unknown validator"):
        gen.build_descriptor(parser)
