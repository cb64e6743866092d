"""Why the CNN trails the linear baseline, measured: CNN variants against the linear SVM on
the SAME outer folds of one cohort.

Step 1 (``features``): run the real group level of a participant-level derivatives folder
(group ICA, dual regression) and save the classifier's inputs (stage-2 maps on the CNN grid,
labels, component summaries) to an ``.npz`` instead of classifying::

    python benchmarks/bench_cnn_vs_linear.py features feat.npz BIDS DERIV group \\
        --fmriprep-dir BIDS/derivatives/fmriprep -w WORK --n-components 10

Step 2 (``compare``): nested CV of each named variant (``VARIANTS``; ``paper`` is the
paper's VoxNet and training) and of the linear SVM / logistic baselines on the same
stratified 10 outer folds; prints one row per variant: pooled AUC, fold-mean AUC,
sensitivity / specificity at 0.5, Brier score, epochs, seconds::

    OMP_NUM_THREADS=2 python benchmarks/bench_cnn_vs_linear.py compare feat.npz \\
        --variants paper eps1e-3 ...

Every variant's choices are made inside the training folds (early stopping and
ensembling use the inner validation subjects only).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

#: name -> (model_params overrides, train_params overrides).
VARIANTS = {
    "paper": ({}, {}),
    "eps1e-3": ({"epsilon": 1e-3}, {}),
    "eps1e-3-auc": ({"epsilon": 1e-3}, {"monitor": "val_auc"}),
    "eps1e-3-wd": ({"epsilon": 1e-3, "weight_decay": 1e-3}, {}),
    "eps1e-3-aug": ({"epsilon": 1e-3}, {"augment": True}),
    "eps1e-3-bal": ({"epsilon": 1e-3}, {"balanced": True}),
    "eps1e-3-drop5": ({"epsilon": 1e-3, "dropout": 0.5}, {}),
    "lr1e-4-eps1e-3": ({"epsilon": 1e-3, "learning_rate": 1e-4}, {}),
}

BASE_MODEL = {"dropout": 0.3, "dense_units": 128, "learning_rate": 1e-3, "epsilon": 0.1}
BASE_TRAIN = {"epochs": 100, "batch_size": 4, "patience": 10, "min_epochs": 10}


def features(argv) -> int:
    """Run the group level and save the classifier's inputs instead of classifying."""
    import dpnbids.workflows.classify as classify
    from dpnbids.analysis.stats import component_summary
    from dpnbids.cli.run import main
    from dpnbids.learn.model import default_cnn_voxel_size

    out = argv[0]

    def capture(config, writer, res):
        subjects = list(res.subjects)
        voxel = config.cnn.cnn_voxel_size or default_cnn_voxel_size
        x, affine = classify.build_map_features(res.maps, subjects, res.mask, res.affine,
                                                voxel)
        summaries = component_summary(np.stack([res.maps[s] for s in subjects]),
                                      res.ica.components_,
                                      threshold_z=config.ica.component_threshold)
        np.savez(out, x=x, y=np.asarray(res.y), subjects=np.asarray(subjects),
                 summaries=summaries, affine=affine)
        print(f"saved {out}: x {x.shape}, {int(np.sum(res.y))} responders")

    classify.run_classification = capture
    return main(argv[1:])


def _scores(pred):
    from dpnbids.learn.metrics import binary_metrics

    pooled = pred.groupby("participant_id").agg(y=("true_label", "first"),
                                                p=("probability", "mean"))
    m = binary_metrics(pooled["y"], pooled["p"])
    folds = [binary_metrics(g["true_label"], g["probability"])["auc"]
             for _, g in pred.groupby(["repeat", "fold"])]
    brier = float(np.mean((pooled["p"] - pooled["y"]) ** 2))
    return {"auc": m["auc"], "auc_fold_mean": float(np.nanmean(folds)),
            "sensitivity": m["recall"], "specificity": m["specificity"], "brier": brier}


def compare(args) -> int:
    from dpnbids.learn import cv

    data = np.load(args.features)
    x, y, subjects = data["x"], data["y"].astype(int), [str(s) for s in data["subjects"]]
    folds = cv.make_outer_splits(subjects, y, n_folds=args.folds, random_state=args.seed)
    print(f"# {len(y)} subjects ({y.sum()} responders), input {x.shape[1:]}, "
          f"{args.folds} folds", flush=True)
    rows = []
    for k, name in enumerate(args.variants):
        mp_over, tp_over = VARIANTS[name]
        started = time.perf_counter()
        res = cv.run_nested_cv(x, y, subjects, folds, model_params={**BASE_MODEL, **mp_over},
                               train_params={**BASE_TRAIN, **tp_over},
                               baselines=("svm", "logreg") if k == 0 else (),
                               random_state=args.seed)
        seconds = time.perf_counter() - started
        epochs = float(np.mean([m["epochs_trained"] for m in res.manifests]))
        for model, pred in res.predictions.groupby("model"):
            label = name if model == "cnn" else model
            row = {"variant": label, **_scores(pred), "epochs": epochs if model == "cnn"
                   else float("nan"), "seconds": seconds if model == "cnn" else float("nan")}
            rows.append(row)
            print(json.dumps({k2: (round(v, 3) if isinstance(v, float) else v)
                              for k2, v in row.items()}), flush=True)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "features":
        return features(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["compare"])
    parser.add_argument("features")
    parser.add_argument("--variants", nargs="+", default=["paper", "eps1e-3"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return compare(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
