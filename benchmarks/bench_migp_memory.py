"""MIGP memory benchmark: group ICA of many subjects generated on the fly.

Default: 100 subjects x 200 volumes inside the 2 mm MNI152NLin2009aSym brain
mask (~235k voxels), float32, --pca-dim 64, --n-components 30. Subjects are
produced by the loader when MIGP asks for them and never stored, so the peak
resident memory measures the algorithm, not the dataset (which would be
100 x 200 x 235k x 4 B = 18.8 GB).

Prints wall time, peak RSS (``resource.getrusage``) and the recovery of the
planted maps (best |r| per planted map).

Usage::

    python benchmarks/bench_migp_memory.py [--subjects 100] [--volumes 200] [--res 2]
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import benchmark_parser, cpu_model




def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def planted_maps(n_voxels, n_sources, rng):
    """Sparse non-negative maps (each on ~8% of voxels) with values in [0.3, 0.8]."""
    maps = np.zeros((n_sources, n_voxels), dtype=np.float32)
    for k in range(n_sources):
        idx = rng.choice(n_voxels, int(0.08 * n_voxels), replace=False)
        maps[k, idx] = rng.uniform(0.3, 0.8, idx.size)
    return maps


def main(argv=None):
    parser = benchmark_parser(__doc__, subjects=100, volumes=200, res=2.0, sources=20,
                              pca_dim=64, n_components=30, seed=0)
    args = parser.parse_args(argv)

    from dpnbids.analysis.decomposition import GroupICA
    from dpnbids.templates import load_template

    mask = np.asarray(load_template("MNI152NLin2009aSym", args.res, "mask").dataobj) > 0.5
    n_vox = int(mask.sum())
    del mask
    rng = np.random.default_rng(args.seed)
    maps = planted_maps(n_vox, args.sources, rng)
    noise_sd = np.sqrt(np.clip(1 - (maps ** 2).sum(0), 0.1, None)).astype(np.float32)
    seeds = rng.integers(0, 2**31 - 1, size=args.subjects)
    generated = {"n": 0, "s": 0.0}

    def loader(i):
        started = time.perf_counter()
        r = np.random.default_rng(int(seeds[i]))
        data = r.standard_normal((args.volumes, n_vox), dtype=np.float32)
        data *= noise_sd
        data += r.standard_normal((args.volumes, args.sources), dtype=np.float32) @ maps
        generated["n"] += 1
        generated["s"] += time.perf_counter() - started
        return data

    print(f"CPU: {cpu_model()} ({__import__('os').cpu_count()} logical CPUs)")
    print(f"data: {args.subjects} subjects x {args.volumes} volumes x {n_vox} voxels "
          f"({args.res:g} mm), float32; full concatenation would be "
          f"{args.subjects * args.volumes * n_vox * 4 / 1e9:.1f} GB")
    rss0 = peak_rss_gb()
    started = time.perf_counter()
    ica = GroupICA(n_components=args.n_components, pca_dim=args.pca_dim, random_state=args.seed)
    ica.fit_arrays(loader, args.subjects)
    wall = time.perf_counter() - started
    z = (maps - maps.mean(1, keepdims=True)) / maps.std(1, keepdims=True)
    c = ica.components_
    best = np.abs(z @ c.T / n_vox).max(axis=1)
    print(f"peak RSS before fit: {rss0:.2f} GB")
    print(f"peak RSS: {peak_rss_gb():.2f} GB (target <= 4 GB)")
    print(f"wall time: {wall:.1f} s, of which generating data {generated['s']:.1f} s; "
          f"group ICA alone {wall - generated['s']:.1f} s "
          f"({(wall - generated['s']) / args.subjects:.2f} s per subject)")
    print(f"planted map recovery, best |r|: median {np.median(best):.3f}, min {best.min():.3f}")


if __name__ == "__main__":
    main()
