"""Workflow wiring, built (not run) across an option matrix, as fMRIPrep tests do."""
from __future__ import annotations

import pytest

from dpnbids.bids import collect_inputs
from dpnbids.cli.parser import parse_args
from dpnbids.config import config_from_args


def _config(bids, out, *extra, level="participant"):
    _, args = parse_args([str(bids), str(out), level, "--skip-bids-validation", *extra])
    return config_from_args(args)


def _node_names(workflow):
    return set(workflow.list_node_names())


@pytest.mark.parametrize("extra", [[], ["--slice-order", "ascending", "--dummy-scans", "2"],
                                   ["--smoothing-fwhm", "0", "--denoise-strategy", "24p"],
                                   ["--output-resolution", "3", "--nprocs", "2"]])
def test_participant_workflow_builds(tiny_bids, tmp_path, extra):
    from dpnbids.workflows.base import init_dpnbids_wf

    config = _config(tiny_bids, tmp_path / "out", "--participant-label", "01", "02", *extra)
    inputs = collect_inputs(tiny_bids, participant_label=config.selection.participant_label)
    workflow = init_dpnbids_wf(config, inputs)
    names = _node_names(workflow)
    for sub in ("01", "02"):
        for node in ("anat_wf.anat_preproc", "bold_00_wf.prepare_bold",
                     "bold_00_wf.bold_to_std", "bold_00_wf.confounds_denoise",
                     "bold_00_wf.ds_bold_denoised", "subject_report"):
            assert f"sub_{sub}_wf.{node}" in names
    assert not any("dual_regression" in n for n in names)
    prep = workflow.get_node("sub_01_wf").get_node("bold_00_wf").get_node("prepare_bold")
    assert prep.inputs.metadata["RepetitionTime"] == 2.0  # inherited top-level sidecar
    res = workflow.get_node("sub_01_wf").get_node("bold_00_wf").get_node("bold_to_std")
    assert res.inputs.resolution == config.preproc.resolution_mm == (config.preproc.output_resolution or 2.0)
    assert not (tmp_path / "out").exists()  # building writes nothing


def test_group_maps_adds_dual_regression(tiny_bids, tmp_path):
    import nibabel as nib
    import numpy as np

    from dpnbids.workflows.base import init_dpnbids_wf

    maps = tmp_path / "maps.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(maps))
    config = _config(tiny_bids, tmp_path / "out", "--group-maps", str(maps))
    inputs = collect_inputs(tiny_bids)
    names = _node_names(init_dpnbids_wf(config, inputs))
    assert "sub_03_wf.bold_00_wf.dual_regression" in names
    assert "sub_03_wf.bold_00_wf.ds_stage2_pe" in names


def test_multiple_runs_and_sessions(tmp_path):
    import shutil

    from conftest import make_tiny_bids

    from dpnbids.workflows.base import init_dpnbids_wf

    bids = make_tiny_bids(tmp_path / "bids", labels=("1", "0"))
    func = bids / "sub-01" / "func"
    src = func / "sub-01_task-rest_bold.nii.gz"
    for run in ("1", "2"):
        shutil.copy(src, func / f"sub-01_task-rest_run-{run}_bold.nii.gz")
    src.unlink()
    config = _config(bids, tmp_path / "out", "--participant-label", "01")
    inputs = collect_inputs(bids, participant_label=["01"])
    assert len(inputs["01"].bold) == 2
    names = _node_names(init_dpnbids_wf(config, inputs))
    assert "sub_01_wf.bold_01_wf.ds_bold_denoised" in names
    sink = init_dpnbids_wf(config, inputs).get_node("sub_01_wf").get_node(
        "bold_01_wf").get_node("ds_bold_denoised")
    assert "run-2" in sink.inputs.source_file


def test_plugin_file(tiny_bids, tmp_path):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --time=1:00:00\n")
    config = _config(tiny_bids, tmp_path / "out", "--use-plugin", str(plugin))
    assert config.execution.plugin == "SLURM"
    assert config.execution.plugin_args == {"sbatch_args": "--time=1:00:00"}
    bad = tmp_path / "bad.yml"
    bad.write_text("plugin_args: {}\n")
    from dpnbids.exceptions import InputError

    with pytest.raises(InputError, match="must define 'plugin:'"):
        _config(tiny_bids, tmp_path / "out", "--use-plugin", str(bad))


def test_every_interface_spec_pickles():
    """nipype's MultiProc workers pickle node results: specs built by a factory must name
    their real module (a spec made by type() in traits' module fails to unpickle)."""
    import inspect
    import pickle

    from nipype.interfaces.base import SimpleInterface

    import dpnbids.interfaces as itf

    classes = [c for _, c in inspect.getmembers(itf, inspect.isclass)
               if issubclass(c, SimpleInterface) and c.__module__ == itf.__name__
               and "input_spec" in vars(c)]  # the shared base class has no spec of its own
    assert len(classes) >= 6
    for cls in classes:
        for spec in (cls.input_spec, cls.output_spec):
            assert spec.__module__ == itf.__name__, spec
            assert type(pickle.loads(pickle.dumps(spec()))) is spec
