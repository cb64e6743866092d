"""Wall time and peak memory of the synthetic generator on its defaults (the README demo).

Usage: python benchmarks/bench_synthetic.py [--n-jobs N] [--space template|native]
Prints one line per configuration. Writes into a temporary folder that is removed.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from dpnbids.sim.generator import SynthParams, generate_dataset


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--space", default="template", choices=("template", "native"))
    args = parser.parse_args()
    params = SynthParams(space=args.space)
    for n_jobs in args.n_jobs:
        tmp = Path(tempfile.mkdtemp(prefix="dpnbids-bench-"))
        try:
            start = time.perf_counter()
            res = generate_dataset(tmp / "ds", params, n_jobs=n_jobs)
            wall = time.perf_counter() - start
            size = _size_mb(res.bids_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        n_sub = params.n_responders + params.n_nonresponders
        print(f"space={args.space} subjects={n_sub} volumes={params.n_volumes} "
              f"res={params.template_resolution:g}mm n_jobs={n_jobs}: wall {wall:.1f} s, "
              f"{size:.0f} MB written, peak RSS parent {peak:.0f} MB / worker "
              f"{peak_children:.0f} MB")


if __name__ == "__main__":
    main()
