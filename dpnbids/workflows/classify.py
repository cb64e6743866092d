"""Group-level classification: CNN nested CV per input set, baselines on the
same folds, metrics with bootstrap CIs and permutation p-values, the Table 2
layout, the final model bundle and the group report.

Leakage rules (the manual's cross-validation page): SSC components are selected on each
fold's outer-training subjects only (``select_fn``); ``--paper-faithful`` adds the paper's
procedure as the input set ``SSC-leaky``, labelled leaky everywhere; ``--ica-in-folds``
refits group ICA and dual regression on each fold's training runs.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

LOGGER = logging.getLogger(__name__)

LEAKY_SUFFIX = "-leaky"


def _model_params(config) -> dict:
    return {"dropout": config.cnn.dropout, "dense_units": config.cnn.dense_units,
            "learning_rate": config.cnn.learning_rate, "epsilon": config.cnn.adam_epsilon,
            "weight_decay": config.cnn.weight_decay}


def _train_params(config) -> dict:
    return {"epochs": config.cnn.epochs, "batch_size": config.cnn.batch_size,
            "patience": config.cnn.patience, "min_epochs": config.cnn.min_epochs,
            "inner_folds": config.cnn.inner_folds,
            "mixed_precision": config.cnn.mixed_precision,
            "monitor": "val_auc" if config.cnn.early_stopping == "auc" else "val_loss",
            "augment": config.cnn.augment, "balanced": config.cnn.class_balance}


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
                                 f"set uses {n_volumes}; lower --rsp-volumes.")
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


@dataclass(frozen=True)
class _FinalModelInputs:
    """The cross-validated features and summaries the final model is trained on."""

    features: dict
    summaries: np.ndarray
    y: np.ndarray
    grid_affine: np.ndarray
    tables: dict
    voxel: float
    space: str
    resolution: float
    deconf: object = None


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
    features: np.ndarray
    select_fn: object = None


def run_classification(config, writer, res: GroupICAResult):
    """Everything after dual regression at the group level: outer folds, the CV of each
    input set (and of the strict ICA-in-folds mode), metrics, the final model, the report."""
    from dpnbids.learn.model import cnn_voxel_size
    from dpnbids.analysis.stats import component_summary

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
    features, grid_affine, sets = _input_sets(config, res, summaries, voxel, deconf)
    cvs = _cross_validate(config, sets, y, subjects, folds, summaries, deconf)
    _confound_baselines(config, cvs, table, y, folds)
    from dpnbids.workflows.saliency import write_group_saliency

    saliency = write_group_saliency(config, writer, res, cvs.saliency or {}, grid_affine)
    if config.cnn.ica_in_folds:
        strict = _ica_in_folds(config, res.runs, subjects, y, folds, res.mask, res.affine,
                               voxel, res.ica.components_.shape[0])
        cvs.predictions = pd.concat([cvs.predictions, strict["predictions"]],
                                    ignore_index=True)
        cvs.manifests.extend(strict["manifests"])
        cvs.timings.update(strict["timings"])
    _write_cv(writer, cvs, res.group_dir)
    tables = _metrics(config, cvs.predictions, cvs.permutations, writer, res.group_dir)
    writer.write_json(cvs.timings, res.group_dir / "timings.json")
    final = _FinalModelInputs(
        features, summaries, y, grid_affine, tables, voxel,
        space=res.space or config.preproc.output_space,
        resolution=(float(res.grid.voxel_mm[0]) if res.grid is not None
                    else config.preproc.resolution_mm), deconf=deconf)
    bundle_dir = _final_model(config, final, res)
    _group_report(config, res, cvs, tables, bundle_dir, saliency)
    print(tables["table2"].to_string())


def _outer_folds(config, writer, subjects, y, cv_dir, folds=None):
    """The seeded outer folds every input set and model shares (stratified, or the given
    leave-group-out ``folds``), and their files."""
    from dpnbids.learn import cv

    if folds is None:
        folds = cv.make_outer_splits(subjects, y, n_folds=config.cnn.folds,
                                     n_repeats=config.cnn.cv_repeats,
                                     random_state=config.seed("cv.splits"))
    for fold in folds:
        cv.check_no_leakage(fold)
    writer.write_tsv(cv.splits_to_dataframe(folds), cv_dir / "splits.tsv")
    writer.write_json({"n_folds": len({(f.repeat, f.fold) for f in folds}),
                       "cv_repeats": config.cnn.cv_repeats, "scheme": config.cnn.cv_scheme,
                       "group_column": config.cnn.cv_group,
                       "stratified": config.cnn.cv_scheme == "stratified", "level": "subject",
                       "seed": config.seed("cv.splits")}, cv_dir / "splits.json")
    return folds


def _confound_baselines(config, cvs: CrossValidation, table, y, folds) -> None:
    """The confound-only baselines on the outer folds, into ``cvs``; their warnings logged."""
    from dpnbids.learn.cv import stratified_folds
    from dpnbids.config import derive_seed
    from dpnbids.workflows.confounds import confound_cv

    seed = derive_seed(config.seed("cv.perm.splits"), 0, bits=32)
    preds, nulls = confound_cv(config, table, y, folds,
                               lambda y_perm: stratified_folds(y_perm, config.cnn.folds, seed))
    cvs.confounds = table
    if len(preds):
        cvs.predictions = pd.concat([cvs.predictions, preds], ignore_index=True)
    cvs.permutations.update({k: _permutation_record(o, n, STATISTIC)
                             for k, (o, n) in nulls.items()})


def _input_sets(config, res: GroupICAResult, summaries, voxel, deconf=None):
    """The requested input sets as (name, CNN-grid features, in-fold selection); with
    ``deconf``, SSC selection reads summaries deconfounded on the training subjects."""
    from dpnbids.analysis.stats import select_components

    subjects, y = list(res.subjects), np.asarray(res.y, dtype=int)

    def ssc_select(train_idx):
        s = summaries if deconf is None else deconf.fit_apply_2d(summaries, train_idx)
        return select_components(s, y, p_threshold=config.ica.ssc_p,
                                 subjects_idx=np.asarray(train_idx))

    features, grid_affine, sets = {}, None, []
    if any(s.startswith(("ASC", "SSC")) for s in config.cnn.input_sets):
        features["ASC"], grid_affine = build_map_features(res.maps, subjects, res.mask,
                                                          res.affine, voxel)
    for name in config.cnn.input_sets:
        if name == "ASC":
            sets.append(_InputSet("ASC", features["ASC"]))
        elif name == "SSC":
            sets.append(_InputSet("SSC", features["ASC"], ssc_select))
            if config.cnn.paper_faithful:
                leaky = np.asarray(select_components(summaries, y,
                                                     p_threshold=config.ica.ssc_p))
                sets.append(_InputSet("SSC" + LEAKY_SUFFIX, features["ASC"],
                                      lambda idx, _l=leaky: _l))
        elif name == "RSP":
            x_rsp, _ = build_rsp_features(res.runs, subjects, res.mask, res.affine, voxel,
                                          config.cnn.rsp_volumes)
            sets.append(_InputSet("RSP", x_rsp))
    return features, grid_affine, sets


def _cross_validate(config, sets, y, subjects, folds, summaries,
                    deconf=None) -> CrossValidation:
    """The nested CV of every input set on the same folds (and its permutation test)."""
    from dpnbids.learn.linear import GramCache
    from dpnbids.workflows.saliency import make_accumulators

    out = CrossValidation(pd.DataFrame(), [], {}, {}, {}, make_accumulators(config, sets))
    preds = []
    for item in sets:
        name, x = item.name, item.features
        LOGGER.info("cross-validation of input set %s: %d subjects, %d folds x %d repeats, "
                    "input %s", name, len(subjects), config.cnn.folds, config.cnn.cv_repeats,
                    tuple(x.shape[1:]))
        started = time.time()
        # the baselines' kernels: their CV and their permutations (per fold when deconfounded)
        gram = GramCache(x) if deconf is None else None
        result = _run_cv(config, x, y, subjects, folds, name, item.select_fn,
                         on_fold=out.saliency.get(name), gram=gram, deconf=deconf)
        out.timings[name] = {"total_s": time.time() - started, **result.timings}
        if name in out.saliency:  # attribution time, included in total_s
            out.timings[name]["saliency_s"] = out.saliency[name].seconds_
        p = result.predictions.copy()
        p["leaky"] = name.endswith(LEAKY_SUFFIX)
        preds.append(p)
        for m in result.manifests:
            out.manifests.append({**m, "input_set": name,
                                  "ica_source": "all subjects (group level; labels unused)",
                                  "leaky": name.endswith(LEAKY_SUFFIX)})
        for key, hist in result.histories.items():
            out.histories[(name,) + tuple(key if isinstance(key, tuple) else (key,))] = hist
        if config.cnn.n_permutations:
            out.permutations[name] = _permutation(config, x, y, subjects, name, summaries,
                                                  deconf)
        if config.cnn.n_permutations_baselines and deconf is not None:
            LOGGER.info("%s: no label permutations of the linear baselines with --covariates "
                        "or --harmonize (their kernel-space permutations read the "
                        "uncorrected maps)", name)
        elif config.cnn.n_permutations_baselines:
            out.permutations.update(_baseline_permutations(config, gram, y, name, summaries,
                                                           result.predictions))
    out.predictions = pd.concat(preds, ignore_index=True)
    return out


def _write_cv(writer, cvs: CrossValidation, group_dir):
    """predictions.tsv, one manifest per fold and the learning curves."""
    writer.write_tsv(cvs.predictions, group_dir / "predictions.tsv")
    for m in cvs.manifests:
        name = (f"manifest_set-{m['input_set']}_repeat-{int(m.get('repeat', 0)):02d}"
                f"_fold-{int(m.get('fold', 0)):02d}.json")
        writer.write_json(m, group_dir / "cv" / name)
    curves = [{"input_set": k[0], "key": "_".join(map(str, k[1:])), "epoch": e + 1,
               "loss": h["loss"][e], "val_loss": h.get("val_loss", [np.nan] * len(h["loss"]))[e]}
              for k, h in cvs.histories.items() for e in range(len(h["loss"]))]
    writer.write_tsv(pd.DataFrame(curves), group_dir / "learning_curves.tsv")


def _run_cv(config, x, y, subjects, folds, name, select_fn, on_fold=None, gram=None,
            deconf=None):
    from dpnbids.learn import cv

    return cv.run_nested_cv(
        x, y, subjects, folds, input_set=name, select_fn=select_fn,
        model_params=_model_params(config), train_params=_train_params(config),
        tune=config.cnn.tune, threshold_rule=config.cnn.threshold_rule,
        random_state=config.seed(f"cv.{name}"),
        progress=lambda msg: LOGGER.info("%s: %s", name, msg), on_fold=on_fold, gram=gram,
        deconfound=deconf)


def _permutation_splits(config, subjects):
    from dpnbids.learn import cv

    return lambda y_perm: cv.make_outer_splits(subjects, y_perm, n_folds=config.cnn.folds,
                                               n_repeats=1,
                                               random_state=config.seed("cv.perm.splits"))


def _permutation_select(config, name, summaries):
    """``y_perm -> select_fn``: the input set's component selection redone on permuted
    labels (inside the training folds; on all subjects for the leaky paper mode)."""
    from dpnbids.analysis.stats import select_components

    def for_labels(y_perm):
        if not name.startswith("SSC"):
            return None
        if name.endswith(LEAKY_SUFFIX):
            leaky = np.asarray(select_components(summaries, y_perm,
                                                 p_threshold=config.ica.ssc_p))
            return lambda idx: leaky
        return lambda idx: select_components(summaries, y_perm, p_threshold=config.ica.ssc_p,
                                             subjects_idx=np.asarray(idx))
    return for_labels


def _permutation_record(observed, null, statistic) -> dict:
    from dpnbids.learn.cv import permutation_p

    null = np.asarray(null, dtype=float)
    p = permutation_p(observed, null)
    return {"statistic": statistic, "observed_auc": float(observed),
            "null_aucs": [float(v) for v in null], "null_mean": float(np.nanmean(null)),
            "null_95th_percentile": float(np.nanpercentile(null, 95)),
            "p_value": float(p), "n_permutations": int(null.size)}


STATISTIC = "fold-mean AUC of the outer test folds"


def _permutation(config, x, y, subjects, name, summaries, deconf=None):
    """Rerun the whole CNN CV (new splits, in-fold selection) with permuted labels."""
    from dpnbids.learn import cv
    from dpnbids.learn.metrics import fold_mean_auc

    splits, select_for = _permutation_splits(config, subjects), \
        _permutation_select(config, name, summaries)

    def run_fn(y_perm):
        res = cv.run_nested_cv(x, y_perm, subjects, splits(y_perm), input_set=name,
                               select_fn=select_for(y_perm), model_params=_model_params(config),
                               train_params=_train_params(config), tune=False,
                               baselines=(), random_state=config.seed(f"cv.perm.{name}"),
                               deconfound=deconf)
        return fold_mean_auc(res.predictions, score="raw_score")

    observed, null, _ = cv.permutation_test(run_fn, y,
                                            n_permutations=config.cnn.n_permutations,
                                            random_state=config.seed(f"perm.{name}"))
    return _permutation_record(observed, null, STATISTIC)


def _baseline_permutations(config, gram, y, name, summaries, predictions) -> dict:
    """Label permutations of the linear baselines' whole CV in kernel space, on the outer
    folds that :func:`_permutation_splits` gives the CNN's permutations."""
    from dpnbids.config import derive_seed
    from dpnbids.learn.cv import stratified_folds
    from dpnbids.learn.linear import permutation_nulls
    from dpnbids.learn.metrics import fold_mean_auc

    started = time.time()
    models = ("svm", "logreg")
    seed = derive_seed(config.seed("cv.perm.splits"), 0, bits=32)
    null = permutation_nulls(gram, y,
                             splits_fn=lambda y_perm: stratified_folds(y_perm,
                                                                       config.cnn.folds, seed),
                             select_fn_for=_permutation_select(config, name, summaries),
                             n_permutations=config.cnn.n_permutations_baselines,
                             models=models, random_state=config.seed(f"perm.linear.{name}"))
    out = {}
    for m in models:
        observed = fold_mean_auc(predictions[predictions["model"] == m], score="raw_score")
        out[f"{name} {m}"] = _permutation_record(observed, null[m], STATISTIC)
    LOGGER.info("%s: %d label permutations of the linear baselines in %.1f s", name,
                config.cnn.n_permutations_baselines, time.time() - started)
    return out


def _perm_key(key: str) -> tuple[str, str]:
    """'ASC' -> ('ASC', 'cnn'); 'ASC svm' -> ('ASC', 'svm')."""
    name, _, model = key.partition(" ")
    return name, model or "cnn"


def _metrics(config, predictions, perms, writer, group_dir):
    from dpnbids.learn.metrics import (METRICS, bootstrap_ci, is_constant_score,
                                       pooled_predictions, summarise_folds, table2)

    summary = summarise_folds(predictions)
    writer.write_tsv(summary, group_dir / "metrics.tsv")
    ci_rows = []
    for (input_set, model), pred in predictions.groupby(["input_set", "model"], sort=False):
        pooled = pooled_predictions(pred)
        constant = is_constant_score(pred)
        for metric in METRICS:
            if constant and metric == "auc":  # 0.5 by definition: no interval to give
                lo = hi = float("nan")
            else:
                lo, hi = bootstrap_ci(pooled["true_label"].to_numpy(),
                                      pooled["probability"].to_numpy(), metric=metric,
                                      pred=pooled["predicted_label"].to_numpy(),
                                      n_boot=config.cnn.n_bootstrap, constant_score=constant,
                                      random_state=config.seed(
                                          f"boot.{input_set}.{model}.{metric}"))
            ci_rows.append({"input_set": input_set, "model": model, "metric": metric,
                            "ci_low": lo, "ci_high": hi})
    ci = pd.DataFrame(ci_rows)
    perm_df = pd.DataFrame([{"input_set": _perm_key(k)[0], "model": _perm_key(k)[1],
                             "statistic": v["statistic"], "observed_auc": v["observed_auc"],
                             "null_mean": v["null_mean"], "p_value": v["p_value"],
                             "n_permutations": v["n_permutations"]} for k, v in perms.items()])
    t2 = table2(summary, ci, perm_df)
    writer.write_tsv(ci, group_dir / "metrics_ci.tsv")
    writer.write_tsv(t2, group_dir / "table2.tsv", index=True)
    if len(perm_df):
        writer.write_tsv(perm_df, group_dir / "permutation.tsv")
    writer.write_json({"summary": summary.to_dict(orient="records"),
                       "confidence_intervals": ci.to_dict(orient="records"),
                       "permutation": perms, "threshold_rule": config.cnn.threshold_rule,
                       "calibration": "Platt scaling fitted inside each outer training fold "
                                      "(CNN: inner validation subjects; baselines: inner "
                                      "cross-validated scores of the outer training subjects)",
                       "leaky_input_sets": sorted({s for s in predictions["input_set"]
                                                   if str(s).endswith(LEAKY_SUFFIX)})},
                      group_dir / "metrics.json")
    return {"summary": summary, "ci": ci, "table2": t2, "perm": perm_df}


def _final_model(config, final: _FinalModelInputs, res: GroupICAResult):
    """Train the ASC (or SSC) CNN on all labelled subjects and save the bundle."""
    from dpnbids import __version__
    from dpnbids.learn.bundle import save_bundle
    from dpnbids.learn.cv import fit_final_model
    from dpnbids.analysis.stats import select_components
    from dpnbids.workflows.saliency import bundle_baseline

    features, summaries, y, tables = final.features, final.summaries, final.y, final.tables

    if "ASC" not in features:
        LOGGER.info("no map-based input set requested: no final model saved")
        return None
    input_set = "ASC" if "ASC" in config.cnn.input_sets else "SSC"
    x = features["ASC"]
    channels = None
    if input_set == "SSC":
        s = summaries if final.deconf is None else final.deconf.fit_apply_2d(summaries,
                                                                             np.arange(len(y)))
        channels = np.asarray(select_components(s, y, p_threshold=config.ica.ssc_p))
    from dpnbids.workflows.confounds import deconfound_final

    x, deconfounding = deconfound_final(final.deconf, x, channels, len(y))
    final_fit = fit_final_model(
        x, y, channels=channels if deconfounding is None else None,
        model_params=_model_params(config),
        train_params=_train_params(config), threshold_rule=config.cnn.threshold_rule,
        random_state=config.seed("final"))
    model, scaling = final_fit.model, final_fit.scaling
    selected = final_fit.channels if deconfounding is None else \
        (None if channels is None else [int(c) for c in channels])
    summary = tables["summary"]
    row = summary[(summary["input_set"] == input_set) & (summary["model"] == "cnn")]
    cv_metrics = {}
    if len(row):
        cv_metrics = {k: float(v) for k, v in row.iloc[0].items()
                      if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
    # the bundle keeps its own copy of the maps so the model folder is self-contained
    model_dir = res.group_dir / "model"
    path = save_bundle(
        model_dir, model, group_maps_file=str(res.comps_file), mask_file=str(res.mask_file),
        selected_components=None if selected is None else [int(c) for c in selected],
        grid_affine=np.asarray(final.grid_affine), grid_shape=tuple(int(v) for v in x.shape[1:4]),
        scaling=scaling, input_set=input_set, feature="pe",
        config=config.to_dict(), cv_metrics=cv_metrics, space=final.space,
        resolution=final.resolution,
        n_components=int(summaries.shape[1]), voxel_size=float(final.voxel),
        history=final_fit.history, calibration=final_fit.calibration,
        dpnbids_version=__version__, deconfounding=deconfounding,
        baseline=bundle_baseline(x, selected if deconfounding is None else None, scaling))
    LOGGER.info("final %s model saved in %s", input_set, path)
    return path


def _group_report(config, res: GroupICAResult, cvs: CrossValidation, tables, bundle_dir,
                  saliency=None):
    from dpnbids.derivatives import atomic_write_text
    from dpnbids.learn.calibration import calibration_note
    from dpnbids.reports.group import render_group_report
    from dpnbids.reports.saliency import saliency_section

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
    from dpnbids.learn.confounds import confound_warnings
    from dpnbids.workflows.confounds import confound_section

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
    # staged with the rest of group/ and published with it (workflows.group)
    atomic_write_text(res.group_dir / "group.html", html)


def _ica_in_folds(config, runs, subjects, y, folds, mask, affine, voxel, n_components):
    """Strict mode: per outer fold, group ICA + dual regression on training runs only."""
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
    return {"predictions": pd.concat(preds, ignore_index=True), "manifests": manifests,
            "timings": timings}
