"""Null and planted cohorts with a site or motion confound: what each way of controlling
for the confound leaves of a linear SVM's cross-validated AUC.

Cohorts come from :func:`dpnbids.sim.confounded.confounded_maps` (43 subjects, 22
responders, 80% of each class at "its" site, or responders moving twice as much). For each
of ``--cohorts`` seeds, 10-fold CV (seeded stratified outer folds, the linear SVM of the
baselines) with:

* ``none``: no correction;
* ``whole-data OLS``: the confound regressed out of every feature on all 43 subjects
  before the CV (what Snoek et al. 2019 call whole-dataset confound regression);
* ``in-fold OLS``: ``--covariates``: fitted on each outer training fold, applied frozen
  to its test subjects;
* ``in-fold ComBat``: ``--harmonize site`` (site cohorts only), with dpnbids' shrinkage of
  the scale only and with neuroCombat's shrinkage of location and scale;
* the confound-only baseline (logistic regression on the confound).

Usage: ``python benchmarks/bench_confounds.py --cohorts 12``. Prints mean (SD) AUCs.
``--cnn`` runs the VoxNet instead (5 folds, ``--epochs`` epochs; slow): no correction and
the confound's flag.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from dpnbids.learn.confounds import (FoldDeconfounder, apply_residualiser, confound_baselines,
                                     encode, fit_residualiser, linear_cv_auc)
from dpnbids.learn.splits import make_outer_splits
from dpnbids.learn.metrics import summarise_folds
from dpnbids.sim.confounded import confounded_maps


def whole_data(x, table, column):
    """The confound regressed out of every feature on all subjects (the biased way)."""
    _, design = encode(table, [column], np.arange(len(table)))
    flat = x.reshape(x.shape[0], -1)
    beta = fit_residualiser(flat, design)
    out = apply_residualiser(beta, flat, design).reshape(x.shape).astype(np.float32)
    return out * (x != 0)


def one_cohort(confound, seed, effect):
    x, y, table = confounded_maps(confound=confound, seed=seed, effect_size=effect)
    ids = list(table.index)
    folds = make_outer_splits(ids, y, n_folds=10, random_state=seed + 1000)
    column = "site" if confound == "site" else "mean_fd"
    out = {"none": linear_cv_auc(x, y, ids, folds),
           "whole-data OLS": linear_cv_auc(whole_data(x, table, column), y, ids, folds),
           "in-fold OLS": linear_cv_auc(x, y, ids, folds,
                                        deconfound=FoldDeconfounder(table, covariates=[column]))}
    if confound == "site":
        for label, shrink in (("in-fold ComBat", "scale"),
                              ("ComBat, EB loc+scale", "location+scale")):
            out[label] = linear_cv_auc(x, y, ids, folds, deconfound=FoldDeconfounder(
                table, harmonize="site", combat_shrink=shrink))
    base = summarise_folds(confound_baselines(table[[column]], y, folds))
    out[f"{column} baseline"] = float(base["auc_mean"].iloc[0])
    return out


def one_cohort_cnn(confound, seed, effect, epochs):
    """The CNN's fold-mean AUC without correction and with the confound's flag."""
    from dpnbids.learn.cv import run_nested_cv
    from dpnbids.learn.params import TrainParams
    from dpnbids.learn.metrics import fold_mean_auc

    x, y, table = confounded_maps(confound=confound, seed=seed, effect_size=effect)
    ids = list(table.index)
    folds = make_outer_splits(ids, y, n_folds=5, random_state=seed + 1000)
    flag = {"harmonize": "site"} if confound == "site" else {"covariates": ["mean_fd"]}
    out = {}
    for label, deconf in (("none", None), (str(flag), FoldDeconfounder(table, **flag))):
        res = run_nested_cv(x, y, ids, folds, baselines=(), deconfound=deconf,
                            train_params=TrainParams(epochs=epochs, patience=5, min_epochs=5),
                            random_state=seed)
        out[label] = fold_mean_auc(res.predictions, score="raw_score")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=12)
    parser.add_argument("--effect", type=float, default=0.0,
                        help="Cohen's d of the planted brain effect (0: null cohorts)")
    parser.add_argument("--cnn", action="store_true", help="the VoxNet instead (slow)")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    for confound in ("site", "motion"):
        started = time.time()
        rows = [one_cohort_cnn(confound, seed, args.effect, args.epochs) if args.cnn
                else one_cohort(confound, seed, args.effect) for seed in range(args.cohorts)]
        print(f"{confound} confound, effect d={args.effect}, {args.cohorts} cohorts "
              f"({time.time() - started:.0f} s):")
        for key in rows[0]:
            v = np.array([r[key] for r in rows])
            print(f"  {key:18s} AUC {v.mean():.3f} (SD {v.std(ddof=1):.3f})")


if __name__ == "__main__":
    main()
