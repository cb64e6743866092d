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


class _Recorder:
    """A stand-in workflow: records the node flags and the collector's state at run()."""

    def __init__(self):
        self.nodes = [type("Node", (), {"run_without_submitting": True})() for _ in range(3)]
        self.seen = {}

    def _get_all_nodes(self):
        return self.nodes

    def run(self, plugin, plugin_args):
        import gc

        self.seen = {"plugin": plugin, "frozen": gc.get_freeze_count(),
                     "in_pool": [not n.run_without_submitting for n in self.nodes]}
        return "graph"


@pytest.mark.parametrize("plugin, in_pool", [("MultiProc", True), ("SLURM", False),
                                             ("Linear", False)])
def test_run_workflow_pools_light_nodes_locally_and_freezes_the_collector(plugin, in_pool):
    """MultiProc gets every node (nipype's per-node cost then runs on every core); a batch
    scheduler keeps light nodes in its own process. The objects alive before the run are
    frozen out of nipype's gc.collect() passes during it, and thawed after."""
    import gc
    from types import SimpleNamespace

    from dpnbids.config import run_workflow

    before = gc.get_freeze_count()
    workflow = _Recorder()
    config = SimpleNamespace(execution=SimpleNamespace(plugin=plugin, plugin_args={}))
    assert run_workflow(workflow, config) == "graph"
    assert workflow.seen["plugin"] == plugin
    assert workflow.seen["in_pool"] == [in_pool] * 3
    assert workflow.seen["frozen"] > before
    assert gc.get_freeze_count() == before


def test_forkserver_starts_before_the_door_checks_with_the_final_environment(tiny_bids,
                                                                            tmp_path):
    """The CLI starts MultiProc's forkserver before the door checks (its imports overlap
    them), after ITK's thread count is pinned: every worker is forked from it and inherits
    its environment. Linear starts none. In a child process: the server outlives a test."""
    import os
    import subprocess
    import sys

    from dpnbids.preproc.itk import ITK_THREADS_VAR

    code = (
        "import sys, os\n"
        "from multiprocessing import forkserver\n"
        "from dpnbids.cli.parser import parse_args\n"
        "from dpnbids.cli.run import _start_forkserver\n"
        "from dpnbids.config import config_from_args\n"
        "from dpnbids.preproc.itk import ITK_THREADS_VAR\n"
        "_, args = parse_args(sys.argv[1:])\n"
        "_start_forkserver(config_from_args(args))\n"
        "pid = forkserver._forkserver._forkserver_pid\n"
        "print(pid is not None and os.waitpid(pid, os.WNOHANG) == (0, 0),"
        " os.environ.get(ITK_THREADS_VAR))\n")
    env = {k: v for k, v in os.environ.items() if k != ITK_THREADS_VAR}
    for nprocs, expected in (("2", "True 1"), ("1", "False None")):
        out = subprocess.run([sys.executable, "-c", code, str(tiny_bids), str(tmp_path / "out"),
                              "participant", "--nprocs", nprocs], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split("\n")[-2] == expected
        assert not (tmp_path / "out").exists()  # nothing written
