"""CLI contract: --help/--version, option errors and every bad input of the foundation.

Each bad input must give one clear message (no traceback), a non-zero exit and
leave OUTPUT_DIR uncreated.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from dpnbids import __version__
from dpnbids.cli.run import main


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_version(capsys):
    code, out, _ = _run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"dpnbids {__version__}"


def test_help_groups(capsys):
    code, out, _ = _run(["--help"], capsys)
    assert code == 0
    for group in ("Options for filtering BIDS queries", "Options to handle performance",
                  "Preprocessing (participant level)", "Group ICA and dual regression",
                  "3D-CNN and cross-validation (group level)"):
        assert group in out
    for option in ("--participant-label", "--task-id", "--session-label", "--bids-filter-file",
                   "--skip-bids-validation", "--work-dir", "--nprocs", "--omp-nthreads",
                   "--mem-gb", "--use-plugin", "--responder-column", "--random-seed",
                   "--output-space", "--version"):
        assert option in out


def test_unknown_option_fails(tiny_bids, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = _run([tiny_bids, out_dir, "participant", "--no-such-option"], capsys)
    assert code == 2
    assert "unrecognized arguments: --no-such-option" in err
    assert not out_dir.exists()


def test_run_py_shim_and_console_script(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(repo / "run.py"), "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and __version__ in proc.stdout


@pytest.mark.parametrize("label,expected", [("01", ["01"]), ("sub-01", ["01"])])
def test_participant_label_prefix(label, expected):
    from dpnbids.cli.parser import parse_args

    _, args = parse_args(["/b", "/o", "participant", "--participant-label", label])
    assert args.participant_label == expected


def _assert_clean_failure(code, err, out_dir, *fragments, exit_code=2):
    assert code == exit_code, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not out_dir.exists(), "OUTPUT_DIR must not be created on bad input"


def test_missing_bids_dir(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = _run([tmp_path / "nope", out_dir, "participant"], capsys)
    _assert_clean_failure(code, err, out_dir, "does not exist", str(tmp_path / "nope"))


def test_not_a_bids_dataset(tmp_path, capsys):
    (tmp_path / "notbids").mkdir()
    out_dir = tmp_path / "out"
    code, _, err = _run([tmp_path / "notbids", out_dir, "participant"], capsys)
    _assert_clean_failure(code, err, out_dir, "not a BIDS dataset", "dataset_description.json")


def test_output_equal_to_bids(tiny_bids, capsys):
    before = sorted(p.name for p in tiny_bids.iterdir())
    code, _, err = _run([tiny_bids, tiny_bids, "participant", "--skip-bids-validation"], capsys)
    assert code == 2 and "is the BIDS_DIR itself" in err and "Traceback" not in err
    assert sorted(p.name for p in tiny_bids.iterdir()) == before


def test_output_inside_bids(tiny_bids, capsys):
    out_dir = tiny_bids / "sub-01" / "out"
    code, _, err = _run([tiny_bids, out_dir, "participant", "--skip-bids-validation"], capsys)
    _assert_clean_failure(code, err, out_dir, "is inside BIDS_DIR", "derivatives/")


def test_output_under_derivatives_allowed(tiny_bids):
    from dpnbids.bids import check_output_dir

    check_output_dir(tiny_bids, tiny_bids / "derivatives" / "dpnbids")  # no error


def test_unknown_participant(tiny_bids, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = _run([tiny_bids, out_dir, "participant", "--skip-bids-validation",
                         "--participant-label", "01", "sub-99"], capsys)
    _assert_clean_failure(code, err, out_dir, "sub-99", "not found", "available: sub-01")


def test_non_binary_responder(tmp_path, capsys):
    from conftest import make_tiny_bids

    bids = make_tiny_bids(tmp_path / "bids", labels=("1", "0", "maybe", "0"))
    out_dir = tmp_path / "out"
    code, _, err = _run([bids, out_dir, "group", "--skip-bids-validation", "--folds", "2"],
                        capsys)
    _assert_clean_failure(code, err, out_dir, "sub-03", "'maybe'", "responder",
                          "participants.tsv")


def test_single_class(tmp_path, capsys):
    from conftest import make_tiny_bids

    bids = make_tiny_bids(tmp_path / "bids", labels=("yes", "YES", "Responder", "n/a"))
    out_dir = tmp_path / "out"
    code, _, err = _run([bids, out_dir, "group", "--skip-bids-validation", "--folds", "2"],
                        capsys)
    _assert_clean_failure(code, err, out_dir, "only one class", "responder")


def test_all_labels_na(tmp_path, capsys):
    from conftest import make_tiny_bids

    bids = make_tiny_bids(tmp_path / "bids", labels=("n/a", "n/a"))
    out_dir = tmp_path / "out"
    code, _, err = _run([bids, out_dir, "group", "--skip-bids-validation", "--folds", "2"],
                        capsys)
    _assert_clean_failure(code, err, out_dir, "n/a")


def test_too_few_per_class_for_folds(tmp_path, capsys):
    from conftest import make_tiny_bids

    bids = make_tiny_bids(tmp_path / "bids", labels=("1", "0", "1", "0"))
    out_dir = tmp_path / "out"
    code, _, err = _run([bids, out_dir, "group", "--skip-bids-validation"], capsys)
    _assert_clean_failure(code, err, out_dir, "2 responders and 2 non-responders",
                          "--folds 2")


def test_missing_responder_column(tiny_bids, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = _run([tiny_bids, out_dir, "group", "--skip-bids-validation", "--folds", "2",
                         "--responder-column", "outcome"], capsys)
    _assert_clean_failure(code, err, out_dir, "no 'outcome' column", "--responder-column")


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "is not valid JSON"),
    ('["bold"]', "must hold a JSON object"),
    ('{"dwi": {"session": "1"}}', "unknown queries ['dwi']"),
])
def test_malformed_filter_file(tiny_bids, tmp_path, capsys, content, fragment):
    filt = tmp_path / "filter.json"
    filt.write_text(content)
    out_dir = tmp_path / "out"
    code, _, err = _run([tiny_bids, out_dir, "participant", "--bids-filter-file", filt],
                        capsys)
    _assert_clean_failure(code, err, out_dir, fragment, str(filt))


@pytest.mark.parametrize("value,expected", [
    ("1", 1), ("0", 0), ("TRUE", 1), ("false", 0), ("Yes", 1), ("no", 0), ("responder", 1),
    ("Non-Responder", 0), ("nonresponder", 0), ("R", 1), ("nr", 0), ("n/a", None), ("", None)])
def test_label_encodings(value, expected):
    from dpnbids.bids import parse_response_label

    assert parse_response_label(value) == expected


def test_na_labels_excluded_with_warning(tmp_path, caplog):
    from conftest import make_tiny_bids

    from dpnbids.bids import load_labels

    bids = make_tiny_bids(tmp_path / "bids", labels=("1", "0", "n/a", "1", "0"))
    labels = load_labels(bids, "responder")
    assert labels == {"01": 1, "02": 0, "03": None, "04": 1, "05": 0}
    assert "sub-03" in caplog.text and "excluded from training" in caplog.text


def test_bids_validation_failure_reported(tmp_path, capsys):
    from conftest import make_tiny_bids

    bids = make_tiny_bids(tmp_path / "bids")
    (bids / "sub-01" / "func" / "sub-01_task-rest_bold.json").write_text("{}")
    (bids / "task-rest_bold.json").unlink()
    out_dir = tmp_path / "out"
    code, _, err = _run([bids, out_dir, "participant"], capsys)
    _assert_clean_failure(code, err, out_dir, "failed BIDS validation",
                          "--skip-bids-validation")


def test_config_seeds_and_toml(tiny_bids, tmp_path):
    from dpnbids.cli.parser import parse_args
    from dpnbids.config import config_from_args, derive_seed

    _, args = parse_args([str(tiny_bids), str(tmp_path / "o"), "group", "--random-seed", "7"])
    config = config_from_args(args)
    assert config.seed("ica") == derive_seed(7, "ica")
    assert config.seed("ica") != config.seed("cv")
    _, args0 = parse_args([str(tiny_bids), str(tmp_path / "o"), "group", "--random-seed", "8"])
    assert config_from_args(args0).seed("ica") != config.seed("ica")
    import tomllib

    data = tomllib.loads(config.to_toml())
    assert data["random_seed"] == 7 and data["cnn"]["folds"] == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.random_seed = 3  # frozen


def test_cross_option_errors(capsys):
    code, _, err = _run(["/b", "/o", "group", "--pca-dim", "10", "--n-components", "20"],
                        capsys)
    assert code == 2 and "--pca-dim (10) must be >= --n-components (20)" in err


def test_derived_seeds_fit_a_signed_32_bit_int():
    """ANTs takes a signed 32-bit seed and fails on anything larger."""
    from dpnbids.config import derive_seed

    seeds = [derive_seed(base, purpose) for base in (0, 1, 42, 2**40)
             for purpose in ("anat", "bold", "ica", "cv", "perm.ASC")]
    assert all(0 <= s < 2**31 for s in seeds)
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize("label", ["../01", "01/..", "a/b"])
def test_label_with_path_characters(tiny_bids, tmp_path, capsys, label):
    out_dir = tmp_path / "out"
    code, _, err = _run([tiny_bids, out_dir, "participant", "--skip-bids-validation",
                         "--participant-label", label], capsys)
    _assert_clean_failure(code, err, out_dir, label)


def test_no_bold_for_the_task(tiny_bids, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = _run([tiny_bids, out_dir, "participant", "--skip-bids-validation",
                         "--task-id", "nback"], capsys)
    _assert_clean_failure(code, err, out_dir, "nback")


def test_group_without_participants_tsv(tiny_bids, tmp_path, capsys):
    (tiny_bids / "participants.tsv").unlink()
    out_dir = tmp_path / "out"
    code, _, err = _run([tiny_bids, out_dir, "group", "--skip-bids-validation", "--folds", "2"],
                        capsys)
    _assert_clean_failure(code, err, out_dir, "participants.tsv")


@pytest.mark.parametrize("func,value,ok", [
    ("positive_int", "3", 3), ("positive_int", "0", None), ("positive_int", "1.5", None),
    ("nonneg_int", "0", 0), ("nonneg_int", "-1", None),
    ("positive_float", "0.5", 0.5), ("positive_float", "0", None),
    ("positive_float", "nan", None), ("positive_float", "inf", None),
    ("nonneg_float", "0", 0.0), ("nonneg_float", "nan", None), ("nonneg_float", "-0.1", None),
    ("probability", "0.1", 0.1), ("probability", "1", None)])
def test_shared_argument_validators(func, value, ok):
    import argparse

    from dpnbids.cli import types

    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            getattr(types, func)(value)
    else:
        assert getattr(types, func)(value) == ok


def test_parser_defaults_come_from_the_config_dataclasses():
    """One source of defaults: every option named like a config field defaults to that
    field's default (--n-components resolves None to auto or the paper's 30 after parsing;
    --fd-thresh, --output-resolution and --cnn-voxel-size are None in both)."""
    import dataclasses

    from dpnbids.cli.parser import build_parser
    from dpnbids.config import SECTIONS, Config, option_defaults

    defaults = option_defaults()
    assert defaults["smoothing_fwhm"] == 5.0 and defaults["random_seed"] == 0
    fields = {f.name for cls in (*SECTIONS.values(), Config) for f in dataclasses.fields(cls)}
    assert {"bids_dir", "work_dir"} <= fields - set(defaults)  # required, no default
    checked = 0
    for action in build_parser()._actions:
        if action.dest in defaults and action.dest not in ("n_components", "version"):
            want = defaults[action.dest]
            got = tuple(action.default) if isinstance(action.default, list) else action.default
            assert got == want, (action.dest, got, want)
            checked += 1
    assert checked >= 45
