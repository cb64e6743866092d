"""Group level: group ICA, dual regression (parallel nipype nodes), network
labels, component statistics, then the classification (:mod:`dpnbids.group.classify`).

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

from dpnbids.derivatives import sibling
from dpnbids.exceptions import DimensionError, InputError, WorkflowError
from dpnbids.publish import STAGING_PREFIX  # noqa: F401 - where tests and users look

LOGGER = logging.getLogger(__name__)

#: Which dual-regression output feeds the classifier: the stage-2 parameter
#: estimates ("pe"), as FSL randomise users do, because with --des_norm they
#: carry each subject's network amplitude; "z" would normalise it away.
CLASSIFIER_FEATURE = "pe"


def fit_group_ica(runs, mask, config, cap: int):
    """Fit :class:`dpnbids.analysis.decomposition.GroupICA` on variance-normalised runs (MIGP, memory bounded).

    With ``--n-components auto`` the model order is estimated while MIGP reads
    each run (:mod:`dpnbids.analysis.model_order`) and capped at ``cap``, the cohort's
    dual-regression limit (:func:`check_model_order`).
    """
    from dpnbids.analysis.masking import load_run_matrix
    from dpnbids.analysis.decomposition import GroupICA

    check_pca_dim(config, runs)
    started = time.time()

    def loader(i):
        LOGGER.info("group ICA: loading %s (%d/%d)", runs[i].key, i + 1, len(runs))
        return load_run_matrix(runs[i].denoised, mask, normalise=False)  # GroupICA normalises

    auto = config.ica.n_components == "auto"
    ica = GroupICA(n_components="auto" if auto else int(config.ica.n_components),
                   pca_dim=config.ica.pca_dim, n_repeats=config.ica.ica_repeats,
                   fun=config.ica.ica_contrast,
                   random_state=config.seed("ica"), dim_est=config.ica.dim_est,
                   max_components=cap if auto else None, mask=mask if auto else None)
    ica.fit_arrays(loader, len(runs), subject_ids=[r.key for r in runs])
    if auto:
        est = ica.order_estimate_
        LOGGER.info("model order (%s): %d components (estimate %.1f, cap %d)",
                    config.ica.dim_est, est.n_components, est.raw_n_components, est.cap)
    LOGGER.info("group ICA: %d components from %d runs in %.1f s", ica.components_.shape[0],
                len(runs), time.time() - started)
    return ica


def check_pca_dim(config, runs) -> None:
    """Every denoised run has at least --pca-dim volumes (headers only: a door check)."""
    lengths = {r.key: int(nib.load(str(r.denoised)).shape[-1]) for r in runs}
    short = min(lengths, key=lengths.get) if lengths else None
    if short is not None and lengths[short] < config.ica.pca_dim:
        n = lengths[short]
        raise DimensionError(
            f"`pca_dim` is {config.ica.pca_dim} but the denoised run "
            f"{short} has only {n} volumes; the group PCA keeps at most as many dimensions "
            f"as the shortest run has volumes. Give `pca_dim` {n} or less, or leave this "
            "run out (`participant_label`).")


def cohort_dof(config, runs) -> dict:
    """Temporal dof of every run (from confounds TSVs and sidecars, no image data)."""
    from dpnbids.workflows.inputs import run_dof_from_outputs

    return {r.key: run_dof_from_outputs(r, config) for r in runs}


def check_same_tr(dofs: dict) -> float:
    """Group ICA concatenates runs in time: they must share one repetition time."""
    trs = {k: round(d.tr, 4) for k, d in dofs.items()}
    values = sorted(set(trs.values()))
    if len(values) > 1:
        by_tr = {v: [k for k, t in trs.items() if t == v] for v in values}
        listing = "; ".join(f"TR {v:g} s: {', '.join(ks[:5])}" + (" ..." if len(ks) > 5 else "")
                            for v, ks in by_tr.items())
        raise InputError(
            f"the runs have different repetition times ({listing}). Group ICA concatenates "
            "runs in time and the band-pass keeps a different number of degrees of freedom "
            "at each TR, so they cannot be pooled. Run the group level on one TR at a time "
            "(`participant_label`), or resample the runs in time before dpnbids.")
    return values[0]


def check_model_order(config, runs, dofs: dict) -> int:
    """The ICA order cap of the cohort; refuses a fixed --n-components above it.

    With ``--back-projection gica1`` a fixed order above the cap is accepted
    (GICA1 needs no stage-1 time courses) and dual regression is skipped.
    """
    from dpnbids.preproc.dof import DUALREG_MARGIN, ica_order_cap

    cap = ica_order_cap(d.dof for d in dofs.values())
    worst = min(dofs, key=lambda k: dofs[k].dof)
    budget = dofs[worst].describe(config.preproc.denoise_strategy, config.preproc.high_pass,
                                  config.preproc.low_pass)
    k = config.ica.n_components
    if cap < 1:
        raise InputError(
            f"{worst} keeps {dofs[worst].dof} temporal degrees of freedom after denoising "
            f"({budget}); "
            f"dual regression needs at least {DUALREG_MARGIN + 1}. Exclude it "
            "(`participant_label`) or rerun the participant level with a lighter "
            "`denoise_strategy`.")
    if k != "auto" and int(k) > cap and config.ica.back_projection != "gica1":
        raise InputError(
            f"`n_components` {k} is more than the cohort's runs can be dual-regressed into: "
            f"{worst} keeps {dofs[worst].dof} temporal degrees of freedom after denoising "
            f"({budget}), "
            f"so at most {cap} components fit ({DUALREG_MARGIN} residual degrees of freedom "
            f"kept). Use `n_components` auto (the default), `n_components` {cap} or fewer, "
            "`back_projection` gica1, or longer runs.")
    return cap


def check_group_inputs(config, inputs) -> None:
    """Group-level checks before anything is written or any image is loaded."""
    from dpnbids.workflows.inputs import find_participant_outputs

    runs = find_participant_outputs(config.execution.output_dir, list(inputs),
                                    task=config.selection.task_id,
                                    space=config.preproc.output_space,
                                    resolution=config.preproc.output_resolution)
    dofs = cohort_dof(config, runs)
    check_same_tr(dofs)
    check_model_order(config, runs, dofs)
    check_pca_dim(config, runs)


def run_dual_regression(config, runs, group_maps_file, std, out_dir=None) -> list[dict]:
    """Run :func:`init_dualreg_wf`; return per-run dicts of written files."""
    from dpnbids.config import prepare_nipype, run_workflow
    from dpnbids.workflows.group import init_dualreg_wf

    logs = config.execution.output_dir / "logs"
    prepare_nipype(config)
    workflow = init_dualreg_wf(config, runs, group_maps_file, std, out_dir)
    try:
        graph = run_workflow(workflow, config)
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
    from dpnbids.analysis.masking import img_to_maps

    key = "stage2pe" if feature == "pe" else "stage2z"
    acc: dict[str, list] = {}
    for run, files in zip(runs, dr_files):
        acc.setdefault(run.subject, []).append(img_to_maps(nib.load(files[key]), mask))
    return {s: np.mean(v, axis=0).astype(np.float32) for s, v in acc.items()}


def gica1_maps(config, writer, runs, ica, mask, affine, std) -> dict:
    """GIFT GICA1 back-projection of every run; written as desc-gica1 derivatives."""
    from dpnbids.analysis.masking import load_run_matrix, maps_to_img

    acc: dict[str, list] = {}
    for run in runs:
        source = run.source
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
    """The whole group level as one transaction (:mod:`dpnbids.publish`): ``group/``,
    group.html and the per-subject dual-regression files change together, only when it
    completes. ``writer`` (OUTPUT_DIR's) is not written: the run writes into its staging."""
    import shutil

    from dpnbids.derivatives import DerivativesWriter
    from dpnbids.publish import recover_publish, staging_parts

    done = recover_publish(config.execution.output_dir)
    if done:
        LOGGER.warning("%s", done)
    staging = open_group_staging(config.execution.output_dir)
    group_dir, tree = staging_parts(staging)
    try:
        _group_level(config, inputs, labels, DerivativesWriter(tree), group_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_group_staging(staging, config.execution.output_dir)


def _group_level(config, inputs, labels, writer, group_dir: Path) -> None:
    """Group ICA, dual regression, statistics and classification into ``group_dir``;
    per-subject files through ``writer`` (the staging's subject tree)."""
    from dpnbids.analysis.masking import analysis_grid, group_mask, resample_runs
    from dpnbids.workflows.inputs import find_participant_outputs
    from dpnbids.analysis.networks import match_networks, network_templates
    from dpnbids.preproc.fmriprep import parse_space

    template, mods = parse_space(config.preproc.output_space)
    subjects = list(inputs)
    runs = find_participant_outputs(config.execution.output_dir, subjects,
                                    task=config.selection.task_id,
                                    space=config.preproc.output_space,
                                    resolution=config.preproc.output_resolution)
    dofs = cohort_dof(config, runs)
    check_same_tr(dofs)
    cap = check_model_order(config, runs, dofs)
    grid = analysis_grid(runs, mods.get("res") or config.preproc.output_resolution)
    LOGGER.info("analysis grid: %s", grid.reason)
    runs = resample_runs(runs, grid, config.execution.work_dir)
    shape, affine = grid.shape, grid.affine
    cohort = runs[0].extra.get("entities", {}).get("cohort")
    std = {"space": template, "cohort": cohort, "res": grid.res}
    space_text = template + (f":cohort-{cohort}" if cohort else "")
    mask = group_mask(runs, space=template if not cohort else None, resolution=grid.voxel_mm[0])
    prefix = f"task-{config.selection.task_id}_space-{template}" + (
        f"_cohort-{cohort}" if cohort else "") + f"_res-{grid.res}"

    # ---- model order and group ICA
    ica = fit_group_ica(runs, mask, config, cap)
    order, n_components = ica.order_estimate_, int(ica.n_components_)
    order_record = _order_record(config, order, n_components, cap, dofs)

    grid_meta = {"AnalysisGrid": grid.as_dict(), "SpatialReference": space_text,
                 "TemplateNote": _template_note(template)}
    comps_file, mask_file = _write_group_ica(writer, group_dir / prefix, ica, mask, affine,
                                             grid_meta)

    # ---- network labels
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    templates_img, names = network_templates(ref)
    templates = np.asarray(templates_img.dataobj, dtype=np.float32)[mask].T
    table = match_networks(ica.components_, templates, names,
                           threshold_z=config.ica.component_threshold)
    table["stability"] = np.asarray(ica.stability_, dtype=float)
    order_record["Warnings"] = _order_warnings(ica, order, len(names))

    # ---- subject maps: dual regression (parallel nodes) or GICA1 back-projection
    if config.ica.back_projection == "gica1" and n_components > cap:
        LOGGER.info("dual regression skipped: %d components exceed the %d the shortest run "
                    "can be dual-regressed into; GICA1 back-projection only", n_components, cap)
    else:
        dr_files = run_dual_regression(config, runs, comps_file, std, writer.output_dir)
    if config.ica.back_projection == "gica1":
        maps = gica1_maps(config, writer, runs, ica, mask, affine, std)
    else:
        maps = subject_maps(runs, dr_files, mask)

    # ---- component statistics on all labelled subjects (descriptive)
    labelled = [s for s in subjects if labels.get(s) is not None]
    y = np.array([labels[s] for s in labelled], dtype=int)
    _component_statistics(config, table, np.stack([maps[s] for s in labelled]), y, ica)
    writer.write_tsv(table, group_dir / f"{prefix}_desc-ica_components.tsv")
    writer.write_json(_components_sidecar(config, ica, order_record, grid_meta, template),
                      group_dir / f"{prefix}_desc-ica_components.json")

    # ---- classification
    from dpnbids.group.classify import GroupICAResult, run_classification

    run_classification(config, writer, GroupICAResult(
        runs=runs, labels=labels, subjects=list(labelled), y=y, maps=maps, mask=mask,
        affine=affine, ica=ica, comps_file=comps_file, mask_file=mask_file,
        components_table=table, group_dir=group_dir, grid=grid, space=space_text,
        order=order_record))


def _write_group_ica(writer, stem: Path, ica, mask, affine, grid_meta: dict):
    """The group maps, their mask (with its sidecar) and the mixing matrix."""
    from dpnbids.analysis.masking import maps_to_img

    comps_file = stem.with_name(f"{stem.name}_desc-ica_components.nii.gz")
    mask_file = stem.with_name(f"{stem.name}_desc-ica_mask.nii.gz")
    writer.write_nifti(maps_to_img(ica.components_, mask, affine), comps_file)
    writer.write_nifti(nib.Nifti1Image(mask.astype(np.uint8), affine), mask_file)
    writer.write_json({"Description": "Group brain mask of the ICA (voxels inside the brain "
                                      "mask of at least 90% of the runs).", **grid_meta},
                      sibling(mask_file, extension=".json"))
    mixing = pd.DataFrame(np.asarray(ica.mixing_),
                          columns=[f"component_{k:02d}" for k in range(ica.components_.shape[0])])
    writer.write_tsv(mixing, sibling(comps_file, suffix="mixing", extension=".tsv"))
    return comps_file, mask_file


def _components_sidecar(config, ica, order_record, grid_meta, template) -> dict:
    """The JSON sidecar of the components table."""
    return {
        "Description": "Group ICA components (z-scored maps, sign-flipped to positive peaks) "
                       "with network labels and responder vs non-responder statistics.",
        "selected_descriptive_all_subjects": "p < --ssc-p on ALL labelled subjects: "
        "descriptive only. Cross-validation selects components inside each training fold.",
        "summary": f"mean stage-2 {CLASSIFIER_FEATURE} value within the component's group map "
                   f"thresholded at z > {config.ica.component_threshold}",
        "n_components": int(ica.components_.shape[0]), "pca_dim": config.ica.pca_dim,
        "ica_repeats": config.ica.ica_repeats, "ica_contrast": config.ica.ica_contrast,
        "seed": config.seed("ica"),
        "ModelOrder": order_record,
        "NetworkLabels": "Seitzman et al. (2018) network coordinates in MNI space, rendered "
                         f"on this grid; {_template_note(template)}",
        **grid_meta}


def _component_statistics(config, table, stack, y, ica) -> None:
    """Responder vs non-responder t, p, r of each component's summary, into ``table``
    (all labelled subjects: descriptive; the CV selects inside its folds)."""
    from dpnbids.analysis.stats import compare_groups, component_summary

    summaries = component_summary(stack, ica.components_,
                                  threshold_z=config.ica.component_threshold)
    stats = compare_groups(summaries, y)
    for col in ("t", "p", "r"):
        table[col] = stats[col].to_numpy()
    table["selected_descriptive_all_subjects"] = table["p"] < config.ica.ssc_p


def open_group_staging(output_dir: Path) -> Path:
    """A fresh staging folder for this run (see :mod:`dpnbids.publish`)."""
    from dpnbids.publish import open_staging

    return open_staging(output_dir)


def publish_group_staging(staging: Path, output_dir: Path) -> Path:
    """Publish group/, group.html and the per-subject files of a complete run together."""
    from dpnbids.publish import publish_staging

    return publish_staging(staging, output_dir)


def _template_note(template: str) -> str:
    if template.startswith("MNI152") or template.startswith("MNI"):
        return (f"{template} is an MNI152 variant: MNI coordinates (network labels, report "
                "backgrounds) hold for it to within a few millimetres")
    return (f"{template} is not an MNI152 variant: MNI-coordinate network labels are only "
            "indicative")


def _order_warnings(ica, order, n_expected: int) -> list:
    """The group ICA's warnings (capped estimate, unstable components) and, beside them,
    whether the data support fewer components than the reference networks; each is logged."""
    from dpnbids.analysis.group_order import order_warnings

    texts = list(getattr(ica, "warnings_", []))
    texts += order_warnings(int(ica.n_components_), estimate=order, expected=n_expected)
    texts = list(dict.fromkeys(texts))
    for text in texts:
        LOGGER.warning("group ICA: %s", text)
    return texts


def _order_record(config, order, n_components, cap, dofs) -> dict:
    """What the components JSON says about how the number of components was chosen."""
    dof_values = [d.dof for d in dofs.values()]
    record = {"NumberOfComponents": int(n_components),
              "Requested": config.ica.n_components,
              "Cap": int(cap),
              "CapReason": "smallest run's temporal degrees of freedom after denoising "
                           f"({min(dof_values)}) minus 2 residual degrees of freedom of the "
                           "dual-regression stage 2",
              "PCADimension": config.ica.pca_dim,
              "RunTemporalDegreesOfFreedom": {k: int(d.dof) for k, d in dofs.items()}}
    if order is not None:
        record.update({
            "Method": config.ica.dim_est,
            "MethodDescription": {"pooled": "eigenvalues of all runs, whitened in time and "
                                            "pooled, above a parallel-analysis noise bulk with "
                                            "the data's spatial smoothness",
                                  "lap": "Laplace approximation of the PPCA evidence (Minka "
                                         "2000; MELODIC's default)",
                                  "mdl": "minimum description length (Li et al. 2007; GIFT)",
                                  "aic": "Akaike information criterion",
                                  "bic": "Bayesian information criterion (Minka 2000)"}[
                                      config.ica.dim_est],
            "Estimate": float(order.raw_n_components),
            "Capped": bool(order.capped),
            "EstimateCap": int(order.cap),
            "RunEstimates": [int(k) for k in order.subject_n_components],
            "RunEffectiveSamples": [float(v) for v in order.n_eff],
            "Spectrum": [float(v) for v in order.spectrum],
            "Criterion": [float(v) for v in order.criterion]})
    return record
