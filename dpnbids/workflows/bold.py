"""Participant-level BOLD workflows: one run, from raw BIDS or from fMRIPrep.

``init_bold_wf`` preprocesses a raw run (non-steady states, slice timing,
head motion, coregistration, normalisation, denoising);
``init_fmriprep_bold_wf`` starts from fMRIPrep's template-space series and
confounds. With ``--group-maps``/``--model`` each run is also dual-regressed
(and, with ``--model``, scored). Every output goes through a
``DerivativesSink`` (:mod:`dpnbids.derivatives`).
"""
from __future__ import annotations

import logging
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from dpnbids.derivatives import res_label
from dpnbids.interfaces import (BoldToStd, ConfoundsDenoise, DerivativesSink, DualRegression,
                                PrepareBold, function_node)
from dpnbids.workflows.inputs import fmriprep_run_dof

LOGGER = logging.getLogger(__name__)


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


def _denoise_node(config, **inputs):
    """Smoothing, confound regression and band-pass as ``--denoise-strategy`` etc. say."""
    pp = config.preproc
    return pe.Node(ConfoundsDenoise(smoothing_fwhm=pp.smoothing_fwhm,
                                    strategy=pp.denoise_strategy, high_pass=pp.high_pass,
                                    low_pass=pp.low_pass, fd_thresh=pp.fd_thresh or 0.0,
                                    **inputs), name="confounds_denoise", mem_gb=4)


def _run_summary_node():
    return function_node(_run_summary, "summary", "run_summary")


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
    denoise = _denoise_node(config)
    meta = function_node(_bold_metadata, "metadata", "bold_meta")
    meta.inputs.space = config.preproc.output_space
    meta.inputs.skull_stripped = False
    meta.inputs.extra = {"SliceTimingCorrected": bool(metadata.get("SliceTiming")
                                                      or config.preproc.slice_order),
                         **_res_meta(config)}
    meta_den = function_node(_bold_metadata, "metadata", "denoised_meta")
    meta_den.inputs.space = config.preproc.output_space
    meta_den.inputs.skull_stripped = True
    meta_den.inputs.extra = _denoised_extra(config)
    sinks = _bold_sinks(config, bold_file, with_preproc=True)
    summary = _run_summary_node()
    summary.inputs.bold_file = bold_file
    prep_dict = function_node(_as_dict, "out", "prep_dict")
    geo_dict = function_node(_geo_dict, "out", "geo_dict")
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
    import nibabel as nib

    from dpnbids.preproc.checks import repetition_time

    # the door read and checked the whole image (check_participant_inputs): the header is
    # enough here, so building one subject's workflow costs milliseconds, not a full read
    tr = repetition_time(nib.load(str(run["bold"])), meta, name=Path(run["bold"]).name)
    denoise = _denoise_node(config, bold_std=run["bold"], mask_std=run["mask"], tr=tr,
                            confounds_file=run["confounds"])
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
        predict = function_node(_predict_node, "out_file", "predict", mem_gb=2, run_without_submitting=False)
        predict.inputs.model_dir = str(config.cnn.model)
        predict.inputs.output_dir = out
        predict.inputs.source = source
        predict.inputs.saliency = config.cnn.saliency
        predict.inputs.bids_dir = str(config.execution.bids_dir)
        workflow.connect([(ds_pe, predict, [("out_file", "maps_pe")]),
                          (ds_z, predict, [("out_file", "maps_z")])])
        return predict
    return None


def _predict_node(model_dir, maps_pe, maps_z, output_dir, source, saliency, bids_dir):
    from dpnbids.workflows.predict import predict_subject

    return predict_subject(model_dir, maps_pe, maps_z, output_dir, source, saliency,
                           bids_dir)


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
