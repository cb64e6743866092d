"""The group level's nipype factories: dual regression, one node per run.

The learning nodes (folds, permutation blocks, final model, join) are
:func:`dpnbids.workflows.group_cv.init_group_cv_wf`; the plain-Python orchestration
that runs both is :mod:`dpnbids.group.level`.
"""
from __future__ import annotations

from nipype.pipeline import engine as pe

from dpnbids.interfaces import DerivativesSink, DualRegression


def init_dualreg_wf(config, runs, group_maps_file, std, out_dir=None, *,
                    name="dualreg_wf") -> pe.Workflow:
    """One dual-regression node per run (parallel under MultiProc/SLURM), with sinks.

    ``std`` holds the space entities (space, cohort, res) of the analysis grid; the sinks
    write under ``out_dir`` (the group run's staging subject tree; OUTPUT_DIR if None).
    """
    workflow = pe.Workflow(name=name, base_dir=str(config.execution.work_dir))
    out = str(out_dir or config.execution.output_dir)
    for i, run in enumerate(runs):
        source = run.source
        dual_regression = pe.Node(DualRegression(bold_file=str(run.denoised),
                                                 group_maps=str(group_maps_file),
                                                 mask_file=str(run.mask)),
                                  name=f"dual_regression_{i:03d}", mem_gb=2)
        ds_tc = pe.Node(DerivativesSink(output_dir=out, source_file=source,
                                        suffix="timeseries", extension=".tsv",
                                        entities={"desc": "stage1"}),
                        name=f"ds_stage1_{i:03d}", run_without_submitting=True)
        ds_pe = pe.Node(DerivativesSink(output_dir=out, source_file=source,
                                        suffix="components", entities={**std,
                                                                       "desc": "stage2pe"}),
                        name=f"ds_stage2pe_{i:03d}", run_without_submitting=True)
        ds_z = pe.Node(DerivativesSink(output_dir=out, source_file=source,
                                       suffix="components", entities={**std,
                                                                      "desc": "stage2z"}),
                       name=f"ds_stage2z_{i:03d}", run_without_submitting=True)
        workflow.connect([
            (dual_regression, ds_tc, [("timecourses", "in_file")]),
            (dual_regression, ds_pe, [("maps_pe", "in_file")]),
            (dual_regression, ds_z, [("maps_z", "in_file")]),
        ])
    return workflow
