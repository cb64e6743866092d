"""Dual regression throughput: 43 subjects inside the 2 mm brain mask, K = 30.

Each subject's data (T x ~235k voxels, float32) are generated before the
clock starts; only :func:`dpnbids.analysis.dual_regression.dual_regression` (stage 1,
stage 2, t -> z) is timed. Prints total and per-subject seconds and the peak
RSS of the process. One process, the BLAS threads the machine gives.

Usage::

    python benchmarks/bench_dual_regression.py [--subjects 43] [--volumes 150] [--res 2]
"""
from __future__ import annotations

import os
import resource
import time

import numpy as np

from bench_migp_memory import benchmark_parser, cpu_model, planted_maps


def main(argv=None):
    # --volumes MIN MAX: volumes per subject drawn uniformly in [min, max]
    parser = benchmark_parser(__doc__, subjects=43, volumes=(100, 200), res=2.0,
                              n_components=30, seed=0)
    args = parser.parse_args(argv)

    from dpnbids.analysis.dual_regression import dual_regression
    from dpnbids.analysis.ica import variance_normalise
    from dpnbids.templates import load_template

    mask = np.asarray(load_template("MNI152NLin2009aSym", args.res, "mask").dataobj) > 0.5
    n_vox = int(mask.sum())
    rng = np.random.default_rng(args.seed)
    k = args.n_components
    maps = planted_maps(n_vox, k, rng)
    group = (maps - maps.mean(1, keepdims=True)) / maps.std(1, keepdims=True)
    noise_sd = np.sqrt(np.clip(1 - (maps ** 2).sum(0), 0.1, None)).astype(np.float32)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
    print(f"{args.subjects} subjects, {args.volumes[0]}-{args.volumes[1]} volumes, "
          f"{n_vox} voxels ({args.res:g} mm), K = {k}, float32")
    times, vols, recov = [], [], []
    for _ in range(args.subjects):
        t = int(rng.integers(args.volumes[0], args.volumes[1] + 1))
        tcs = rng.standard_normal((t, k), dtype=np.float32)
        data = rng.standard_normal((t, n_vox), dtype=np.float32) * noise_sd + tcs @ maps
        data = variance_normalise(data)
        started = time.perf_counter()
        res = dual_regression(data, group)
        times.append(time.perf_counter() - started)
        vols.append(t)
        tc = res.timecourses - res.timecourses.mean(0)
        tt = tcs - tcs.mean(0)
        recov.append(np.median(np.sum(tc * tt, 0) / np.linalg.norm(tc, axis=0)
                               / np.linalg.norm(tt, axis=0)))
        del data, res
    times = np.array(times)
    print(f"total dual regression time: {times.sum():.1f} s for {args.subjects} subjects "
          f"({int(np.sum(vols))} volumes)")
    print(f"per subject: mean {times.mean():.2f} s, median {np.median(times):.2f} s, "
          f"max {times.max():.2f} s")
    print(f"stage-1 time course recovery (median r): {np.median(recov):.3f}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GB")


if __name__ == "__main__":
    main()
