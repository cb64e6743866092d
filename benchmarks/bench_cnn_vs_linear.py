"""Why the CNN trails the linear baseline, measured: CNN variants against the linear SVM on
the SAME outer folds of one cohort.

Step 1 (``features``): run the real group level of a participant-level derivatives folder
(group ICA, dual regression) and save the classifier's inputs (stage-2 maps on the CNN grid,
labels, component summaries) to an ``.npz`` instead of classifying::

    python benchmarks/bench_cnn_vs_linear.py features feat.npz BIDS DERIV group \\
        --fmriprep-dir BIDS/derivatives/fmriprep -w WORK --n-components 10

Step 2 (``compare``): nested CV of each named variant (``VARIANTS``; ``default`` is the
CLI's defaults, ``paper`` the paper's optimiser) and of the linear SVM / logistic baselines
on the same stratified 10 outer folds, with in-fold calibration and thresholds as the CLI;
prints one row per variant: pooled AUC of the calibrated probabilities and of the raw
scores, fold-mean AUC, sensitivity / specificity at the in-fold thresholds, Brier score,
epochs, seconds::

    OMP_NUM_THREADS=2 python benchmarks/bench_cnn_vs_linear.py compare feat.npz \\
        --variants default inner-folds3 voxel-z ...

Every variant's choices are made inside the training folds (early stopping, scaling,
calibration and the inner-fold ensemble use outer-training subjects only).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

#: name -> (model_params overrides, train_params overrides, input scaling). ``default`` is
#: the CLI's defaults; ``paper`` the paper's optimiser (Adam epsilon 0.1). Scaling "channel"
#: is dpnbids' per-channel z-score; "voxel-centred" also subtracts the training subjects'
#: mean map voxel by voxel; "voxel-z" z-scores every voxel and channel.
VARIANTS = {
    "default": ({}, {}, "channel"),
    "paper": ({"epsilon": 0.1}, {}, "channel"),
    "auc-stopping": ({}, {"monitor": "val_auc"}, "channel"),
    "weight-decay": ({"weight_decay": 1e-3}, {}, "channel"),
    "augment": ({}, {"augment": True}, "channel"),
    "balanced": ({}, {"balanced": True}, "channel"),
    "dropout0.5": ({"dropout": 0.5}, {}, "channel"),
    "inner-folds3": ({}, {"inner_folds": 3}, "channel"),
    "voxel-centred": ({}, {}, "voxel-centred"),
    "voxel-z": ({}, {}, "voxel-z"),
}


def _base_params():
    """The CLI's defaults as the CV's model and training parameters."""
    from dpnbids.learn.params import ModelParams, TrainParams

    return (ModelParams(dropout=0.3, dense_units=128, learning_rate=1e-3, epsilon=1e-3,
                        weight_decay=0.0),
            TrainParams(epochs=100, batch_size=4, patience=10, min_epochs=10,
                        monitor="val_loss"))


def features(argv) -> int:
    """Run the group level and save the classifier's inputs instead of classifying."""
    import dpnbids.group.classify as classify
    from dpnbids.analysis.stats import component_summary
    from dpnbids.cli.run import main
    from dpnbids.learn.model import cnn_voxel_size

    out = argv[0]

    def capture(config, writer, res):
        subjects = list(res.subjects)
        voxel = cnn_voxel_size(config.cnn.cnn_voxel_size)
        x, affine = classify.build_map_features(res.maps, subjects, res.mask, res.affine,
                                                voxel)
        summaries = component_summary(np.stack([res.maps[s] for s in subjects]),
                                      res.ica.components_,
                                      threshold_z=config.ica.component_threshold)
        np.savez(out, x=x, y=np.asarray(res.y), subjects=np.asarray(subjects),
                 summaries=summaries, affine=affine,
                 networks=np.asarray(res.components_table["network"], dtype=str))
        print(f"saved {out}: x {x.shape}, {int(np.sum(res.y))} responders")

    classify.run_classification = capture
    return main(argv[1:])


def _scores(pred) -> dict:
    """Pooled AUC of the calibrated probabilities and of the raw scores, fold-mean AUC,
    sensitivity and specificity at the in-fold thresholds, Brier score."""
    from dpnbids.learn.metrics import binary_metrics, fold_mean_auc

    y = pred["true_label"]
    m = binary_metrics(y, pred["probability"], pred=pred["predicted_label"])
    return {"auc": m["auc"], "auc_raw_scores": binary_metrics(y, pred["raw_score"])["auc"],
            "auc_fold_mean": fold_mean_auc(pred, "raw_score"),
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            "brier": m["brier"]}


def _use_scaling(cv, kind: str) -> None:
    """Swap the CV's input scaling for the variant's (restored to dpnbids' for "channel")."""
    from dpnbids.learn.scaling import ChannelScaler

    if kind == "channel":
        cv.ChannelScaler = ChannelScaler
        return

    @dataclasses.dataclass(frozen=True, eq=False)
    class VoxelScaler(ChannelScaler):
        voxel_mean: np.ndarray = None
        voxel_sd: np.ndarray | None = None

        @classmethod
        def fit(cls, x):
            base = ChannelScaler.fit(x)
            sd = x.std(axis=0) if kind == "voxel-z" else None
            return cls(base.mean, base.sd, base.support, x.mean(axis=0),
                       None if sd is None else np.where(sd > 0, sd, 1.0))

        def transform(self, x):
            out = (x - self.voxel_mean) / (self.sd if self.voxel_sd is None else self.voxel_sd)
            out[:, ~self.support, :] = 0.0
            return out.astype(np.float32)

    cv.ChannelScaler = VoxelScaler


def compare(args) -> int:
    from dpnbids.learn import cv
    from dpnbids.learn.splits import make_outer_splits

    data = np.load(args.features)
    x, y, subjects = data["x"], data["y"].astype(int), [str(s) for s in data["subjects"]]
    folds = make_outer_splits(subjects, y, n_folds=args.folds, random_state=args.seed)
    base_model, base_train = _base_params()
    print(f"# {len(y)} subjects ({y.sum()} responders), input {x.shape[1:]}, "
          f"{args.folds} folds", flush=True)
    for k, name in enumerate(args.variants):
        mp_over, tp_over, scaling = VARIANTS[name]
        _use_scaling(cv, scaling)
        started = time.perf_counter()
        res = cv.run_nested_cv(x, y, subjects, folds,
                               model_params=dataclasses.replace(base_model, **mp_over),
                               train_params=dataclasses.replace(base_train, **tp_over),
                               baselines=("svm", "logreg") if k == 0 else (),
                               random_state=args.seed)
        seconds = time.perf_counter() - started
        epochs = float(np.mean([m["epochs_trained"] for m in res.manifests]))
        for model, pred in res.predictions.groupby("model"):
            row = {"variant": name if model == "cnn" else model, **_scores(pred)}
            if model == "cnn":
                row.update(epochs=epochs, seconds=seconds)
            print(json.dumps({k2: (round(v, 3) if isinstance(v, float) else v)
                              for k2, v in row.items()}), flush=True)
    _use_scaling(cv, "channel")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "features":
        return features(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["compare"])
    parser.add_argument("features")
    parser.add_argument("--variants", nargs="+", default=["default", "paper"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    return compare(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
