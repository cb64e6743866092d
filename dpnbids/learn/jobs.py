"""The group level's learning as independent jobs that hand each other files.

Each function here is one engine node's work (:mod:`dpnbids.interfaces` wraps them; the
group workflow, :func:`dpnbids.workflows.group_cv.init_group_cv_wf`, connects them):

* :func:`run_cv_fold` - one input set's nested CV on one outer fold (``cv_asc_fold03``);
* :func:`run_permutation_block` - a block of label permutations of one input set's whole
  CNN cross-validation (``perm_asc_block02``), or the observed statistic;
* :func:`fit_final` - the final model on all labelled subjects (``final_asc``).

Every job reads the cohort from files the driver wrote once (:func:`write_job_inputs`:
``.npy`` arrays and a JSON cohort, byte-identical on a rerun, so the engine's content
hashes reuse finished jobs) and a JSON *spec* that carries everything else, seeds
included, all derived from ``--random-seed`` by the driver. A job's result therefore
depends on its inputs only, never on the plugin that runs it or on the order of jobs.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dpnbids.derivatives import write_json, write_tsv

#: Label permutations per permutation node: 1,000 permutations are 100 jobs per input set.
PERMUTATIONS_PER_BLOCK = 10
LEAKY_SUFFIX = "-leaky"


# ----------------------------------------------------------------------------- inputs
def write_job_inputs(folder, features: dict, subjects, y, summaries, confounds=None) -> dict:
    """Write the cohort the jobs read: ``features_<key>.npy`` (S, X, Y, Z, C) per feature
    array, ``summaries.npy`` (S, K) and ``cohort.json`` (with ``confounds``, the confound
    table of the in-fold deconfounding, when given); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"cohort": folder / "cohort.json", "summaries": folder / "summaries.npy"}
    _save_if_changed(paths["summaries"], np.asarray(summaries, dtype=np.float64))
    cohort = {"subjects": [str(s) for s in subjects],
              "y": [int(v) for v in np.asarray(y, dtype=int)]}
    if confounds is not None:
        cohort["confounds"] = table_to_json(confounds)
    text = json.dumps(cohort, indent=1, sort_keys=True)
    if not paths["cohort"].exists() or paths["cohort"].read_text() != text:
        paths["cohort"].write_text(text)
    for key, x in features.items():
        paths[key] = folder / f"features_{key}.npy"
        _save_if_changed(paths[key], np.asarray(x, dtype=np.float32))
    return {k: str(v) for k, v in paths.items()}


def _save_if_changed(path: Path, array: np.ndarray) -> None:
    """np.save, skipped when the file already holds exactly this array."""
    if path.exists():
        try:
            old = np.load(path, mmap_mode="r")
            if old.dtype == array.dtype and old.shape == array.shape and \
                    np.array_equal(old, array):
                return
        except (OSError, ValueError):
            pass
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
    tmp.replace(path)


def _load(features, cohort, summaries):
    info = json.loads(Path(cohort).read_text())
    return (np.load(features), np.asarray(info["y"], dtype=int), list(info["subjects"]),
            np.load(summaries))


def table_to_json(table: pd.DataFrame) -> dict:
    """A confound table as JSON (numeric columns as floats, others as strings; missing
    values as null), read back exactly by :func:`table_from_json`."""
    columns = []
    for name in table.columns:
        values = table[name]
        numeric = bool(pd.api.types.is_numeric_dtype(values))
        columns.append({"name": str(name), "numeric": numeric, "values": [
            None if pd.isna(v) else (float(v) if numeric else str(v)) for v in values]})
    return {"index": [str(s) for s in table.index], "index_name": table.index.name,
            "columns": columns}


def table_from_json(data: dict) -> pd.DataFrame:
    out = pd.DataFrame(index=pd.Index(data["index"], name=data.get("index_name")))
    for col in data["columns"]:
        if col["numeric"]:
            out[col["name"]] = np.array([np.nan if v is None else v for v in col["values"]],
                                        dtype=float)
        else:
            # assigned as confound_table assigns it, so pandas infers the same dtype
            out[col["name"]] = np.asarray(col["values"], dtype=object)
    return out


def deconfounder_for(spec: dict, cohort):
    """The in-fold :class:`dpnbids.learn.confounds.FoldDeconfounder` the spec asks for
    (``deconfound``: covariates and harmonize) on the cohort's confound table, or None."""
    from dpnbids.learn.confounds import FoldDeconfounder

    wanted = spec.get("deconfound")
    if not wanted:
        return None
    info = json.loads(Path(cohort).read_text())
    if "confounds" not in info:
        raise ValueError(f"{cohort} has no confound table, but the node's settings ask for "
                         f"deconfounding ({wanted}); the group level writes both together")
    deconf = FoldDeconfounder(table_from_json(info["confounds"]),
                              covariates=tuple(wanted.get("covariates") or ()),
                              harmonize=wanted.get("harmonize"))
    return deconf if deconf else None


def fold_to_dict(fold) -> dict:
    return {"repeat": int(fold.repeat), "fold": int(fold.fold),
            "train_ids": list(fold.train_ids), "val_ids": list(fold.val_ids),
            "test_ids": list(fold.test_ids), "seed": int(fold.seed)}


def fold_from_dict(data: dict):
    from dpnbids.learn.splits import Fold

    return Fold(int(data["repeat"]), int(data["fold"]), tuple(data["train_ids"]),
                tuple(data["val_ids"]), tuple(data["test_ids"]), int(data["seed"]))


def pin_threads(n_threads: int) -> None:
    """The node's Keras backend and ``n_threads`` compute threads (what its n_procs promised
    the scheduler), through :func:`dpnbids.learn.backend.configure`'s environment: the
    driver's choice of backend, inherited by the node's process, is kept; values already
    set win, and a process whose backend already runs (a Linear run) is left as it is."""
    import os

    from dpnbids.exceptions import InputError
    from dpnbids.learn.backend import configure

    if not n_threads:
        return
    try:
        configure(os.environ.get("KERAS_BACKEND") or "auto", int(n_threads))
    except InputError:  # Keras already imported in this process with its backend
        pass


# ----------------------------------------------------------------------------- selection
def select_for_labels(spec: dict, summaries, y, deconf=None):
    """The input set's component selection for labels ``y``: None (all channels), inside
    each training fold (SSC), or once on all subjects (the paper's leaky SSC). With
    ``deconf``, the in-fold selection reads summaries deconfounded on the training rows."""
    from dpnbids.analysis.stats import select_components

    mode, p = spec.get("selection", "all"), float(spec.get("ssc_p", 0.05))
    if mode == "all":
        return None
    if mode == "leaky":
        leaky = np.asarray(select_components(summaries, y, p_threshold=p))
        return lambda idx: leaky

    def in_fold(idx):
        s = summaries if deconf is None else deconf.fit_apply_2d(summaries, idx)
        return select_components(s, y, p_threshold=p, subjects_idx=np.asarray(idx))
    return in_fold


def params_of(spec: dict):
    """The spec's model and training parameters (``model_params``, ``train_params``: the
    fields each sets; the others keep their defaults)."""
    from dpnbids.learn.params import ModelParams, TrainParams

    return (ModelParams.from_mapping(spec["model_params"]),
            TrainParams.from_mapping(spec["train_params"]))


def _accumulator(spec: dict, n_channels: int):
    from dpnbids.learn.saliency import SaliencyAccumulator

    sal = spec.get("saliency") or {}
    if sal.get("method", "none") == "none":
        return None
    return SaliencyAccumulator(sal["method"], n_channels, haufe=bool(sal.get("haufe", True)),
                               fwhm_mm=float(sal.get("fwhm_mm", 0.0)),
                               voxel_mm=sal.get("voxel_mm"))


# ----------------------------------------------------------------------------- jobs
def run_cv_fold(features, *, out_dir, cohort, summaries, spec, fold, n_threads=1) -> dict:
    """One input set's nested CV (CNN and baselines) on one outer fold.

    Writes ``predictions.tsv``, ``record.json`` (the fold's manifest, learning curves and
    timings) and, with saliency, ``saliency_sum.npy`` plus the accumulator's bookkeeping
    in ``record.json``.
    """
    from dpnbids.learn import cv

    pin_threads(n_threads)
    spec, fold = json.loads(spec), fold_from_dict(json.loads(fold))
    x, y, subjects, summ = _load(features, cohort, summaries)
    acc = _accumulator(spec, int(x.shape[-1]))
    deconf = deconfounder_for(spec, cohort)
    model_params, train_params = params_of(spec)
    result = cv.run_nested_cv(
        x, y, subjects, [fold], input_set=spec["name"],
        select_fn=select_for_labels(spec, summ, y, deconf), model_params=model_params,
        train_params=train_params, tune=bool(spec["tune"]),
        threshold_rule=spec["threshold_rule"], random_state=spec["cv_seed"], on_fold=acc,
        deconfound=deconf)
    out = Path(out_dir)
    predictions = result.predictions.copy()
    predictions["leaky"] = spec["name"].endswith(LEAKY_SUFFIX)
    write_tsv(predictions, out / "predictions.tsv")
    record = {"input_set": spec["name"], "repeat": fold.repeat, "fold": fold.fold,
              "manifests": result.manifests, "timings": result.timings,
              "histories": [[list(k) if isinstance(k, tuple) else [k], h]
                            for k, h in result.histories.items()]}
    saliency = ""
    if acc is not None:
        saliency = str(out / "saliency_sum.npy")
        np.save(saliency, acc.sum_abs_)
        record["saliency"] = acc.bookkeeping()
    write_json(record, out / "record.json")
    return {"predictions": str(out / "predictions.tsv"), "record": str(out / "record.json"),
            "saliency": saliency}


def permutation_labels(y, n_permutations: int, seed: int, start: int, stop: int) -> list:
    """Permutations ``start``..``stop - 1`` of the seeded sequence that
    :func:`dpnbids.learn.cv.permutation_test` draws (``rng.permutation(y)`` in turn)."""
    rng = np.random.default_rng(seed)
    drawn = [rng.permutation(np.asarray(y, dtype=int)) for _ in range(int(n_permutations))]
    return drawn[start:stop]


def run_permutation_block(features, *, out_dir, cohort, summaries, spec, block,
                          n_threads=1) -> dict:
    """The fold-mean AUC of the input set's whole CNN cross-validation on the permuted
    labels of block ``block`` (:data:`PERMUTATIONS_PER_BLOCK` each), or on the true labels
    (``block`` -1: the observed statistic). Writes ``permutation.json``."""
    from dpnbids.learn import cv
    from dpnbids.learn.metrics import fold_mean_auc
    from dpnbids.learn.splits import make_outer_splits

    pin_threads(n_threads)
    spec = json.loads(spec)
    x, y, subjects, summ = _load(features, cohort, summaries)
    deconf = deconfounder_for(spec, cohort)
    model_params, train_params = params_of(spec)
    n = int(spec["n_permutations"])
    if block < 0:
        labels = [y]
    else:
        start = block * PERMUTATIONS_PER_BLOCK
        labels = permutation_labels(y, n, spec["perm_seed"], start,
                                    min(n, start + PERMUTATIONS_PER_BLOCK))
    aucs = []
    for y_perm in labels:
        folds = make_outer_splits(subjects, y_perm, n_folds=int(spec["n_folds"]),
                                  n_repeats=1, random_state=spec["perm_splits_seed"])
        res = cv.run_nested_cv(x, y_perm, subjects, folds, input_set=spec["name"],
                               select_fn=select_for_labels(spec, summ, y_perm, deconf),
                               model_params=model_params,
                               train_params=train_params, tune=False, baselines=(),
                               random_state=spec["perm_cv_seed"], deconfound=deconf)
        aucs.append(float(fold_mean_auc(res.predictions, score="raw_score")))
    target = Path(out_dir) / "permutation.json"
    write_json({"input_set": spec["name"], "block": int(block), "aucs": aucs}, target)
    return {"out_file": str(target)}


def fit_final(features, *, out_dir, cohort, summaries, spec, n_threads=1) -> dict:
    """Train the final CNN on all labelled subjects: ``model.keras``, ``final.json``
    (channels, scaling, learning curve, calibration), ``support.npy`` (the scaling's
    in-brain voxels) and ``baseline.npy`` (the mean scaled input, the saliency baseline)."""
    from dpnbids.analysis.stats import select_components
    from dpnbids.learn.train import fit_final_model

    pin_threads(n_threads)
    spec = json.loads(spec)
    x, y, _, summ = _load(features, cohort, summaries)
    deconf = deconfounder_for(spec, cohort)
    rows = np.arange(len(y))
    channels = None
    if spec.get("selection") in ("in-fold", "leaky"):
        s = summ if deconf is None else deconf.fit_apply_2d(summ, rows)
        channels = np.asarray(select_components(s, y, p_threshold=float(spec["ssc_p"])))
    deconfounding = None
    if deconf is not None:  # fitted on every labelled subject, stored with the model
        x = x if channels is None else x[..., channels]
        deconf.fit(x, rows)
        x, deconfounding = deconf.transform(x, rows)[0], deconf.state()
    model_params, train_params = params_of(spec)
    final = fit_final_model(x, y, channels=channels if deconf is None else None,
                            model_params=model_params, train_params=train_params,
                            threshold_rule=spec["threshold_rule"],
                            random_state=spec["final_seed"])
    selected = final.channels if deconf is None else \
        (None if channels is None else [int(c) for c in channels])
    out = Path(out_dir)
    final.model.save(str(out / "model.keras"))
    xs = x if final.channels is None else x[..., np.asarray(final.channels, dtype=int)]
    np.save(out / "support.npy", final.scaling.support)
    np.save(out / "baseline.npy", final.scaling.transform(xs).mean(axis=0))
    record = {"input_set": spec["name"], "channels": selected,
              "grid_shape": [int(v) for v in x.shape[1:4]],
              "scaling": final.scaling.to_json(),
              "history": final.history, "calibration": final.calibration}
    if deconfounding is not None:
        record["deconfounding"] = deconfounding[0]
    # always written (empty without deconfounding): the engine keeps only declared outputs
    np.savez(out / "deconfound.npz", **(deconfounding[1] if deconfounding else {}))
    write_json(record, out / "final.json")
    return {"model": str(out / "model.keras"), "record": str(out / "final.json"),
            "support": str(out / "support.npy"), "baseline": str(out / "baseline.npy"),
            "deconfound": str(out / "deconfound.npz")}


def load_final(record, support, deconfound=None) -> dict:
    """What :func:`fit_final` wrote, as the bundle wants it (``scaling``: the
    :class:`~dpnbids.learn.scaling.ChannelScaler` with its support; ``deconfounding``: the
    (metadata, arrays) of the final fit's deconfounder from ``deconfound``, or None)."""
    from dpnbids.learn.scaling import ChannelScaler

    data = json.loads(Path(record).read_text())
    data["scaling"] = ChannelScaler.from_json(data["scaling"], np.load(support))
    meta = data.pop("deconfounding", None)
    data["deconfounding"] = None
    if meta is not None:
        if deconfound is None:
            raise ValueError(f"{record} records a deconfounding fit: give its arrays' file")
        with np.load(deconfound) as arrays:
            data["deconfounding"] = (meta, {k: arrays[k] for k in arrays.files})
    return data


def read_predictions(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=True, na_values=["n/a"],
                       float_precision="round_trip")
