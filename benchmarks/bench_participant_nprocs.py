"""The participant level over several subjects with ``--nprocs 1`` against ``--nprocs N``.

Generates one seeded synthetic cohort (``dpnbids.sim``: ``--subjects`` subjects,
``--volumes`` volumes at TR 2.6 s, native space by default, so every subject goes through the
built-in preprocessing: brain mask, normalisation, head motion, coregistration, denoising,
dual regression inputs), then runs ``dpnbids BIDS OUT participant`` on it once per ``--nprocs``
value, each in a fresh output and work folder, with every other flag at its default (the
thread count per process, ``--omp-nthreads``, follows from ``--nprocs`` as the CLI derives
it). Prints one JSON line per run (wall seconds, peak RSS of the process tree, the
``--omp-nthreads`` the run used) and the speed-up of each run over the first.

Usage::

    python benchmarks/bench_participant_nprocs.py --subjects 10 --nprocs 1 2
    python benchmarks/bench_participant_nprocs.py --space template   # fMRIPrep-style inputs
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_model, measure


def _omp_used(out: Path) -> int | None:
    """``omp_nthreads`` from the run's dumped configuration (OUT/logs/config-*.toml)."""
    for path in sorted((out / "logs").glob("config-*.toml")):
        return tomllib.loads(path.read_text())["execution"]["omp_nthreads"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=10)
    parser.add_argument("--volumes", type=int, default=110)
    parser.add_argument("--space", choices=("native", "template"), default="native")
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dpnbids.sim.generator import SynthParams, generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        half = args.subjects // 2
        synth = generate_dataset(tmp / "bids", SynthParams(
            n_responders=args.subjects - half, n_nonresponders=half, seed=args.seed,
            space=args.space, n_volumes=args.volumes, tr=2.6))
        extra = ["--fmriprep-dir", str(synth.fmriprep_dir)] if args.space == "template" else []
        runs = []
        for nprocs in args.nprocs:
            out = tmp / f"out_{nprocs}"
            cmd = [sys.executable, "-m", "dpnbids.cli.run", str(synth.bids_dir), str(out),
                   "participant", "--skip-bids-validation", "--nprocs", str(nprocs),
                   "-w", str(tmp / f"work_{nprocs}"), *extra]
            result = measure(cmd)
            result.update(nprocs=nprocs, omp_nthreads=_omp_used(out))
            runs.append(result)
            print(json.dumps(result), flush=True)
    base = runs[0]["wall_s"]
    print(json.dumps({"cpu": cpu_model(), "subjects": args.subjects, "volumes": args.volumes,
                      "space": args.space,
                      "speedup": {str(r["nprocs"]): round(base / r["wall_s"], 3) for r in runs},
                      "all_succeeded": all(r["returncode"] == 0 for r in runs)}))


if __name__ == "__main__":
    main()
