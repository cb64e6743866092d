"""Participant level on the real studyforrest subject (T1w 274x384x384, 156 BOLD volumes).

Usage: python benchmarks/bench_participant.py [--data ../shared/data/studyforrest] [--nprocs 2]
Prints wall time and peak RSS (whole process tree) of
``dpnbids DATA OUT participant --task-id oneback``.  Targets (issue): <= 5 min, <= 6 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_model, measure


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(repo.parent / "shared" / "data" / "studyforrest"))
    parser.add_argument("--nprocs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "dpnbids.cli.run", args.data, str(out), "participant",
               "--task-id", "oneback", "--skip-bids-validation", "--nprocs", str(args.nprocs),
               "--omp-nthreads", str(args.nprocs), "-w", str(Path(tmp) / "work")]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.nprocs))
        result = measure(cmd, env=env)
        result.update(cpu=cpu_model(), nprocs=args.nprocs,
                      outputs=sorted(str(p.relative_to(out)) for p in out.rglob("*")
                                     if p.is_file() and "logs" not in p.parts))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
