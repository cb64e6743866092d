"""Group level: group ICA, dual regression (parallel nipype nodes), network
labels, component statistics, 3D-CNN cross-validation, final model, report.

Outputs go under ``OUTPUT_DIR/group/`` (non-BIDS, listed in .bidsignore) and,
for per-subject dual regression, into each ``sub-X/func`` folder with BIDS
derivative names.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from dpnbids.exceptions import DimensionError, InputError, WorkflowError
from dpnbids.interfaces import DerivativesSink, DualRegression
from dpnbids.workflows.outputs import res_label

LOGGER = logging.getLogger("dpnbids.group")

#: Which dual-regression output feeds the classifier: the stage-2 parameter
#: estimates ("pe"), as FSL randomise users do, because with --des_norm they
#: carry each subject's network amplitude; "z" would normalise it away.
CLASSIFIER_FEATURE = "pe"


def fit_group_ica(runs, mask, config):
    """Fit :class:`dpnbids.ica.GroupICA` on variance-normalised runs (MIGP, memory bounded)."""
    from dpnbids.group_pipeline import load_run_matrix
    from dpnbids.ica import GroupICA

    n_needed = config.ica.n_components
    for r in runs:
        n_t = nib.load(str(r.denoised)).shape[-1]
        if n_t < n_needed:
            raise DimensionError(
                f"{r.key} has {n_t} volumes but --n-components {config.ica.n_components} needs "
                f"at least {n_needed}; lower --n-components (and --pca-dim) or drop this run.")
    started = time.time()

    def loader(i):
        LOGGER.info("group ICA: loading %s (%d/%d)", runs[i].key, i + 1, len(runs))
        return load_run_matrix(runs[i].denoised, mask, normalise=False)  # GroupICA normalises

    ica = GroupICA(n_components=config.ica.n_components, pca_dim=config.ica.pca_dim,
                   n_repeats=config.ica.ica_repeats, random_state=config.seed("ica"))
    ica.fit(loader, len(runs), subject_ids=[r.key for r in runs])
    LOGGER.info("group ICA: %d components from %d runs in %.1f s", ica.components_.shape[0],
                len(runs), time.time() - started)
    return ica


def init_dualreg_wf(config, runs, group_maps_file, *, name="dualreg_wf") -> pe.Workflow:
    """One dual-regression node per run (parallel under MultiProc/SLURM), with sinks."""
    workflow = pe.Workflow(name=name, base_dir=str(config.execution.work_dir))
    std = {"space": config.preproc.output_space,
           "res": res_label(config.preproc.output_resolution)}
    out = str(config.execution.output_dir)
    for i, run in enumerate(runs):
        source = str(run.denoised).replace(
            f"_space-{std['space']}_res-{std['res']}_desc-denoised_bold", "_bold")
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


def run_dual_regression(config, runs, group_maps_file) -> list[dict]:
    """Run :func:`init_dualreg_wf`; return per-run dicts of written files."""
    from dpnbids.config import prepare_nipype

    logs = config.execution.output_dir / "logs"
    prepare_nipype(config)
    workflow = init_dualreg_wf(config, runs, group_maps_file)
    try:
        graph = workflow.run(plugin=config.execution.plugin,
                             plugin_args=config.execution.plugin_args)
    except RuntimeError as exc:
        raise WorkflowError(f"dual regression failed ({exc}); crash files are in {logs}") \
            from None
    results = {}
    for node in graph.nodes():
        if node.name.startswith("ds_stage"):
            idx = int(node.name.rsplit("_", 1)[1])
            kind = node.name.split("_")[1]
            results.setdefault(idx, {})[kind] = node.result.outputs.out_file
    return [results[i] for i in range(len(runs))]


def subject_maps(runs, dr_files, mask, feature=CLASSIFIER_FEATURE):
    """Average stage-2 maps over each subject's runs -> ({subject: (K, V)}, order)."""
    from dpnbids.group_pipeline import img_to_maps

    key = "stage2pe" if feature == "pe" else "stage2z"
    acc: dict[str, list] = {}
    for run, files in zip(runs, dr_files):
        acc.setdefault(run.subject, []).append(img_to_maps(nib.load(files[key]), mask))
    return {s: np.mean(v, axis=0).astype(np.float32) for s, v in acc.items()}


def gica1_maps(config, writer, runs, ica, mask, affine) -> dict:
    """GIFT GICA1 back-projection of every run; written as desc-gica1 derivatives."""
    from dpnbids.group_pipeline import load_run_matrix, maps_to_img

    std = {"space": config.preproc.output_space,
           "res": res_label(config.preproc.output_resolution)}
    acc: dict[str, list] = {}
    for run in runs:
        source = str(run.denoised).replace(
            f"_space-{std['space']}_res-{std['res']}_desc-denoised_bold", "_bold")
        maps_kv, tcs = ica.backproject_gica1(load_run_matrix(run.denoised, mask,
                                                             normalise=False))
        writer.write_nifti(maps_to_img(maps_kv, mask, affine),
                           writer.path(source=source, suffix="components",
                                       entities={**std, "desc": "gica1"}))
        cols = [f"component_{k:02d}" for k in range(maps_kv.shape[0])]
        writer.write_tsv(pd.DataFrame(tcs, columns=cols),
                         writer.path(source=source, suffix="timeseries", extension=".tsv",
                                     desc="gica1"))
        acc.setdefault(run.subject, []).append(maps_kv.astype(np.float32))
    return {s: np.mean(v, axis=0) for s, v in acc.items()}


def run_group_level(config, inputs, labels, writer) -> None:
    """The whole group level."""
    from dpnbids.group_pipeline import check_same_grid, find_participant_outputs, group_mask
    from dpnbids.networks import match_networks, network_templates
    from dpnbids.stats import compare_groups, component_summary

    space = config.preproc.output_space
    res = res_label(config.preproc.output_resolution)
    subjects = list(inputs)
    runs = find_participant_outputs(config.execution.output_dir, subjects,
                                    task=config.selection.task_id, space=space, res=res)
    shape, affine = check_same_grid(runs)
    mask = group_mask(runs, space=space, resolution=config.preproc.output_resolution)
    group_dir = config.execution.output_dir / "group"
    prefix = f"task-{config.selection.task_id}_space-{space}_res-{res}"

    # ---- group ICA
    ica = fit_group_ica(runs, mask, config)
    from dpnbids.group_pipeline import maps_to_img

    comps_file = group_dir / f"{prefix}_desc-ica_components.nii.gz"
    mask_file = group_dir / f"{prefix}_desc-ica_mask.nii.gz"
    writer.write_nifti(maps_to_img(ica.components_, mask, affine), comps_file)
    writer.write_nifti(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_file)
    mixing = pd.DataFrame(np.asarray(ica.mixing_),
                          columns=[f"component_{k:02d}" for k in range(ica.components_.shape[0])])
    writer.write_tsv(mixing, group_dir / f"{prefix}_desc-ica_mixing.tsv")

    # ---- network labels
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    templates_img, names = network_templates(ref)
    templates = np.asarray(templates_img.dataobj, dtype=np.float32)[mask].T
    table = match_networks(ica.components_, templates, names,
                           threshold_z=config.ica.component_threshold)
    table["stability"] = np.asarray(ica.stability_, dtype=float)

    # ---- subject maps: dual regression (parallel nodes) or GICA1 back-projection
    dr_files = run_dual_regression(config, runs, comps_file)
    if config.ica.back_projection == "gica1":
        maps = gica1_maps(config, writer, runs, ica, mask, affine)
    else:
        maps = subject_maps(runs, dr_files, mask)

    # ---- component statistics on all labelled subjects (descriptive)
    labelled = [s for s in subjects if labels.get(s) is not None]
    y = np.array([labels[s] for s in labelled], dtype=int)
    stack = np.stack([maps[s] for s in labelled])
    summaries = component_summary(stack, ica.components_,
                                  threshold_z=config.ica.component_threshold)
    stats = compare_groups(summaries, y)
    for col in ("t", "p", "r"):
        table[col] = stats[col].to_numpy()
    table["selected_descriptive_all_subjects"] = table["p"] < config.ica.ssc_p
    writer.write_tsv(table, group_dir / f"{prefix}_desc-ica_components.tsv")
    writer.write_json({
        "Description": "Group ICA components (z-scored maps, sign-flipped to positive peaks) "
                       "with network labels and responder vs non-responder statistics.",
        "selected_descriptive_all_subjects": "p < --ssc-p on ALL labelled subjects: "
        "descriptive only. Cross-validation selects components inside each training fold.",
        "summary": f"mean stage-2 {CLASSIFIER_FEATURE} value within the component's group map "
                   f"thresholded at z > {config.ica.component_threshold}",
        "n_components": int(ica.components_.shape[0]), "pca_dim": config.ica.pca_dim,
        "ica_repeats": config.ica.ica_repeats, "seed": config.seed("ica")},
        group_dir / f"{prefix}_desc-ica_components.json")

    # ---- classification
    from dpnbids.workflows.classify import run_classification

    run_classification(config, writer, runs=runs, labels=labels, subjects=labelled, y=y,
                       maps=maps, mask=mask, affine=affine, ica=ica, comps_file=comps_file,
                       mask_file=mask_file, components_table=table, group_dir=group_dir,
                       prefix=prefix)
