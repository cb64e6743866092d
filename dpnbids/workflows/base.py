"""Participant-level nipype workflows: the input checks and the per-subject workflow.

``init_dpnbids_wf`` holds one ``init_single_subject_wf`` per participant;
each subject has one anatomical workflow (``init_anat_wf``) and one BOLD
workflow per run, every session and run of the task
(:mod:`dpnbids.workflows.bold`). ``run_participant_level`` checks the inputs,
runs the workflow on nipype's plugin and writes the subject reports.
"""
from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from dpnbids.exceptions import InputError, WorkflowError
from dpnbids.interfaces import AnatPreproc, DerivativesSink, function_node
from dpnbids.workflows.bold import init_bold_wf, init_fmriprep_bold_wf
from dpnbids.workflows.inputs import fmriprep_run_dof

LOGGER = logging.getLogger(__name__)


def check_participant_inputs(config, inputs) -> None:
    """Door checks of every BOLD run (and fMRIPrep files / model) before computing.

    Besides the images themselves, each run's temporal degrees of freedom after
    denoising (:mod:`dpnbids.preproc.dof`) are computed from its volume count,
    TR, band-pass, censoring and confounds, so a run that cannot be denoised
    (or dual-regressed against ``--group-maps``/``--model``) is refused here,
    in seconds, instead of failing after the compute.
    """
    from dpnbids import bids
    from dpnbids.preproc.checks import (check_confounds_table, check_preprocessed_bold,
                                        load_anat, load_bold)
    from dpnbids.preproc.dof import builtin_run_dof

    n_maps = _n_group_maps(config)
    for sub, sub_inputs in inputs.items():
        if config.preproc.fmriprep_dir is None:
            for bold in sub_inputs.bold:
                meta = bids.read_sidecar(bold, config.execution.bids_dir)
                img, tr = load_bold(bold, sidecar=meta, min_volumes=config.preproc.min_volumes
                                    + (config.preproc.dummy_scans or 0))
                pp = config.preproc
                budget = builtin_run_dof(img.shape[3], tr, strategy=pp.denoise_strategy,
                                         high_pass=pp.high_pass, low_pass=pp.low_pass,
                                         n_dummy=pp.dummy_scans or 0)
                _check_dof(config, Path(str(bold)).name, budget, n_maps)
                del img
            load_anat(sub_inputs.t1w)
        else:
            for run in _fmriprep_runs(config, sub, sub_inputs):
                rows = check_confounds_table(run["confounds"], config.preproc.denoise_strategy)
                check_preprocessed_bold(run["bold"], n_confound_rows=rows,
                                        min_volumes=config.preproc.min_volumes)
                _check_dof(config, Path(run["bold"]).name, fmriprep_run_dof(config, run),
                           n_maps)
    if config.cnn.model is not None:
        from dpnbids.learn.bundle import check_compatible, load_bundle

        from dpnbids.preproc.fmriprep import parse_space

        template, mods = parse_space(config.preproc.output_space)
        bundle = load_bundle(config.cnn.model)
        check_compatible(bundle, space=template + (f":cohort-{mods['cohort']}"
                                                   if mods.get("cohort") else ""),
                         resolution=_model_resolution(config))


def _model_resolution(config) -> float | None:
    """Analysis voxel size a --model must have been trained at: the built-in grid's, or
    an explicit --output-resolution; fMRIPrep runs on other grids are otherwise resampled
    onto the model's grid (as the group level did for its cohort)."""
    if config.preproc.fmriprep_dir is None:
        return config.preproc.resolution_mm
    try:
        return float(config.preproc.output_resolution)
    except (TypeError, ValueError):
        return None


def _n_group_maps(config) -> int | None:
    """Number of maps runs will be dual-regressed against (--group-maps/--model)."""
    import nibabel as nib

    if config.ica.group_maps is not None:
        shape = nib.load(str(config.ica.group_maps)).shape
        return int(shape[3]) if len(shape) == 4 else 1
    if config.cnn.model is not None:
        from dpnbids.learn.bundle import load_bundle

        return int(load_bundle(config.cnn.model).n_components)
    return None


def _check_dof(config, name: str, budget, n_maps: int | None) -> None:
    """Refuse a run whose denoised series keeps too few temporal degrees of freedom."""
    from dpnbids.preproc.dof import DUALREG_MARGIN, MIN_DOF

    pp = config.preproc
    need, why = MIN_DOF, "denoising"
    if n_maps is not None and n_maps + DUALREG_MARGIN > need:
        need, why = n_maps + DUALREG_MARGIN, (f"dual regression against the {n_maps} maps "
                                              "of `group_maps`/`model`")
    kept = budget.n_volumes - budget.n_censored
    if budget.dof >= need and kept >= pp.min_volumes:
        if budget.dof < 10:
            LOGGER.warning("%s: %s; group ICA will be limited to about %d components.",
                           name, budget.describe(pp.denoise_strategy, pp.high_pass,
                                                 pp.low_pass), budget.dof - DUALREG_MARGIN)
        return
    if kept < pp.min_volumes:
        raise InputError(
            f"{name}: {budget.n_censored} of {budget.n_volumes} volumes are censored by "
            f"`fd_thresh` {pp.fd_thresh:g}, leaving {kept}; at least `min_volumes` "
            f"{pp.min_volumes} must remain. Raise `fd_thresh`, lower `min_volumes`, or "
            "exclude this run (`participant_label` / `bids_filter_file`).")
    raise InputError(
        f"{name}: {budget.describe(pp.denoise_strategy, pp.high_pass, pp.low_pass)} "
        f"temporal degrees of freedom; {why} needs at least {need}. Use a lighter "
        "`denoise_strategy` (e.g. 'minimal': 6 regressors), a wider band (`low_pass` 0 or "
        "`high_pass` 0), " + ("a higher `fd_thresh`, " if budget.n_censored else "")
        + "or exclude this run (`participant_label` / `bids_filter_file`).")


def _fmriprep_runs(config, sub, sub_inputs) -> list[dict]:
    from dpnbids.preproc.fmriprep import find_fmriprep_inputs

    runs = find_fmriprep_inputs(config.preproc.fmriprep_dir, subject=sub,
                                task=config.selection.task_id,
                                space=config.preproc.output_space,
                                resolution=config.preproc.output_resolution,
                                session=list(config.selection.session_label)
                                if config.selection.session_label else None)
    if not runs:
        raise InputError(f"no fMRIPrep BOLD found for sub-{sub}, task "
                         f"{config.selection.task_id!r} in {config.preproc.fmriprep_dir}")
    return runs


def init_dpnbids_wf(config, inputs, *, name="dpnbids_wf") -> pe.Workflow:
    """Top-level participant workflow: one sub-workflow per subject."""
    workflow = pe.Workflow(name=name, base_dir=str(config.execution.work_dir))
    for sub_inputs in inputs.values():
        workflow.add_nodes([init_single_subject_wf(config, sub_inputs)])
    return workflow


def init_single_subject_wf(config, sub_inputs, *, name=None) -> pe.Workflow:
    """Anatomical + per-run BOLD workflows of one subject."""
    from dpnbids import bids

    sub = sub_inputs.subject
    workflow = pe.Workflow(name=name or f"sub_{sub}_wf")
    report_inputs = []
    anat_wf = None
    if config.preproc.fmriprep_dir is None:
        anat_wf = init_anat_wf(config, sub_inputs.t1w)
        workflow.add_nodes([anat_wf])
        runs = [{"bold": b, "metadata": bids.read_sidecar(b, config.execution.bids_dir)}
                for b in sub_inputs.bold]
    else:
        runs = _fmriprep_runs(config, sub, sub_inputs)
    for index, run in enumerate(runs):
        if config.preproc.fmriprep_dir is None:
            bold_wf = init_bold_wf(config, run["bold"], run["metadata"],
                                   name=f"bold_{index:02d}_wf")
            workflow.connect([(anat_wf, bold_wf, [
                ("outputnode.t1w_brain", "inputnode.t1w_brain"),
                ("outputnode.t1w_mask", "inputnode.t1w_mask"),
                ("outputnode.wm_probseg", "inputnode.wm_probseg"),
                ("outputnode.csf_probseg", "inputnode.csf_probseg"),
                ("outputnode.xfm_t1w_to_std", "inputnode.xfm_t1w_to_std"),
                ("outputnode.t1w_std", "inputnode.t1w_std")])])
        else:
            bold_wf = init_fmriprep_bold_wf(config, run, name=f"bold_{index:02d}_wf")
            workflow.add_nodes([bold_wf])
        report_inputs.append(bold_wf)
    report = function_node(_subject_report, "out_file", "subject_report", overwrite=True)
    report.inputs.subject = sub
    report.inputs.output_dir = str(config.execution.output_dir)
    report.inputs.space = config.preproc.output_space
    report.inputs.resolution = config.preproc.resolution_mm
    merge = pe.Node(niu.Merge(len(report_inputs)), name="merge_runs",
                    run_without_submitting=True)
    for i, bold_wf in enumerate(report_inputs, start=1):
        workflow.connect(bold_wf, "outputnode.summary", merge, f"in{i}")
    workflow.connect(merge, "out", report, "runs")
    if anat_wf is not None:
        workflow.connect(anat_wf, "outputnode.summary", report, "anat")
    else:
        report.inputs.anat = {}
    return workflow


def init_anat_wf(config, t1w_file, *, name="anat_wf") -> pe.Workflow:
    """N4, brain extraction, normalisation and tissue maps of one T1w.

    Outputs
    -------
    t1w_brain, t1w_mask, wm_probseg, csf_probseg : native T1w space
    t1w_std, xfm_t1w_to_std : template space image and ANTs transforms
    summary : dict for the report
    """
    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_brain", "t1w_mask", "wm_probseg", "csf_probseg", "t1w_std", "xfm_t1w_to_std",
        "summary"]), name="outputnode")
    anat_preproc = pe.Node(AnatPreproc(t1w_file=t1w_file, space=config.preproc.output_space,
                                       omp_nthreads=config.execution.omp_nthreads,
                                       random_seed=config.seed("anat")),
                           name="anat_preproc", n_procs=config.execution.omp_nthreads,
                           mem_gb=3)
    space = config.preproc.output_space
    out = str(config.execution.output_dir)
    ds_t1w_std = pe.Node(DerivativesSink(output_dir=out, source_file=t1w_file,
                                         entities={"space": space, "desc": "preproc"},
                                         metadata={"SkullStripped": False,
                                                   "SpatialReference": space}),
                         name="ds_t1w_std", run_without_submitting=True)
    ds_mask_std = pe.Node(DerivativesSink(output_dir=out, source_file=t1w_file, suffix="mask",
                                          entities={"space": space, "desc": "brain"},
                                          metadata={"Type": "Brain", "SpatialReference": space}),
                          name="ds_mask_std", run_without_submitting=True)
    ds_xfm = pe.MapNode(DerivativesSink(output_dir=out, source_file=t1w_file, suffix="xfm"),
                        iterfield=["in_file", "entities"], name="ds_xfm",
                        run_without_submitting=True)
    summarise = function_node(_anat_summary, "summary", "summarise")
    summarise.inputs.space = space
    summarise.inputs.resolution = config.preproc.resolution_mm
    xfm_entities = function_node(_xfm_entities, "entities", "xfm_entities")
    xfm_entities.inputs.space = space
    workflow.connect([
        (anat_preproc, outputnode, [("t1w_brain", "t1w_brain"), ("t1w_mask", "t1w_mask"),
                                    ("wm_probseg", "wm_probseg"),
                                    ("csf_probseg", "csf_probseg"), ("t1w_std", "t1w_std"),
                                    ("xfm_t1w_to_std", "xfm_t1w_to_std")]),
        (anat_preproc, ds_t1w_std, [("t1w_std", "in_file")]),
        (anat_preproc, ds_mask_std, [("std_mask", "in_file")]),
        (anat_preproc, ds_xfm, [("xfm_t1w_to_std", "in_file")]),
        (anat_preproc, xfm_entities, [("xfm_t1w_to_std", "xfms")]),
        (xfm_entities, ds_xfm, [("entities", "entities")]),
        (anat_preproc, summarise, [("t1w_std", "t1w_std"), ("std_mask", "std_mask"),
                                   ("dice_std_mask", "dice"), ("warnings", "warnings")]),
        (summarise, outputnode, [("summary", "summary")]),
    ])
    return workflow


def _xfm_entities(xfms, space):
    """Entities of each ANTs transform: the warp is mode-image, the affine desc-affine."""
    out = []
    for path in xfms:
        ents = {"from": "T1w", "to": space, "mode": "image"}
        if not str(path).endswith((".nii.gz", ".nii")):
            ents["desc"] = "affine"
        out.append(ents)
    return out


def _anat_summary(t1w_std, std_mask, dice, warnings, space, resolution):
    return {"t1w_std": t1w_std, "std_mask": std_mask, "dice_std_mask": float(dice),
            "warnings": list(warnings), "space": space, "resolution": resolution}


def _subject_report(subject, output_dir, runs, anat, space, resolution):
    from dpnbids.workflows.reporting import write_subject_report

    return write_subject_report(subject, output_dir, runs, anat, space, resolution)


def run_participant_level(config, inputs, writer) -> None:
    """Build and run the participant workflow; name failed subjects on failure.

    ITK's thread count is pinned here, before any node runs: ITK reads it once per
    process, so nodes run in this process (Linear) and MultiProc workers (forked from a
    forkserver that inherits this environment) all start ITK with ``--omp-nthreads``.
    """
    from dpnbids.config import prepare_nipype, run_workflow
    from dpnbids.preproc.itk import pin_itk_threads

    pin_itk_threads(config.execution.omp_nthreads)
    logs = config.execution.output_dir / "logs"
    prepare_nipype(config, {"stop_on_first_crash": config.execution.stop_on_first_crash,
                            "remove_unnecessary_outputs": False})
    workflow = init_dpnbids_wf(config, inputs)
    LOGGER.info("running participant level for %d subject(s) with the %s plugin",
                len(inputs), config.execution.plugin)
    before = set(logs.glob("crash-*"))
    try:
        run_workflow(workflow, config)
    except RuntimeError as exc:
        crashes = sorted(set(logs.glob("crash-*")) - before)
        raise WorkflowError(_describe_crashes(crashes, inputs) or str(exc)) from None


def _describe_crashes(crashes, inputs) -> str:
    failed = {}
    for crash in crashes:
        text = crash.read_text(errors="replace")
        sub = next((s for s in inputs if f"sub_{s}_wf" in text or f"sub-{s}" in text), "?")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Error" in ln), lines[-1] if lines else "")
        failed.setdefault(sub, []).append(f"{crash} ({reason[:300]})")
    if not failed:
        return ""
    parts = [f"sub-{s}: " + "; ".join(v) for s, v in sorted(failed.items())]
    return ("processing failed for " + ", ".join(f"sub-{s}" for s in sorted(failed)) +
            (" (the other subjects finished)" if [x for x in inputs if x not in failed] else "")
            + ". Crash files:\n  " + "\n  ".join(parts))
