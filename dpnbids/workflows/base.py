"""Participant-level nipype workflows.

``init_dpnbids_wf`` holds one ``init_single_subject_wf`` per participant;
each subject has one anatomical workflow and one BOLD workflow per run
(every session and run of the task).  With ``--fmriprep-dir`` the BOLD
workflow starts from fMRIPrep's template-space series and confounds.  With
``--group-maps``/``--model`` each run is also dual-regressed (and, with
``--model``, scored).
"""
from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from dpnbids.exceptions import InputError, WorkflowError
from dpnbids.interfaces import (AnatPreproc, BoldToStd, ConfoundsDenoise, DerivativesSink,
                                DualRegression, PrepareBold)
from dpnbids.derivatives import res_label

LOGGER = logging.getLogger("dpnbids.workflows")


def check_participant_inputs(config, inputs) -> None:
    """Door checks of every BOLD run (and fMRIPrep files / model) before computing.

    Besides the images themselves, each run's temporal degrees of freedom after
    denoising (:mod:`dpnbids.preproc.dof`) are computed from its volume count,
    TR, band-pass, censoring and confounds, so a run that cannot be denoised
    (or dual-regressed against ``--group-maps``/``--model``) is refused here,
    in seconds, instead of failing after the compute.
    """
    from dpnbids import bids
    from dpnbids.preproc.checks import check_bold_has_signal, load_anat, load_bold
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
                check_bold_has_signal(run["bold"])
                _check_confound_columns(config, run["confounds"])
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


def fmriprep_run_tr(run: dict) -> float:
    """Repetition time of an fMRIPrep run: its JSON sidecar, else the NIfTI header."""
    import json

    import nibabel as nib

    from dpnbids.preproc.checks import TR_RANGE_S

    if run.get("bold_json"):
        meta = json.loads(Path(run["bold_json"]).read_text())
        if meta.get("RepetitionTime") is not None:
            from dpnbids.preproc.checks import sidecar_repetition_time

            return sidecar_repetition_time(meta["RepetitionTime"], name=Path(run["bold"]).name)
    tr = float(nib.load(run["bold"]).header["pixdim"][4])
    if not TR_RANGE_S[0] <= tr <= TR_RANGE_S[1]:
        raise InputError(f"{Path(run['bold']).name} has no RepetitionTime (no JSON sidecar "
                         f"and header pixdim[4] = {tr:g}); add the sidecar fMRIPrep wrote.")
    return tr


def fmriprep_run_dof(config, run: dict):
    """:class:`~dpnbids.preproc.dof.RunDof` of one fMRIPrep run, from its confounds."""
    from dpnbids.preproc.confounds import read_confounds
    from dpnbids.preproc.dof import run_dof
    from dpnbids.preproc.denoise import censor_mask

    pp = config.preproc
    confounds, _notes = read_confounds(run["confounds"], strategy=pp.denoise_strategy)
    meta = {}
    if run.get("confounds_json"):
        import json

        meta = json.loads(Path(run["confounds_json"]).read_text())
    try:
        censored = censor_mask(confounds, pp.fd_thresh)
    except InputError as exc:
        raise InputError(f"{run['confounds']}: {exc}") from None
    return run_dof(confounds, fmriprep_run_tr(run), strategy=pp.denoise_strategy,
                   high_pass=pp.high_pass, low_pass=pp.low_pass, confounds_meta=meta,
                   censored=censored)


def _check_dof(config, name: str, budget, n_maps: int | None) -> None:
    """Refuse a run whose denoised series keeps too few temporal degrees of freedom."""
    from dpnbids.preproc.dof import DUALREG_MARGIN, MIN_DOF

    pp = config.preproc
    need, why = MIN_DOF, "denoising"
    if n_maps is not None and n_maps + DUALREG_MARGIN > need:
        need, why = n_maps + DUALREG_MARGIN, (f"dual regression against the {n_maps} maps "
                                              "of --group-maps/--model")
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
            f"--fd-thresh {pp.fd_thresh:g}, leaving {kept}; at least --min-volumes "
            f"{pp.min_volumes} must remain. Raise --fd-thresh, lower --min-volumes, or "
            "exclude this run (--participant-label / --bids-filter-file).")
    raise InputError(
        f"{name}: {budget.describe(pp.denoise_strategy, pp.high_pass, pp.low_pass)} "
        f"temporal degrees of freedom; {why} needs at least {need}. Use a lighter "
        "--denoise-strategy (e.g. 'minimal': 6 regressors), a wider band (--low-pass 0 or "
        "--high-pass 0), " + ("a higher --fd-thresh, " if budget.n_censored else "")
        + "or exclude this run (--participant-label / --bids-filter-file).")


def _check_confound_columns(config, confounds_file) -> None:
    """The denoising strategy's columns are in an fMRIPrep confounds TSV (header only;
    derivative and squared columns that can be computed from their base count)."""
    from dpnbids.preproc.confounds import check_confounds_header

    check_confounds_header(confounds_file, config.preproc.denoise_strategy)


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
    for sub, sub_inputs in inputs.items():
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
    report = pe.Node(niu.Function(function=_subject_report,
                                  input_names=["subject", "output_dir", "runs", "anat",
                                               "space", "resolution"],
                                  output_names=["out_file"]),
                     name="subject_report", run_without_submitting=True, overwrite=True)
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
    summarise = pe.Node(niu.Function(function=_anat_summary,
                                     input_names=["t1w_std", "std_mask", "dice", "warnings",
                                                  "space", "resolution"],
                                     output_names=["summary"]),
                        name="summarise", run_without_submitting=True)
    summarise.inputs.space = space
    summarise.inputs.resolution = config.preproc.resolution_mm
    xfm_entities = pe.Node(niu.Function(function=_xfm_entities,
                                        input_names=["xfms", "space"],
                                        output_names=["entities"]),
                           name="xfm_entities", run_without_submitting=True)
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


def _res_meta(config, run: dict | None = None) -> dict:
    """``Resolution`` sidecar field of template-space outputs (built-in or fMRIPrep run)."""
    if run is None:
        mm = config.preproc.resolution_mm
        return {"Resolution": {res_label(mm): f"{mm:g} mm isotropic voxels on the "
                               f"{config.preproc.output_space} template grid"}}
    zooms = "x".join(f"{z:g}" for z in run["voxel_size"])
    shape = "x".join(str(n) for n in run["shape"])
    text = (f"{zooms} mm voxels, grid {shape}, as fMRIPrep wrote the "
            f"{run['entities']['space']} series")
    label = run["entities"].get("res")
    return {"Resolution": {label: text}} if label else {"VoxelSize": text}


def _bold_entities(config, run: dict | None = None) -> dict:
    """Space entities of a run's template-space outputs: the built-in grid's, or the
    fMRIPrep run's own (space, cohort and res exactly as fMRIPrep named them)."""
    if run is None:
        return {"space": config.preproc.output_space,
                "res": res_label(config.preproc.resolution_mm)}
    ents = run["entities"]
    return {"space": ents["space"], "cohort": ents.get("cohort"), "res": ents.get("res")}


def _bold_sinks(config, source, *, with_preproc: bool, run: dict | None = None):
    """Derivative sinks of one run; returns a dict of nodes keyed by output."""
    out = str(config.execution.output_dir)
    std = _bold_entities(config, run)
    space = std["space"]
    sinks = {}
    if with_preproc:
        sinks["preproc"] = pe.Node(DerivativesSink(
            output_dir=out, source_file=source, entities={**std, "desc": "preproc"},
            extension=".nii.gz"),
            name="ds_bold_preproc", run_without_submitting=True)
    sinks["mask"] = pe.Node(DerivativesSink(
        output_dir=out, source_file=source, suffix="mask", entities={**std, "desc": "brain"},
        metadata={"Type": "Brain", "SpatialReference": space, **_res_meta(config, run)}),
        name="ds_bold_mask", run_without_submitting=True)
    sinks["denoised"] = pe.Node(DerivativesSink(
        output_dir=out, source_file=source, entities={**std, "desc": "denoised"},
        extension=".nii.gz"),
        name="ds_bold_denoised", run_without_submitting=True)
    sinks["confounds"] = pe.Node(DerivativesSink(
        output_dir=out, source_file=source, suffix="timeseries", extension=".tsv",
        entities={"desc": "confounds"}), name="ds_confounds", run_without_submitting=True)
    sinks["confounds_json"] = pe.Node(DerivativesSink(
        output_dir=out, source_file=source, suffix="timeseries", extension=".json",
        entities={"desc": "confounds"}), name="ds_confounds_json",
        run_without_submitting=True)
    return sinks


def _bold_metadata(tr, space, skull_stripped, extra=None, coreg_costs=None, n_dummy=None):
    meta = {"RepetitionTime": float(tr), "SkullStripped": bool(skull_stripped),
            "SpatialReference": space}
    meta.update(extra or {})
    if coreg_costs:
        meta["CoregistrationCost"] = {k: float(v) for k, v in coreg_costs.items()}
    if n_dummy is not None:
        meta["NumberOfVolumesDiscardedByDpnbids"] = int(n_dummy)
    return meta


def _denoised_extra(config, run: dict | None = None) -> dict:
    """Sidecar fields of the denoised series, whichever preprocessing produced it."""
    return {**_res_meta(config, run), "SmoothingFWHM": config.preproc.smoothing_fwhm,
            "DenoiseStrategy": config.preproc.denoise_strategy,
            "BandPass": [config.preproc.high_pass, config.preproc.low_pass],
            "FramewiseDisplacementThreshold": config.preproc.fd_thresh,
            "Units": "percent signal change"}


def _run_summary_node():
    return pe.Node(niu.Function(function=_run_summary,
                                input_names=["bold_file", "prep", "geometry", "denoise",
                                             "denoised", "mask", "prediction"],
                                output_names=["summary"]),
                   name="run_summary", run_without_submitting=True)


def _connect_run_outputs(config, workflow, denoise, sinks, summary, outputnode, source,
                         run=None):
    """Denoising results -> derivative sinks -> run summary and outputs (+ dual
    regression and prediction with --group-maps/--model): shared by both BOLD paths."""
    workflow.connect([
        (denoise, sinks["denoised"], [("denoised", "in_file")]),
        (denoise, sinks["confounds"], [("confounds_tsv", "in_file")]),
        (denoise, sinks["confounds_json"], [("confounds_json", "in_file")]),
        (denoise, summary, [("motion_summary", "denoise")]),
        (sinks["denoised"], summary, [("out_file", "denoised")]),
        (sinks["mask"], summary, [("out_file", "mask")]),
        (sinks["denoised"], outputnode, [("out_file", "denoised")]),
        (sinks["mask"], outputnode, [("out_file", "mask")]),
        (summary, outputnode, [("summary", "summary")]),
    ])
    predict = _add_dualreg(config, workflow, source, sinks, run)
    if predict is not None:
        workflow.connect(predict, "out_file", summary, "prediction")


def init_bold_wf(config, bold_file, metadata, *, name="bold_wf") -> pe.Workflow:
    """Built-in BOLD preprocessing of one run.

    Non-steady-state removal -> slice timing -> head motion -> reference and mask
    -> MI coregistration -> one-shot resampling to template space -> confounds
    -> smoothing -> confound regression + band-pass.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_brain", "t1w_mask", "wm_probseg", "csf_probseg", "xfm_t1w_to_std", "t1w_std"]),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["denoised", "mask", "summary"]),
                         name="outputnode")
    nthreads = config.execution.omp_nthreads
    prepare_bold = pe.Node(PrepareBold(bold_file=bold_file, metadata=metadata,
                                       dummy_scans=config.preproc.dummy_scans,
                                       slice_order=config.preproc.slice_order,
                                       min_volumes=config.preproc.min_volumes),
                           name="prepare_bold", mem_gb=2)
    bold_to_std = pe.Node(BoldToStd(space=config.preproc.output_space,
                                    resolution=config.preproc.resolution_mm,
                                    omp_nthreads=nthreads, random_seed=config.seed("bold")),
                          name="bold_to_std", n_procs=nthreads, mem_gb=4)
    denoise = pe.Node(ConfoundsDenoise(smoothing_fwhm=config.preproc.smoothing_fwhm,
                                       strategy=config.preproc.denoise_strategy,
                                       high_pass=config.preproc.high_pass,
                                       low_pass=config.preproc.low_pass,
                                       fd_thresh=config.preproc.fd_thresh or 0.0),
                      name="confounds_denoise", mem_gb=4)
    meta = pe.Node(niu.Function(function=_bold_metadata,
                                input_names=["tr", "space", "skull_stripped", "extra",
                                             "coreg_costs", "n_dummy"],
                                output_names=["metadata"]), name="bold_meta",
                   run_without_submitting=True)
    meta.inputs.space = config.preproc.output_space
    meta.inputs.skull_stripped = False
    meta.inputs.extra = {"SliceTimingCorrected": bool(metadata.get("SliceTiming")
                                                      or config.preproc.slice_order),
                         **_res_meta(config)}
    meta_den = pe.Node(niu.Function(function=_bold_metadata,
                                    input_names=["tr", "space", "skull_stripped", "extra"],
                                    output_names=["metadata"]), name="denoised_meta",
                       run_without_submitting=True)
    meta_den.inputs.space = config.preproc.output_space
    meta_den.inputs.skull_stripped = True
    meta_den.inputs.extra = _denoised_extra(config)
    sinks = _bold_sinks(config, bold_file, with_preproc=True)
    summary = _run_summary_node()
    summary.inputs.bold_file = bold_file
    prep_dict = pe.Node(niu.Function(function=_as_dict,
                                     input_names=["n_dummy", "dummy_detected",
                                                  "slice_timing_applied", "skipped", "tr"],
                                     output_names=["out"]), name="prep_dict",
                        run_without_submitting=True)
    geo_dict = pe.Node(niu.Function(function=_geo_dict,
                                    input_names=["boldref_std", "coreg_costs", "warnings",
                                                 "boldref", "t1w_brain", "t1w_std",
                                                 "bold_std"],
                                    output_names=["out"]), name="geo_dict",
                       run_without_submitting=True)
    workflow.connect([
        (prepare_bold, bold_to_std, [("out_file", "bold_file"), ("tr", "tr")]),
        (inputnode, bold_to_std, [("t1w_brain", "t1w_brain"), ("t1w_mask", "t1w_mask"),
                                  ("wm_probseg", "wm_probseg"), ("csf_probseg", "csf_probseg"),
                                  ("xfm_t1w_to_std", "xfm_t1w_to_std")]),
        (bold_to_std, denoise, [("bold_std", "bold_std"), ("mask_std", "mask_std"),
                                ("motion_params", "motion_params"), ("wm_std", "wm_std"),
                                ("csf_std", "csf_std")]),
        (prepare_bold, denoise, [("tr", "tr")]),
        (prepare_bold, meta, [("tr", "tr"), ("n_dummy", "n_dummy")]),
        (bold_to_std, meta, [("coreg_costs", "coreg_costs")]),
        (prepare_bold, meta_den, [("tr", "tr")]),
        (bold_to_std, sinks["preproc"], [("bold_std", "in_file")]),
        (meta, sinks["preproc"], [("metadata", "metadata")]),
        (bold_to_std, sinks["mask"], [("mask_std", "in_file")]),
        (meta_den, sinks["denoised"], [("metadata", "metadata")]),
        (prepare_bold, prep_dict, [("n_dummy", "n_dummy"), ("dummy_detected", "dummy_detected"),
                                   ("slice_timing_applied", "slice_timing_applied"),
                                   ("skipped", "skipped"), ("tr", "tr")]),
        (bold_to_std, geo_dict, [("boldref_std", "boldref_std"), ("coreg_costs", "coreg_costs"),
                                 ("warnings", "warnings"), ("boldref", "boldref"),
                                 ("bold_std", "bold_std")]),
        (inputnode, geo_dict, [("t1w_brain", "t1w_brain"), ("t1w_std", "t1w_std")]),
        (prep_dict, summary, [("out", "prep")]),
        (geo_dict, summary, [("out", "geometry")]),
    ])
    _connect_run_outputs(config, workflow, denoise, sinks, summary, outputnode, bold_file)
    return workflow


def init_fmriprep_bold_wf(config, run: dict, *, name="bold_wf") -> pe.Workflow:
    """Smoothing and denoising of one fMRIPrep run (no built-in preprocessing)."""
    import json as _json

    workflow = pe.Workflow(name=name)
    outputnode = pe.Node(niu.IdentityInterface(fields=["denoised", "mask", "summary"]),
                         name="outputnode")
    meta = {}
    if run.get("bold_json"):
        meta = _json.loads(Path(run["bold_json"]).read_text())
    from dpnbids.preproc.checks import load_bold

    _img, tr = load_bold(run["bold"], sidecar=meta, min_volumes=config.preproc.min_volumes)
    denoise = pe.Node(ConfoundsDenoise(bold_std=run["bold"], mask_std=run["mask"], tr=tr,
                                       confounds_file=run["confounds"],
                                       smoothing_fwhm=config.preproc.smoothing_fwhm,
                                       strategy=config.preproc.denoise_strategy,
                                       high_pass=config.preproc.high_pass,
                                       low_pass=config.preproc.low_pass,
                                       fd_thresh=config.preproc.fd_thresh or 0.0),
                      name="confounds_denoise", mem_gb=4)
    source = _raw_like_source(run)
    sinks = _bold_sinks(config, source, with_preproc=False, run=run)
    sinks["mask"].inputs.in_file = run["mask"]
    budget = fmriprep_run_dof(config, run)
    sinks["denoised"].inputs.metadata = _bold_metadata(
        tr, run["entities"]["space"], True,
        {**_denoised_extra(config, run), **budget.as_dict(), "Sources": [str(run["bold"])]})
    summary = _run_summary_node()
    summary.inputs.bold_file = str(run["bold"])
    summary.inputs.prep = {"tr": tr, "skipped": ["built-in preprocessing: fMRIPrep input "
                                                 f"from {config.preproc.fmriprep_dir}"]}
    summary.inputs.geometry = {"boldref": run.get("boldref"), "t1w_brain": run.get("t1w_std"),
                               "warnings": []}
    _connect_run_outputs(config, workflow, denoise, sinks, summary, outputnode, source, run)
    return workflow


def _raw_like_source(run: dict) -> str:
    """A raw-like source name (sub/ses/task/run entities + bold) for an fMRIPrep run."""
    from dpnbids.derivatives import build_name

    ents = run["entities"]
    keep = {k: ents[k] for k in ("subject", "session", "task", "acquisition", "run")
            if ents.get(k) is not None}
    name = build_name(keep, "bold", ".nii.gz")
    return str(Path("func") / name)


def _add_dualreg(config, workflow, source, sinks, run=None):
    """Dual regression (and prediction) against --group-maps or --model.

    Reads the written denoised series and mask from their sinks (not from the
    outputnode, which also carries the summary that the prediction feeds).
    """
    maps = None
    if config.ica.group_maps is not None:
        maps = str(config.ica.group_maps)
    elif config.cnn.model is not None:
        from dpnbids.learn.bundle import load_bundle

        maps = str(load_bundle(config.cnn.model).group_maps_file)
    if maps is None:
        return None
    import nibabel as nib

    out = str(config.execution.output_dir)
    # the stage-2 maps are on the group maps' grid (a run on another grid is resampled)
    maps_mm = float(nib.affines.voxel_sizes(nib.load(maps).affine)[0])
    std = {**_bold_entities(config, run), "res": res_label(maps_mm)}
    dual_regression = pe.Node(DualRegression(group_maps=maps), name="dual_regression",
                              mem_gb=2)
    ds_tc = pe.Node(DerivativesSink(output_dir=out, source_file=source, suffix="timeseries",
                                    extension=".tsv", entities={"desc": "stage1"}),
                    name="ds_stage1", run_without_submitting=True)
    ds_pe = pe.Node(DerivativesSink(output_dir=out, source_file=source, suffix="components",
                                    entities={**std, "desc": "stage2pe"}),
                    name="ds_stage2_pe", run_without_submitting=True)
    ds_z = pe.Node(DerivativesSink(output_dir=out, source_file=source, suffix="components",
                                   entities={**std, "desc": "stage2z"}),
                   name="ds_stage2_z", run_without_submitting=True)
    workflow.connect([
        (sinks["denoised"], dual_regression, [("out_file", "bold_file")]),
        (sinks["mask"], dual_regression, [("out_file", "mask_file")]),
        (dual_regression, ds_tc, [("timecourses", "in_file")]),
        (dual_regression, ds_pe, [("maps_pe", "in_file")]),
        (dual_regression, ds_z, [("maps_z", "in_file")]),
    ])
    if config.cnn.model is not None:
        predict = pe.Node(niu.Function(function=_predict_node,
                                       input_names=["model_dir", "maps_pe", "maps_z",
                                                    "output_dir", "source"],
                                       output_names=["out_file"]),
                          name="predict", mem_gb=2)
        predict.inputs.model_dir = str(config.cnn.model)
        predict.inputs.output_dir = out
        predict.inputs.source = source
        workflow.connect([(ds_pe, predict, [("out_file", "maps_pe")]),
                          (ds_z, predict, [("out_file", "maps_z")])])
        return predict
    return None


def _predict_node(model_dir, maps_pe, maps_z, output_dir, source):
    from dpnbids.workflows.predict import predict_subject

    return predict_subject(model_dir, maps_pe, maps_z, output_dir, source)


def _as_dict(n_dummy, dummy_detected, slice_timing_applied, skipped, tr):
    return {"n_dummy": int(n_dummy), "dummy_detected": bool(dummy_detected),
            "slice_timing_applied": bool(slice_timing_applied), "skipped": list(skipped),
            "tr": float(tr)}


def _geo_dict(boldref_std, coreg_costs, warnings, boldref, t1w_brain, t1w_std, bold_std=None):
    return {"boldref_std": boldref_std, "coreg_costs": dict(coreg_costs),
            "warnings": list(warnings), "boldref": boldref, "t1w_brain": t1w_brain,
            "t1w_std": t1w_std, "bold_std": bold_std}


def _run_summary(bold_file, prep, geometry, denoise, denoised, mask, prediction=None):
    return {"bold_file": bold_file, "prep": prep, "geometry": geometry, "motion": denoise,
            "denoised": denoised, "mask": mask, "prediction": prediction}


def _subject_report(subject, output_dir, runs, anat, space, resolution):
    from dpnbids.workflows.reporting import write_subject_report

    return write_subject_report(subject, output_dir, runs, anat, space, resolution)


def run_participant_level(config, inputs, writer) -> None:
    """Build and run the participant workflow; name failed subjects on failure.

    ITK's thread count is pinned here, before any node runs: ITK reads it once per
    process, so nodes run in this process (Linear) and MultiProc workers (forked from a
    forkserver that inherits this environment) all start ITK with ``--omp-nthreads``.
    """
    from dpnbids.config import prepare_nipype
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
        workflow.run(plugin=config.execution.plugin, plugin_args=config.execution.plugin_args)
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
