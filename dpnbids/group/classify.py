"""Group-level classification: CNN nested CV per input set, baselines on the
same folds, metrics with bootstrap CIs and permutation p-values, the Table 2
layout, the final model bundle and the group report.

Leakage rules (the manual's cross-validation page): SSC components are selected on each
fold's outer-training subjects only (``select_fn``); ``--paper-faithful`` adds the paper's
procedure as the input set ``SSC-leaky``, labelled leaky everywhere; ``--ica-in-folds``
refits group ICA and dual regression on each fold's training runs; ``--covariates`` and
``--harmonize`` are fitted inside each fold node on its outer-training subjects.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

LOGGER = logging.getLogger(__name__)

LEAKY_SUFFIX = "-leaky"


def _model_params(config):
    """The VoxNet the configuration asks for (the command line's defaults)."""
    from dpnbids.learn.params import ModelParams

    return ModelParams(dropout=config.cnn.dropout, dense_units=config.cnn.dense_units,
                       learning_rate=config.cnn.learning_rate, epsilon=config.cnn.adam_epsilon,
                       weight_decay=config.cnn.weight_decay)


def _train_params(config):
    """The training the configuration asks for (the command line's defaults)."""
    from dpnbids.learn.params import TrainParams

    return TrainParams(epochs=config.cnn.epochs, batch_size=config.cnn.batch_size,
                       patience=config.cnn.patience, min_epochs=config.cnn.min_epochs,
                       inner_folds=config.cnn.inner_folds,
                       mixed_precision=config.cnn.mixed_precision,
                       monitor="val_auc" if config.cnn.early_stopping == "auc" else "val_loss",
                       augment=config.cnn.augment, balanced=config.cnn.class_balance)


def _maps_volume(maps_kv: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(S, K, V) in-mask maps -> (S, K, X, Y, Z) volumes."""
    out = np.zeros((maps_kv.shape[0], maps_kv.shape[1]) + mask.shape, dtype=np.float32)
    out[:, :, mask] = maps_kv
    return out


def build_map_features(maps: dict, subjects, mask, affine, voxel_size):
    """Stage-2 maps of ``subjects`` on the CNN grid: (S, X, Y, Z, K) and the grid affine."""
    from dpnbids.learn.model import resample_maps_to_grid

    stack = np.stack([maps[s] for s in subjects])  # (S, K, V)
    return resample_maps_to_grid(_maps_volume(stack, mask), affine, voxel_size, mask=mask)


def build_rsp_features(runs, subjects, mask, affine, voxel_size, n_volumes):
    """The first ``n_volumes`` denoised volumes of each subject's first run as channels."""
    from dpnbids.exceptions import DimensionError
    from dpnbids.learn.model import resample_maps_to_grid

    first = {}
    for r in runs:
        first.setdefault(r.subject, r)
    vols = []
    for s in subjects:
        img = nib.load(str(first[s].denoised))
        if img.shape[-1] < n_volumes:
            raise DimensionError(f"{first[s].key} has {img.shape[-1]} volumes but the RSP input "
                                 f"set uses {n_volumes}; lower `rsp_volumes`.")
        data = np.asarray(img.dataobj[..., :n_volumes], dtype=np.float32)
        vols.append(np.moveaxis(data, -1, 0) * mask[None])
    return resample_maps_to_grid(np.stack(vols), affine, voxel_size, mask=mask)


@dataclass(frozen=True)
class GroupICAResult:
    """What the group level hands to the classification: the fitted group ICA, each
    labelled subject's stage-2 maps, and where the group files were written."""

    runs: list
    labels: dict
    subjects: list
    y: np.ndarray
    maps: dict
    mask: np.ndarray
    affine: np.ndarray
    ica: object
    comps_file: Path
    mask_file: Path
    components_table: pd.DataFrame
    group_dir: Path
    grid: object = None
    space: str | None = None
    order: dict | None = None


@dataclass
class CrossValidation:
    """Everything the cross-validation of all input sets produced, in one place."""

    predictions: pd.DataFrame
    manifests: list
    histories: dict
    timings: dict
    permutations: dict
    saliency: dict | None = None
    confounds: pd.DataFrame | None = None


@dataclass(frozen=True)
class _InputSet:
    name: str
    features: str  # the key of its feature array: "ASC" (maps) or "RSP"
    selection: str = "all"  # "all", "in-fold" (SSC) or "leaky" (the paper's SSC)
    n_channels: int = 0


def run_classification(config, writer, res: GroupICAResult):
    """Everything after dual regression at the group level, as engine nodes: the outer folds
    of each input set, the permutation blocks and the final model
    (:func:`dpnbids.workflows.group_cv.init_group_cv_wf`), then the join's metrics, the
    saliency maps, the model bundle and the report into ``res.group_dir``."""
    from dpnbids.analysis.stats import component_summary
    from dpnbids.learn.jobs import write_job_inputs
    from dpnbids.learn.model import cnn_voxel_size
    from dpnbids.workflows import confounds

    voxel = cnn_voxel_size(config.cnn.cnn_voxel_size)
    subjects, y = list(res.subjects), np.asarray(res.y, dtype=int)
    table = confounds.group_confounds(config, res.runs, subjects)
    deconf = confounds.deconfounder(config, table)
    folds = _outer_folds(config, writer, subjects, y, res.group_dir / "cv",
                         confounds.group_folds(config, subjects, y, table))
    summaries = component_summary(np.stack([res.maps[s] for s in subjects]),
                                  res.ica.components_,
                                  threshold_z=config.ica.component_threshold)
    features, grid_affine, sets = _input_sets(config, res, voxel)
    folder = config.execution.work_dir / "group_cv_inputs"
    inputs = write_job_inputs(folder, features, subjects, y, summaries,
                              confounds=table if deconf is not None else None)
    del features
    strict = None
    if config.cnn.ica_in_folds:
        strict = _ica_in_folds(config, res.runs, subjects, y, folds, res.mask, res.affine,
                               voxel, res.ica.components_.shape[0])
    baselines = _confound_baselines(config, table, y, folds, folder)
    plan = _plan(config, sets, inputs, folds, strict, baselines)
    outputs = _run_group_cv(config, plan)
    cvs, tables = _collect(config, sets, outputs["pool"], writer, res.group_dir)
    cvs.confounds = table
    from dpnbids.workflows.saliency import write_group_saliency

    saliency = write_group_saliency(config, writer, res, cvs.saliency or {}, grid_affine)
    bundle_dir = _save_final_model(config, outputs.get("final"), tables, res, grid_affine,
                                   voxel, int(summaries.shape[1]))
    _group_report(config, res, cvs, tables, bundle_dir, saliency)
    print(tables["table2"].to_string())


def _outer_folds(config, writer, subjects, y, cv_dir, folds=None):
    """The seeded outer folds every input set and model shares (stratified, or the given
    leave-group-out ``folds``), and their files."""
    from dpnbids.learn.splits import check_no_leakage, make_outer_splits, splits_to_dataframe

    if folds is None:
        folds = make_outer_splits(subjects, y, n_folds=config.cnn.folds,
                                  n_repeats=config.cnn.cv_repeats,
                                  random_state=config.seed("cv.splits"))
    for fold in folds:
        check_no_leakage(fold)
    writer.write_tsv(splits_to_dataframe(folds), cv_dir / "splits.tsv")
    writer.write_json({"n_folds": len({(f.repeat, f.fold) for f in folds}),
                       "cv_repeats": config.cnn.cv_repeats, "scheme": config.cnn.cv_scheme,
                       "group_column": config.cnn.cv_group,
                       "stratified": config.cnn.cv_scheme == "stratified", "level": "subject",
                       "seed": config.seed("cv.splits")}, cv_dir / "splits.json")
    return folds


def _confound_baselines(config, table, y, folds, folder: Path) -> dict:
    """The confound-only baselines on the outer folds (cheap: one column each), run here
    and handed to the join: their predictions' file with its digest, and the permutation
    records of ``--n-permutations-baselines``."""
    import hashlib

    from dpnbids.config import derive_seed
    from dpnbids.derivatives import write_tsv
    from dpnbids.learn.splits import stratified_folds
    from dpnbids.learn.pooling import permutation_record
    from dpnbids.workflows.confounds import confound_cv

    seed = derive_seed(config.seed("cv.perm.splits"), 0, bits=32)
    preds, nulls = confound_cv(config, table, y, folds,
                               lambda y_perm: stratified_folds(y_perm, config.cnn.folds, seed))
    if not len(preds):
        return {}
    path = write_tsv(preds, folder / "confound_predictions.tsv")
    return {"predictions": str(path),
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "permutations": {k: permutation_record(o, n) for k, (o, n) in nulls.items()}}


def _input_sets(config, res: GroupICAResult, voxel):
    """The CNN-grid feature arrays ({"ASC": maps, "RSP": volumes}) and the requested input
    sets (name, feature array, where components are selected)."""
    subjects = list(res.subjects)
    features, grid_affine, sets = {}, None, []
    if any(s.startswith(("ASC", "SSC")) for s in config.cnn.input_sets):
        features["ASC"], grid_affine = build_map_features(res.maps, subjects, res.mask,
                                                          res.affine, voxel)
    for name in config.cnn.input_sets:
        if name == "ASC":
            sets.append(_InputSet("ASC", "ASC", "all", features["ASC"].shape[-1]))
        elif name == "SSC":
            sets.append(_InputSet("SSC", "ASC", "in-fold", features["ASC"].shape[-1]))
            if config.cnn.paper_faithful:
                sets.append(_InputSet("SSC" + LEAKY_SUFFIX, "ASC", "leaky",
                                      features["ASC"].shape[-1]))
        elif name == "RSP":
            features["RSP"], _ = build_rsp_features(res.runs, subjects, res.mask, res.affine,
                                                    voxel, config.cnn.rsp_volumes)
            sets.append(_InputSet("RSP", "RSP", "all", features["RSP"].shape[-1]))
    return features, grid_affine, sets


def _spec(config, item: _InputSet, kind: str) -> str:
    """The JSON settings of one input set's ``kind`` of node ("fold", "perm", "final"):
    only what that node uses, so changing e.g. --n-permutations reruns no fold node.
    ``deconfound``: the covariates and harmonize column every node fits in its folds."""
    from dpnbids.learn.model import cnn_voxel_size

    name = item.name
    deconfound = None
    if config.cnn.covariates or config.cnn.harmonize:
        deconfound = {"covariates": list(config.cnn.covariates or ()),
                      "harmonize": config.cnn.harmonize}
    spec = {"name": name, "selection": item.selection, "ssc_p": config.ica.ssc_p,
            "model_params": _model_params(config).to_mapping(),
            "train_params": _train_params(config).to_mapping(),
            "threshold_rule": config.cnn.threshold_rule, "deconfound": deconfound}
    if kind == "fold":
        spec.update(tune=config.cnn.tune, cv_seed=config.seed(f"cv.{name}"),
                    saliency={"method": config.cnn.saliency, "haufe": not name.startswith("RSP"),
                              "fwhm_mm": config.cnn.saliency_fwhm,
                              "voxel_mm": cnn_voxel_size(config.cnn.cnn_voxel_size)})
    elif kind == "perm":
        spec.update(n_folds=config.cnn.folds, n_permutations=config.cnn.n_permutations,
                    perm_seed=config.seed(f"perm.{name}"),
                    perm_splits_seed=config.seed("cv.perm.splits"),
                    perm_cv_seed=config.seed(f"cv.perm.{name}"),
                    # kernel-space permutations read the uncorrected maps: none when
                    # deconfounding (logged by _plan)
                    n_permutations_baselines=0 if deconfound else
                    config.cnn.n_permutations_baselines,
                    perm_linear_seed=config.seed(f"perm.linear.{name}"))
    else:
        spec.update(final_seed=config.seed("final"))
    return json.dumps(spec, sort_keys=True)


def _mem_gb(features: str) -> float:
    """A CNN node's memory: its features (loaded, selected and scaled copies) and TensorFlow."""
    from dpnbids.workflows.group_cv import CNN_BASE_GB

    return round(CNN_BASE_GB + 3 * Path(features).stat().st_size / 1e9, 1)


def _plan(config, sets, inputs: dict, folds, strict, baselines=None):
    """Every learning node of the group level: folds, permutation blocks, final model;
    ``baselines``: the confound-only baselines the join adds (:func:`_confound_baselines`)."""
    from dpnbids.learn.jobs import PERMUTATIONS_PER_BLOCK, fold_to_dict
    from dpnbids.workflows.group_cv import GroupPlan, Job, fold_node_name, node_label

    fold_jobs, perm_jobs, specs = [], [], []
    n_perm = int(config.cnn.n_permutations)
    n_blocks = -(-n_perm // PERMUTATIONS_PER_BLOCK)
    width = max(2, len(str(max(n_blocks - 1, 0))))
    for item in sets:
        features = inputs[item.features]
        mem, label = _mem_gb(features), node_label(item.name)
        spec = _spec(config, item, "fold")
        fold_jobs.extend(
            Job(fold_node_name(item.name, f.repeat, f.fold, config.cnn.cv_repeats), features,
                spec, mem, fold=json.dumps(fold_to_dict(f), sort_keys=True)) for f in folds)
        perm = _spec(config, item, "perm")
        specs.append({**json.loads(perm), "features": features, "cohort": inputs["cohort"],
                      "summaries": inputs["summaries"]})
        if n_perm:
            perm_jobs.append(Job(f"perm_{label}_observed", features, perm, mem, block=-1))
            perm_jobs.extend(Job(f"perm_{label}_block{b:0{width}d}", features, perm, mem,
                                 block=b) for b in range(n_blocks))
    final = None
    if "ASC" in inputs:
        item = next(i for i in sets if i.name == ("ASC" if "ASC" in config.cnn.input_sets
                                                  else "SSC"))
        final = Job(f"final_{node_label(item.name)}", inputs["ASC"],
                    _spec(config, item, "final"), _mem_gb(inputs["ASC"]))
    if config.cnn.n_permutations_baselines and (config.cnn.covariates or config.cnn.harmonize):
        LOGGER.info("no label permutations of the linear baselines with `covariates` or "
                    "`harmonize` (their kernel-space permutations read the uncorrected maps)")
    settings = json.dumps({"random_seed": config.random_seed,
                           "n_bootstrap": config.cnn.n_bootstrap,
                           "threshold_rule": config.cnn.threshold_rule, "sets": specs,
                           "confounds": baselines or {}},
                          sort_keys=True)
    return GroupPlan(cohort=inputs["cohort"], summaries=inputs["summaries"], folds=fold_jobs,
                     permutations=perm_jobs, final=final, settings=settings,
                     n_threads=int(config.execution.omp_nthreads),
                     node_plugin_args=dict(config.execution.node_plugin_args),
                     extra_predictions=strict and strict["predictions"],
                     extra_records=strict and strict["records"])


def _run_group_cv(config, plan) -> dict:
    """Run the learning workflow with the configured plugin; the join's folder and the
    final model's files."""
    from dpnbids.config import prepare_nipype, run_workflow
    from dpnbids.exceptions import WorkflowError
    from dpnbids.workflows.group_cv import init_group_cv_wf

    prepare_nipype(config)
    workflow = init_group_cv_wf(plan, config.execution.work_dir)
    LOGGER.info("group level: %d cross-validation, %d permutation and %d final-model nodes "
                "(%s)", len(plan.folds), len(plan.permutations), int(plan.final is not None),
                config.execution.plugin)
    try:
        graph = run_workflow(workflow, config)
    except RuntimeError as exc:
        raise WorkflowError(f"the group level's cross-validation failed ({exc}); crash files "
                            f"are in {config.execution.output_dir / 'logs'}") from None
    out = {}
    for node in graph.nodes():
        if node.name == "pool_results":
            out["pool"] = Path(node.result.outputs.out_dir)
        elif plan.final is not None and node.name == plan.final.name:
            out["final"] = node.result.outputs.get()
    return out


#: The join's files that are published as they are, under ``group/``.
POOLED_FILES = ("predictions.tsv", "learning_curves.tsv", "timings.json", "metrics.tsv",
                "metrics_ci.tsv", "table2.tsv", "permutation.tsv", "metrics.json")


def _collect(config, sets, pool: Path, writer, group_dir):
    """Publish the join's files into ``group_dir``; the pooled CV and tables for the report."""
    from dpnbids.learn.jobs import read_predictions

    for name in POOLED_FILES:
        if (pool / name).exists():
            writer.copy(pool / name, group_dir / name)
    manifests = json.loads((pool / "manifests.json").read_text())["manifests"]
    for m in manifests:
        name = (f"manifest_set-{m['input_set']}_repeat-{int(m.get('repeat', 0)):02d}"
                f"_fold-{int(m.get('fold', 0)):02d}.json")
        writer.write_json(m, group_dir / "cv" / name)
    histories = {tuple(k): h for k, h in
                 json.loads((pool / "histories.json").read_text())["histories"]}
    cvs = CrossValidation(read_predictions(pool / "predictions.tsv"), manifests, histories,
                          json.loads((pool / "timings.json").read_text()),
                          json.loads((pool / "permutations.json").read_text()),
                          _saliency(config, sets, pool))

    def table(name, **kw):
        return pd.read_csv(pool / name, sep="\t", na_values=["n/a"], **kw)

    tables = {"summary": table("metrics.tsv"), "ci": table("metrics_ci.tsv"),
              "table2": pd.read_csv(pool / "table2.tsv", sep="\t", index_col=0,
                                    keep_default_na=False),
              "perm": table("permutation.tsv") if (pool / "permutation.tsv").exists()
              else pd.DataFrame()}
    return cvs, tables


def _saliency(config, sets, pool: Path) -> dict:
    """One accumulator per input set, holding what its fold nodes attributed."""
    from dpnbids.workflows.saliency import make_accumulators

    accumulators = make_accumulators(config, {i.name: i.n_channels for i in sets})
    index = pool / "saliency.json"
    pooled = json.loads(index.read_text()) if index.exists() else {}
    for name, acc in accumulators.items():
        if name in pooled:
            acc.absorb(np.load(pool / pooled[name]["sum_abs"]), pooled[name])
    return accumulators


def _save_final_model(config, final, tables, res: GroupICAResult, grid_affine, voxel,
                      n_components):
    """The final model node's network, scaling and calibration as a bundle in group/model."""
    import keras

    from dpnbids import __version__
    from dpnbids.learn.bundle import Bundle, software_versions
    from dpnbids.learn.confounds import FoldDeconfounder
    from dpnbids.learn.jobs import load_final

    if final is None:
        LOGGER.info("no map-based input set requested: no final model saved")
        return None
    data = load_final(final["record"], final["support"], final.get("deconfound"))
    summary = tables["summary"]
    row = summary[(summary["input_set"] == data["input_set"]) & (summary["model"] == "cnn")]
    cv_metrics = {}
    if len(row):
        cv_metrics = {k: float(v) for k, v in row.iloc[0].items()
                      if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
    deconfounding = data["deconfounding"]
    # the bundle keeps its own copy of the maps so the model folder is self-contained
    bundle = Bundle(
        group_maps_file=Path(res.comps_file), mask_file=Path(res.mask_file),
        input_set=data["input_set"], feature="pe",
        space=res.space or config.preproc.output_space,
        resolution=(float(res.grid.voxel_mm[0]) if res.grid is not None
                    else config.preproc.resolution_mm),
        n_components=n_components, voxel_size=float(voxel),
        grid_shape=tuple(data["grid_shape"]), grid_affine=np.asarray(grid_affine),
        selected_components=data["channels"], scaling=data["scaling"],
        cv_metrics=cv_metrics, versions=software_versions(__version__),
        config=config.to_dict(), calibration=data["calibration"], history=data["history"],
        baseline=np.load(final["baseline"]),
        deconfounding=None if deconfounding is None else FoldDeconfounder.from_state(
            *deconfounding),
        network=keras.saving.load_model(final["model"], compile=False))
    path = bundle.save(res.group_dir / "model")
    LOGGER.info("final %s model saved in %s", data["input_set"], path)
    return path


def _group_report(config, res: GroupICAResult, cvs: CrossValidation, tables, bundle_dir,
                  saliency=None):
    from dpnbids.derivatives import atomic_write_text
    from dpnbids.learn.calibration import calibration_note
    from dpnbids.learn.confounds import confound_warnings
    from dpnbids.reports.group import render_group_report
    from dpnbids.reports.saliency import saliency_section
    from dpnbids.workflows.confounds import confound_section

    labels = res.labels
    info = {"n_responders": sum(1 for v in labels.values() if v == 1),
            "n_nonresponders": sum(1 for v in labels.values() if v == 0),
            "n_unlabelled": sum(1 for v in labels.values() if v is None),
            "n_components": int(res.ica.components_.shape[0]),
            "n_components_requested": config.ica.n_components,
            "pca_dim": config.ica.pca_dim,
            "analysis_grid": res.grid.reason if res.grid is not None else "",
            "ica_repeats": config.ica.ica_repeats, "folds": config.cnn.folds,
            "cv_repeats": config.cnn.cv_repeats, "epochs": config.cnn.epochs,
            "random_seed": config.random_seed,
            # where the model will be once the staged results are published
            "model_dir": str(config.execution.output_dir / "group" / "model")
            if bundle_dir else ""}
    warnings = confound_warnings(tables["summary"], tables["perm"], cvs.confounds)
    for w in warnings:
        LOGGER.warning("confound: %s", w)
    notes = []
    if config.cnn.covariates or config.cnn.harmonize:
        notes.append("Covariate removal and harmonisation were fitted on each outer training "
                     "fold and applied frozen to its test subjects (see each fold manifest's "
                     "'deconfounding').")
    if config.cnn.paper_faithful:
        notes.append("SSC-leaky reproduces the paper: components chosen on ALL subjects "
                     "before cross-validation. Its metrics are optimistic.")
    html = render_group_report(components_img=str(res.comps_file),
                               components_df=res.components_table, ica_info=info,
                               predictions_df=cvs.predictions, table2_df=tables["table2"],
                               metrics_df=tables["summary"], histories=cvs.histories,
                               permutation=cvs.permutations, leakage_notes=notes,
                               timings=cvs.timings, command_line=config.execution.command_line,
                               model_order=res.order,
                               saliency_html=saliency_section(saliency),
                               calibration_note=calibration_note(cvs.manifests),
                               confounds_html=confound_section(cvs.confounds, res.y, warnings),
                               confound_warnings=warnings)
    # staged with the rest of group/ and published with it (group.level)
    atomic_write_text(res.group_dir / "group.html", html)


def _ica_in_folds(config, runs, subjects, y, folds, mask, affine, voxel, n_components):
    """Strict mode: per outer fold, group ICA + dual regression on training runs only
    (serial, before the learning nodes); its predictions and manifests go to the join."""
    from dpnbids.learn import cv
    from dpnbids.analysis.dual_regression import dual_regression
    from dpnbids.analysis.masking import load_run_matrix
    from dpnbids.analysis.decomposition import GroupICA
    from dpnbids.learn.model import resample_maps_to_grid

    preds, manifests, timings = [], [], {}
    index = {s: i for i, s in enumerate(subjects)}
    started = time.time()
    for fold in folds:
        train = set(fold.train_ids) | set(fold.val_ids)
        train_runs = [r for r in runs if r.subject in train]
        ica = GroupICA(n_components=n_components, pca_dim=config.ica.pca_dim,
                       n_repeats=config.ica.ica_repeats,
                       random_state=config.seed(f"ica.fold{fold.repeat}.{fold.fold}"))
        ica.fit_arrays(lambda i: load_run_matrix(train_runs[i].denoised, mask),  # noqa: B023 - called within this iteration
                       len(train_runs))
        per_sub: dict[str, list] = {}
        for r in runs:
            if r.subject in index:
                res = dual_regression(load_run_matrix(r.denoised, mask, normalise=False),
                                      ica.components_)
                per_sub.setdefault(r.subject, []).append(res.maps)
        stack = np.stack([np.mean(per_sub[s], axis=0) for s in subjects])
        x, _ = resample_maps_to_grid(_maps_volume(stack, mask), affine, voxel, mask=mask)
        res = cv.run_nested_cv(x, y, subjects, [fold], input_set="ASC-icainfolds",
                               select_fn=None, model_params=_model_params(config),
                               train_params=_train_params(config), tune=config.cnn.tune,
                               threshold_rule=config.cnn.threshold_rule,
                               random_state=config.seed(f"cv.strict.{fold.repeat}.{fold.fold}"))
        p = res.predictions.copy()
        p["leaky"] = False
        preds.append(p)
        for m in res.manifests:
            m = dict(m)
            m["input_set"] = "ASC-icainfolds"
            m["ica_source"] = "refit on this fold's training subjects"
            manifests.append(m)
    timings["ASC-icainfolds"] = {"total_s": time.time() - started}
    from dpnbids.derivatives import write_json, write_tsv

    folder = config.execution.work_dir / "group_cv_inputs"
    return {"predictions": str(write_tsv(pd.concat(preds, ignore_index=True),
                                         folder / "strict_predictions.tsv")),
            "records": str(write_json({"manifests": manifests, "timings": timings},
                                      folder / "strict_records.json"))}
