"""Rules between options live in the configuration: Python users get them, the CLI names flags."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dpnbids.analysis.decomposition import GroupICA
from dpnbids.cli.parser import parse_args
from dpnbids.config import (PAPER_N_COMPONENTS, Config, ExecutionConfig, ICAConfig,
                            PreprocConfig, config_from_args, resolve_n_components)
from dpnbids.exceptions import ConfigError, InputError


def _execution(level="participant"):
    return ExecutionConfig(bids_dir=Path("/b"), output_dir=Path("/o"), analysis_level=level,
                           work_dir=Path("/w"), nprocs=1, omp_nthreads=1)


@pytest.mark.parametrize("make, params", [
    (lambda: PreprocConfig(high_pass=0.01, low_pass=0.008), {"low_pass", "high_pass"}),
    (lambda: PreprocConfig(output_space="MNI152NLin2009cAsym:res-2"),
     {"output_space", "fmriprep_dir", "output_resolution"}),
    (lambda: PreprocConfig(output_resolution="res2"), {"output_resolution", "fmriprep_dir"}),
    (lambda: ICAConfig(n_components=40, pca_dim=32), {"pca_dim", "n_components"}),
    (lambda: dataclasses.replace(ICAConfig(), n_components=70), {"pca_dim", "n_components"}),
])
def test_sections_refuse_contradictory_values(make, params):
    with pytest.raises(ConfigError) as info:
        make()
    assert set(info.value.params) == params
    assert isinstance(info.value, InputError)  # exit code 2 through the CLI's handler
    assert all(p in str(info.value) for p in params)  # the message names the fields


def test_sections_accept_what_the_rules_allow():
    assert PreprocConfig(high_pass=0.0, low_pass=0.09).low_pass == 0.09  # high-pass off
    assert PreprocConfig(output_space="MNIPediatricAsym:cohort-1", fmriprep_dir=Path("/f"))
    assert ICAConfig(n_components="auto", pca_dim=4).pca_dim == 4
    assert ICAConfig(n_components=64, pca_dim=64).n_components == 64


def test_whole_config_refuses_model_and_group_maps_together_or_at_the_group_level():
    from dpnbids.config import CNNConfig, SelectionConfig

    def config(level, model=None, maps=None):
        return Config(execution=_execution(level), selection=SelectionConfig(),
                      preproc=PreprocConfig(), ica=ICAConfig(group_maps=maps),
                      cnn=CNNConfig(model=model))

    assert config("participant", model=Path("/m")).cnn.model == Path("/m")
    with pytest.raises(ConfigError, match="not both") as info:
        config("participant", model=Path("/m"), maps=Path("/g"))
    assert info.value.params == ("model", "group_maps")
    with pytest.raises(ConfigError, match="participant level only"):
        config("group", maps=Path("/g"))


@pytest.mark.parametrize("argv, flags", [
    (["--high-pass", "0.1", "--low-pass", "0.05"], ("--low-pass (0.05 Hz)", "--high-pass (0.1 Hz)")),
    (["--n-components", "40", "--pca-dim", "32"], ("--pca-dim (32)", "--n-components (40)")),
    (["--output-space", "MNI152NLin6Asym:res-2"], ("--output-space", "--fmriprep-dir")),
])
def test_cli_names_the_flags_of_a_config_error(tmp_path, capsys, argv, flags):
    with pytest.raises(SystemExit) as info:
        parse_args([str(tmp_path), str(tmp_path / "out"), "participant", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(flag in err for flag in flags), err
    assert "low_pass" not in err and "pca_dim" not in err and "output_space" not in err


def test_cli_refuses_group_maps_at_the_group_level(tmp_path, capsys):
    maps = tmp_path / "maps.nii.gz"
    maps.write_bytes(b"")
    with pytest.raises(SystemExit):
        parse_args([str(tmp_path), str(tmp_path / "out"), "group", "--group-maps", str(maps)])
    assert "--model and --group-maps apply to the participant level only" in capsys.readouterr().err


def test_n_components_default_has_one_source(tmp_path):
    assert resolve_n_components(None, False) == ICAConfig.n_components == "auto"
    assert resolve_n_components(None, True) == PAPER_N_COMPONENTS == 30
    assert resolve_n_components(12, True) == 12
    for extra, want in (([], "auto"), (["--paper-faithful"], 30),
                        (["--paper-faithful", "--n-components", "8"], 8)):
        _, args = parse_args([str(tmp_path), str(tmp_path / "o"), "group", *extra])
        assert config_from_args(args).ica.n_components == want
    ica = GroupICA()
    assert (ica.n_components, ica.pca_dim, ica.n_repeats, ica.fun, ica.dim_est) == (
        ICAConfig.n_components, ICAConfig.pca_dim, ICAConfig.ica_repeats,
        ICAConfig.ica_contrast, ICAConfig.dim_est)


@pytest.mark.parametrize("nprocs, omp", [(1, 1), (2, 1), (3, 2), (9, 8), (64, 8)])
def test_threads_per_process_default_leaves_processes_the_cpus(nprocs, omp):
    """--omp-nthreads defaults to nprocs - 1 within [1, 8]: on 2 CPUs two single-threaded
    processes run side by side."""
    from dpnbids.config import default_omp_nthreads

    assert default_omp_nthreads(nprocs) == omp
