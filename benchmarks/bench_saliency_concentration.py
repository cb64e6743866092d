"""Issue #15's saliency criteria on a planted cohort, at the features level, and how the
choice of summary changes them.

Input: the ``.npz`` of ``bench_cnn_vs_linear.py features`` (the stage-2 maps on the CNN
grid, labels, network labels) and the cohort's ``<bids>_truth`` folder (which networks
carry the effect). Runs the group level's default CNN CV (the :class:`CNNConfig` defaults,
10 stratified outer folds) with the saliency accumulator as ``on_fold``, keeps every held-out
subject's integrated-gradients map, and prints one JSON line per summary:

* ``ratio_summed``: the mean over held-out subjects of |attribution| summed over
  components, within 8 mm of the planted networks' coordinates over the rest of the brain
  (the CNN grid's voxels with data), and ``ratio_<component>`` per component;
* the planted networks' ranks among the components by share of the summed |attribution|
  (``ranks_mass``) and by share of the mean |channel contribution| (``ranks_contribution``,
  what ``saliency_networks.tsv`` reports for the CNN) and by the SVM's Haufe pattern.

Summaries: ``abs`` (the written maps: mean |attribution|) and ``abs-fwhm<F>`` (each subject's
signed map smoothed with a Gaussian of FWHM F mm before the absolute value)::

    OMP_NUM_THREADS=2 python benchmarks/bench_saliency_concentration.py feat.npz TRUTH_DIR \\
        --fwhm 5 10
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _measure import near_planted


def ranks(shares, planted_channels) -> list[int]:
    order = np.argsort(-np.asarray(shares), kind="stable")
    rank = np.empty(len(order), int)
    rank[order] = np.arange(1, len(order) + 1)
    return sorted(int(rank[c]) for c in planted_channels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--fwhm", type=float, nargs="*", default=[])
    parser.add_argument("--inner-folds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from scipy.ndimage import gaussian_filter

    from dpnbids.config import CNNConfig
    from dpnbids.learn import saliency as sal
    from dpnbids.learn.cv import run_nested_cv
    from dpnbids.learn.params import ModelParams, TrainParams
    from dpnbids.learn.splits import make_outer_splits

    data = np.load(args.features)
    x, y = data["x"], data["y"].astype(int)
    subjects = [str(s) for s in data["subjects"]]
    affine, networks = data["affine"], [str(n) for n in data["networks"]]
    effect = json.loads((args.truth / "truth.json").read_text())["params"]["effect_networks"]
    planted = [k for k, n in enumerate(networks) if n in effect]
    cfg = CNNConfig()
    folds = make_outer_splits(subjects, y, n_folds=cfg.folds, random_state=args.seed)
    acc = sal.SaliencyAccumulator("integrated-gradients", x.shape[-1])
    per_subject = []

    def on_fold(fm):
        acc(fm)
        base = np.asarray(fm.x_train, np.float32).mean(axis=0)
        per_subject.append(sal.integrated_gradients(fm.model, fm.x_test, base))

    model_params = ModelParams(dropout=cfg.dropout, dense_units=cfg.dense_units,
                               learning_rate=cfg.learning_rate, epsilon=cfg.adam_epsilon,
                               weight_decay=cfg.weight_decay)
    train_params = TrainParams(epochs=cfg.epochs, batch_size=cfg.batch_size,
                               patience=cfg.patience, min_epochs=cfg.min_epochs,
                               monitor="val_loss",
                               inner_folds=args.inner_folds or cfg.inner_folds)
    started = time.perf_counter()
    res = run_nested_cv(x, y, subjects, folds, model_params=model_params,
                        train_params=train_params, baselines=("svm",),
                        random_state=args.seed, on_fold=on_fold)
    seconds = time.perf_counter() - started
    attr = np.concatenate(per_subject)  # (N, X, Y, Z, K)
    brain = np.abs(x).max(axis=(0, -1)) > 0
    near = near_planted(affine, brain.shape, effect) & brain
    rest = ~near & brain
    pred = res.predictions[res.predictions["model"] == "cnn"]
    from dpnbids.learn.metrics import binary_metrics

    common = {"networks": networks, "planted": planted, "seconds": round(seconds, 1),
              "cnn_auc": round(binary_metrics(pred["true_label"],
                                              pred["probability"])["auc"], 3),
              "ranks_contribution": ranks(np.mean(acc.shares_["cnn"], axis=0), planted),
              "ranks_svm_haufe": ranks(np.mean(acc.shares_["svm-haufe"], axis=0), planted)}
    voxel = float(abs(affine[0, 0]))
    for fwhm in [0.0, *args.fwhm]:
        if fwhm:
            sigma = fwhm / voxel / np.sqrt(8 * np.log(2))
            maps = np.abs(gaussian_filter(attr, sigma=(0, sigma, sigma, sigma, 0)))
        else:
            maps = np.abs(attr)
        mean = maps.mean(axis=0)
        line = {"summary": f"abs-fwhm{fwhm:g}" if fwhm else "abs", **common,
                "ratio_summed": round(float(mean.sum(-1)[near].mean()
                                            / mean.sum(-1)[rest].mean()), 2),
                "ranks_mass": ranks(sal.channel_shares(mean), planted)}
        for k in range(mean.shape[-1]):
            line[f"ratio_{k}_{networks[k]}"] = round(float(mean[..., k][near].mean()
                                                           / mean[..., k][rest].mean()), 2)
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
