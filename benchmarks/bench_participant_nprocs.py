"""The participant level over several subjects with ``--nprocs 1`` against ``--nprocs N``.

Generates one seeded synthetic cohort (``dpnbids.sim``: ``--subjects`` subjects,
``--volumes`` volumes at TR 2.6 s, native space by default, so every subject goes through the
built-in preprocessing: brain mask, normalisation, head motion, coregistration, denoising,
dual regression inputs), then runs ``dpnbids BIDS OUT participant`` on it once per ``--nprocs``
value, each in a fresh output and work folder, with every other flag at its default (the
thread count per process, ``--omp-nthreads``, follows from ``--nprocs`` as the CLI derives
it). Prints one JSON line per run (wall seconds, peak RSS of the process tree, the
``--omp-nthreads`` the run used) and the speed-up of each ``--nprocs`` over the first, from
the median of ``--repeats`` runs taken in turn (1, 2, 1, 2, ...: a shared machine's drift
falls on both). ``--baseline DIR`` also runs the same commands with the dpnbids of another
checkout (e.g. a ``git worktree`` of an older commit) in the same turns, for a before/after
comparison in one run.

Usage::

    python benchmarks/bench_participant_nprocs.py --subjects 10 --nprocs 1 2
    python benchmarks/bench_participant_nprocs.py --space template --repeats 3  # fMRIPrep-style
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout whose dpnbids runs the same commands")
    args = parser.parse_args()

    from dpnbids.sim.generator import SynthParams, generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        half = args.subjects // 2
        synth = generate_dataset(tmp / "bids", SynthParams(
            n_responders=args.subjects - half, n_nonresponders=half, seed=args.seed,
            space=args.space, n_volumes=args.volumes, tr=2.6))
        extra = ["--fmriprep-dir", str(synth.fmriprep_dir)] if args.space == "template" else []
        versions = {"current": None}
        if args.baseline is not None:
            versions["baseline"] = args.baseline.resolve()
        runs = []
        for repeat in range(args.repeats):
            for version, checkout in versions.items():
                env = dict(os.environ)
                if checkout is not None:
                    env["PYTHONPATH"] = str(checkout)
                for nprocs in args.nprocs:
                    out = tmp / f"out_{version}_{nprocs}_{repeat}"
                    cmd = [sys.executable, "-m", "dpnbids.cli.run", str(synth.bids_dir),
                           str(out), "participant", "--skip-bids-validation", "--nprocs",
                           str(nprocs), "-w", str(tmp / f"work_{version}_{nprocs}_{repeat}"),
                           *extra]
                    # cwd outside any checkout: `python -m` puts the cwd first on sys.path,
                    # before PYTHONPATH, so a run started in the repository would import it
                    result = measure(cmd, env=env, cwd=tmp)
                    result.update(version=version, repeat=repeat, nprocs=nprocs,
                                  omp_nthreads=_omp_used(out))
                    runs.append(result)
                    print(json.dumps(result), flush=True)
    summary = {}
    for version in versions:
        median = {n: statistics.median(r["wall_s"] for r in runs
                                       if r["version"] == version and r["nprocs"] == n)
                  for n in args.nprocs}
        base = median[args.nprocs[0]]
        summary[version] = {"median_wall_s": {str(n): round(w, 1) for n, w in median.items()},
                            "speedup": {str(n): round(base / w, 3) for n, w in median.items()}}
    print(json.dumps({"cpu": cpu_model(), "subjects": args.subjects, "volumes": args.volumes,
                      "space": args.space, "repeats": args.repeats, **summary,
                      "all_succeeded": all(r["returncode"] == 0 for r in runs)}))

if __name__ == "__main__":
    main()
