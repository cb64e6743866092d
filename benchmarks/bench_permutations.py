"""Wall time of the linear baselines' label-permutation test (kernel space).

A cohort shaped like the paper's (43 subjects, 29/14) with stage-2 maps on the default
5 mm CNN grid inside a brain-like mask, ``--folds 10``; prints the time of the Gram
matrices and of N permutations of the whole cross-validation (SVM and logistic regression),
and the figure extrapolated to 1,000::

    OMP_NUM_THREADS=2 python benchmarks/bench_permutations.py --channels 10 --permutations 50
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    from _measure import cpu_model

    from dpnbids.learn.splits import stratified_folds
    from dpnbids.learn.linear import GramCache, permutation_nulls
    from dpnbids.learn.model import cnn_grid

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--permutations", type=int, default=50)
    ap.add_argument("--folds", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shape, _ = cnn_grid(5.0)
    ijk = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    mask = (ijk ** 2).sum(0) < 0.8
    y = np.array([1] * 29 + [0] * 14)
    x = rng.normal(size=(43,) + shape + (args.channels,)).astype(np.float32)
    x *= mask[None, ..., None]
    t0 = time.perf_counter()
    gram = GramCache(x)
    t_gram = time.perf_counter() - t0
    t0 = time.perf_counter()
    permutation_nulls(gram, y, n_permutations=args.permutations, random_state=0,
                      splits_fn=lambda yp: stratified_folds(yp, args.folds, 1),
                      select_fn_for=lambda yp: None)
    t_perm = time.perf_counter() - t0
    print(json.dumps({"cpu": cpu_model(), "subjects": 43, "grid": list(shape),
                      "in_mask_voxels": int(mask.sum()), "channels": args.channels,
                      "folds": args.folds, "gram_s": round(t_gram, 2),
                      "permutations": args.permutations, "permutations_s": round(t_perm, 2),
                      "per_1000_s": round(t_perm / args.permutations * 1000, 1)}))


if __name__ == "__main__":
    main()
