"""Anatomical preprocessing (``preprocess_anat``) on the real studyforrest T1w.

Usage: python benchmarks/bench_anat.py [--t1w PATH] [--nthreads 2] [--seed 0]

Runs ``dpnbids.preproc.anat.preprocess_anat`` in a child process (fresh
interpreter, templates seeded into a temporary TEMPLATEFLOW_HOME beforehand so
seeding is not timed) and prints wall time, peak RSS of the process tree, the
normalised-mask Dice and the registration cost as JSON.  The T1w is 274x384x384
(0.7x0.67x0.67 mm, oblique, Philips-scaled int16).  Share of the per-subject
targets (issue 3: <= 5 min, <= 6 GB with the BOLD part).
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

_CHILD = """
import json, sys
from dpnbids.preproc.anat import preprocess_anat
res = preprocess_anat(sys.argv[1], sys.argv[2], omp_nthreads=int(sys.argv[3]),
                      random_seed=int(sys.argv[4]))
with open(sys.argv[5], "w") as fh:
    json.dump({"dice_std_mask": res.dice_std_mask, "registration_cost": res.registration_cost,
               "warnings": res.warnings}, fh)
"""


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    default = repo.parent / "shared" / "data" / "studyforrest" / "sub-01" / "anat" \
        / "sub-01_T1w.nii.gz"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--t1w", default=str(default))
    parser.add_argument("--nthreads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TEMPLATEFLOW_HOME=str(Path(tmp) / "templateflow"),
                   OMP_NUM_THREADS=str(args.nthreads),
                   ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(args.nthreads))
        os.environ["TEMPLATEFLOW_HOME"] = env["TEMPLATEFLOW_HOME"]
        from dpnbids.templates import get_template

        for kind in ("T1w", "mask", "GM", "WM", "CSF"):  # seed outside the timed run
            get_template("MNI152NLin2009aSym", 2.0, kind)
        summary = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-c", _CHILD, args.t1w, str(Path(tmp) / "anat"),
               str(args.nthreads), str(args.seed), str(summary)]
        result = measure(cmd, env=env)
        if summary.exists():
            result.update(json.loads(summary.read_text()))
    result.update(cpu=cpu_model(), nthreads=args.nthreads, t1w=args.t1w)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
