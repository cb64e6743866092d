"""Benchmark: cost of the saliency maps inside the outer CV, relative to the CV itself.

One outer fold of a 43-subject 10-fold CV (39 outer-training, 4-5 test subjects) at the
default CNN grid (5 mm: 32 x 39 x 33) with 30 maps (the paper's ASC) is run through
:func:`dpnbids.learn.cv.run_nested_cv` with the CNN's default settings (the
:class:`dpnbids.config.CNNConfig` defaults: early stopping on the inner-validation loss)
and the baselines, and with a :class:`dpnbids.learn.saliency.SaliencyAccumulator` as
``on_fold``, exactly as the group level runs it. Reported: the fold's wall time, the time
spent in the accumulator (attribution of the test subjects + the SVM's Haufe pattern),
and their ratio. The synthetic maps carry a planted effect (a blob in map 0), so training
runs its natural course.

``--cpus N`` pins the process to N cores before TensorFlow starts (default 2).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--subjects", type=int, default=43)
    parser.add_argument("--channels", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=["integrated-gradients"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cpus:
        os.sched_setaffinity(0, set(range(args.cpus)))
        os.environ["OMP_NUM_THREADS"] = str(args.cpus)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")

    import numpy as np

    from dpnbids.config import CNNConfig
    from dpnbids.learn.cv import run_nested_cv
    from dpnbids.learn.params import ModelParams, TrainParams
    from dpnbids.learn.splits import make_outer_splits
    from dpnbids.learn.model import cnn_grid, default_cnn_voxel_size
    from dpnbids.learn.saliency import DEFAULT_IG_STEPS, SaliencyAccumulator

    import tensorflow as tf

    if args.cpus:
        tf.config.threading.set_intra_op_parallelism_threads(args.cpus)
        tf.config.threading.set_inter_op_parallelism_threads(args.cpus)
    cfg = CNNConfig()
    shape, _ = cnn_grid(default_cnn_voxel_size)
    rng = np.random.default_rng(args.seed)
    n = args.subjects
    y = (np.arange(n) < n // 2).astype(int)
    x = rng.normal(size=(n,) + shape + (args.channels,)).astype(np.float32)
    x[y == 1, 12:18, 15:22, 12:18, 0] += 1.0
    ids = [f"{i:02d}" for i in range(1, n + 1)]
    fold = make_outer_splits(ids, y, n_folds=cfg.folds, random_state=args.seed)[0]
    model_params = ModelParams(dropout=cfg.dropout, dense_units=cfg.dense_units,
                               learning_rate=cfg.learning_rate, epsilon=cfg.adam_epsilon,
                               weight_decay=cfg.weight_decay)
    train_params = TrainParams(epochs=cfg.epochs, batch_size=cfg.batch_size,
                               patience=cfg.patience, min_epochs=cfg.min_epochs,
                               monitor="val_loss")
    rows = []
    for method in args.methods:
        acc = SaliencyAccumulator(method, args.channels)
        started = time.perf_counter()
        res = run_nested_cv(x, y, ids, [fold], model_params=model_params,
                            train_params=train_params, random_state=args.seed, on_fold=acc)
        fold_s = time.perf_counter() - started
        # the SVM refit + Haufe part alone, for the record
        t0 = time.perf_counter()
        from dpnbids.learn.saliency import _linear_svm_weights, haufe_pattern

        outer = [ids.index(s) for s in fold.outer_train_ids]
        xs = x[outer]
        haufe_pattern(xs, _linear_svm_weights(xs, y[outer]))
        haufe_s = time.perf_counter() - t0
        rows.append({"method": method, "ig_steps": DEFAULT_IG_STEPS,
                     "grid": list(shape), "channels": args.channels,
                     "test_subjects": len(fold.test_ids),
                     "outer_training_subjects": len(fold.outer_train_ids),
                     "epochs_trained": res.manifests[0]["epochs_trained"],
                     "fold_s_with_saliency": round(fold_s, 1),
                     "saliency_s": round(acc.seconds_, 1),
                     "of_which_svm_haufe_s_approx": round(haufe_s, 1),
                     "saliency_share_of_cv_without_it":
                         round(acc.seconds_ / (fold_s - acc.seconds_), 3)})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
