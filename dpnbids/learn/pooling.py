"""The group level's join: pool the fold and permutation jobs' files, then the metrics.

:func:`pool_group_results` is the join node's work (:mod:`dpnbids.learn.jobs` wrote its
inputs). It concatenates the outer folds' predictions in plan order, collects manifests,
learning curves, timings and saliency sums, assembles each input set's permutation null
from its blocks, runs the linear baselines' permutations in kernel space, and computes
the fold summaries, bootstrap CIs, calibration summary, permutation p-values and Table 2.
Everything is written into ``out_dir`` with the derivatives writer's formats, so the
group level publishes the files as they are.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dpnbids.config import derive_seed
from dpnbids.derivatives import write_json, write_tsv
from dpnbids.learn.jobs import LEAKY_SUFFIX, read_predictions

LOGGER = logging.getLogger(__name__)
STATISTIC = "fold-mean AUC of the outer test folds"
CALIBRATION_TEXT = ("Platt scaling fitted inside each outer training fold (CNN: inner "
                    "validation subjects; baselines: inner cross-validated scores of the outer "
                    "training subjects)")


def permutation_record(observed, null, statistic=STATISTIC) -> dict:
    from dpnbids.learn.cv import permutation_p

    null = np.asarray(null, dtype=float)
    return {"statistic": statistic, "observed_auc": float(observed),
            "null_aucs": [float(v) for v in null], "null_mean": float(np.nanmean(null)),
            "null_95th_percentile": float(np.nanpercentile(null, 95)),
            "p_value": float(permutation_p(observed, null)), "n_permutations": int(null.size)}


def _perm_key(key: str) -> tuple[str, str]:
    """'ASC' -> ('ASC', 'cnn'); 'ASC svm' -> ('ASC', 'svm')."""
    name, _, model = key.partition(" ")
    return name, model or "cnn"


def pool_group_results(predictions, *, out_dir, records, saliency, permutations,
                       settings, extra_predictions=None, extra_records=None) -> dict:
    """The join. ``predictions``/``records``/``saliency``: the fold jobs' files in plan
    order; ``permutations``: the permutation jobs' ``permutation.json`` files;
    ``settings`` (JSON): ``random_seed``, ``n_bootstrap``, ``threshold_rule`` and
    ``sets`` (the input sets' specs, with their ``features``, ``cohort``, ``summaries``);
    ``confounds``: the confound-only baselines' predictions file and permutation records;
    ``extra_*``: the strict ICA-in-folds predictions and manifests, when run."""
    out = Path(out_dir)
    settings = json.loads(settings)
    frames = [read_predictions(p) for p in predictions]
    if extra_predictions:
        extra = read_predictions(extra_predictions)
        extra["leaky"] = False
        frames.append(extra)
    baselines = settings.get("confounds") or {}
    if baselines:
        frames.append(read_predictions(baselines["predictions"]))
    pred = pd.concat(frames, ignore_index=True)
    write_tsv(pred, out / "predictions.tsv")
    recs = [json.loads(Path(r).read_text()) for r in records]
    manifests = _manifests(recs, extra_records)
    write_json({"manifests": manifests}, out / "manifests.json")
    histories = {tuple([r["input_set"], *k]): h for r in recs for k, h in r["histories"]}
    write_tsv(_learning_curves(histories), out / "learning_curves.tsv")
    write_json({"histories": [[list(k), h] for k, h in histories.items()]},
               out / "histories.json")
    timings = _timings(recs, extra_records)
    write_json(timings, out / "timings.json")
    _pool_saliency(recs, saliency, out)
    perms = _cnn_permutations(permutations)
    for spec in settings["sets"]:
        if int(spec.get("n_permutations_baselines", 0)):
            perms.update(baseline_permutations(spec, pred))
    perms.update(baselines.get("permutations", {}))
    write_json(perms, out / "permutations.json")
    tables = metric_tables(pred, perms, settings)
    write_tsv(tables["summary"], out / "metrics.tsv")
    write_tsv(tables["ci"], out / "metrics_ci.tsv")
    write_tsv(tables["table2"], out / "table2.tsv", index=True)
    if len(tables["perm"]):
        write_tsv(tables["perm"], out / "permutation.tsv")
    write_json({"summary": tables["summary"].to_dict(orient="records"),
                "confidence_intervals": tables["ci"].to_dict(orient="records"),
                "permutation": perms, "threshold_rule": settings["threshold_rule"],
                "calibration": CALIBRATION_TEXT,
                "leaky_input_sets": sorted({s for s in pred["input_set"]
                                            if str(s).endswith(LEAKY_SUFFIX)})},
               out / "metrics.json")
    return {"out_dir": str(out)}


def _manifests(recs, extra_records) -> list:
    rows = [{**m, "input_set": r["input_set"],
             "ica_source": "all subjects (group level; labels unused)",
             "leaky": r["input_set"].endswith(LEAKY_SUFFIX)}
            for r in recs for m in r["manifests"]]
    if extra_records:
        rows.extend(json.loads(Path(extra_records).read_text())["manifests"])
    return rows


def _learning_curves(histories: dict) -> pd.DataFrame:
    return pd.DataFrame([
        {"input_set": k[0], "key": "_".join(map(str, k[1:])), "epoch": e + 1,
         "loss": h["loss"][e], "val_loss": h.get("val_loss", [np.nan] * len(h["loss"]))[e]}
        for k, h in histories.items() for e in range(len(h["loss"]))])


def _timings(recs, extra_records) -> dict:
    """Per input set: the folds' seconds (each ran as its own job) and their sum."""
    out: dict = {}
    for r in recs:
        t = out.setdefault(r["input_set"], {"seconds_per_fold": [], "epoch": []})
        t["seconds_per_fold"].extend(r["timings"].get("seconds_per_fold", []))
        t["epoch"].append(r["timings"].get("seconds_per_epoch_mean", 0.0))
        if "saliency" in r:
            t["saliency_s"] = t.get("saliency_s", 0.0) + r["saliency"]["seconds"]
    for t in out.values():
        epochs = t.pop("epoch")
        t["total_s"] = float(np.sum(t["seconds_per_fold"]))
        t["seconds_per_fold_mean"] = float(np.mean(t["seconds_per_fold"]))
        t["seconds_per_epoch_mean"] = float(np.mean(epochs))
    if extra_records:
        out.update(json.loads(Path(extra_records).read_text()).get("timings", {}))
    return out


def _pool_saliency(recs, saliency, out: Path) -> None:
    """``saliency_<set>.npy`` (the summed |attribution| over folds, in fold order) and
    ``saliency_<set>.json`` (the folds' pooled bookkeeping)."""
    pooled: dict = {}
    for r, file in zip(recs, saliency):
        if not file or "saliency" not in r:
            continue
        name = r["input_set"]
        total, book = pooled.get(name, (None, None))
        part = np.load(file)
        total = part.astype(np.float64) if total is None else total + part
        b = r["saliency"]
        if book is None:
            book = {"n_evaluations": 0, "seconds": 0.0, "folds": [], "shares": {}}
        book["n_evaluations"] += b["n_evaluations"]
        book["seconds"] += b["seconds"]
        book["folds"].extend(b["folds"])
        for model, rows in b["shares"].items():
            book["shares"].setdefault(model, []).extend(rows)
        pooled[name] = (total, book)
    index = {}
    for k, (name, (total, book)) in enumerate(pooled.items()):
        np.save(out / f"saliency_{k:02d}.npy", total)
        index[name] = {"sum_abs": f"saliency_{k:02d}.npy", **book}
    write_json(index, out / "saliency.json")


def _cnn_permutations(files) -> dict:
    """Each input set's observed statistic and its null, blocks in order."""
    blocks: dict = {}
    for f in files:
        data = json.loads(Path(f).read_text())
        blocks.setdefault(data["input_set"], {})[int(data["block"])] = data["aucs"]
    out = {}
    for name, parts in blocks.items():
        null = [v for b in sorted(k for k in parts if k >= 0) for v in parts[b]]
        out[name] = permutation_record(parts[-1][0], null)
    return out


def baseline_permutations(spec: dict, predictions) -> dict:
    """Label permutations of the linear baselines' whole CV in kernel space, on the outer
    folds the CNN's permutations use."""
    from dpnbids.learn.splits import stratified_folds
    from dpnbids.learn.jobs import select_for_labels
    from dpnbids.learn.linear import GramCache, permutation_nulls
    from dpnbids.learn.metrics import fold_mean_auc

    started = time.time()
    name, models = spec["name"], ("svm", "logreg")
    x, summaries = np.load(spec["features"]), np.load(spec["summaries"])
    seed = derive_seed(spec["perm_splits_seed"], 0, bits=32)
    y = np.asarray(json.loads(Path(spec["cohort"]).read_text())["y"], dtype=int)
    null = permutation_nulls(GramCache(x), y,
                             splits_fn=lambda y_perm: stratified_folds(
                                 y_perm, int(spec["n_folds"]), seed),
                             select_fn_for=lambda y_perm: select_for_labels(spec, summaries,
                                                                            y_perm),
                             n_permutations=int(spec["n_permutations_baselines"]),
                             models=models, random_state=spec["perm_linear_seed"])
    out = {}
    for m in models:
        mine = predictions[(predictions["input_set"] == name) & (predictions["model"] == m)]
        out[f"{name} {m}"] = permutation_record(fold_mean_auc(mine, score="raw_score"),
                                                null[m])
    LOGGER.info("%s: %d label permutations of the linear baselines in %.1f s", name,
                int(spec["n_permutations_baselines"]), time.time() - started)
    return out


def metric_tables(predictions, perms: dict, settings: dict) -> dict:
    """Fold summaries, stratified bootstrap CIs (seeded per input set, model and metric),
    the permutation table and Table 2."""
    from dpnbids.learn.metrics import (METRICS, bootstrap_ci, is_constant_score,
                                       pooled_predictions, summarise_folds, table2)

    summary = summarise_folds(predictions)
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
                                      n_boot=int(settings["n_bootstrap"]),
                                      constant_score=constant,
                                      random_state=derive_seed(
                                          settings["random_seed"],
                                          f"boot.{input_set}.{model}.{metric}"))
            ci_rows.append({"input_set": input_set, "model": model, "metric": metric,
                            "ci_low": lo, "ci_high": hi})
    ci = pd.DataFrame(ci_rows)
    perm_df = pd.DataFrame([{"input_set": _perm_key(k)[0], "model": _perm_key(k)[1],
                             "statistic": v["statistic"], "observed_auc": v["observed_auc"],
                             "null_mean": v["null_mean"], "p_value": v["p_value"],
                             "n_permutations": v["n_permutations"]} for k, v in perms.items()])
    return {"summary": summary, "ci": ci, "table2": table2(summary, ci, perm_df),
            "perm": perm_df}
