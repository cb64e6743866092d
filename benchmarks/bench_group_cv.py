"""The paper's full CV through the CLI: 43 subjects, 10 folds, 100 epochs, ASC.

Steps (each a real CLI call; timings from the wall clock and ``group/timings.json``):

1. ``dpnbids-synth``: a 43-subject template-space cohort (29 responders, 14
   non-responders as in the paper) at ``--resolution`` mm with ``--volumes`` volumes
   (skipped when ``--data`` already holds one);
2. ``dpnbids ... participant --fmriprep-dir ...``: smoothing, denoising (skipped when
   the outputs exist);
3. ``dpnbids ... group`` with ``--input-sets ASC --folds 10 --epochs 100 --min-epochs 100
   --patience 100``: early stopping can never fire, so every fold trains the full 100
   epochs (the worst case the issue's target is about), plus the linear SVM, logistic
   and majority baselines on the same folds, bootstrap CIs and the final model;
   ``--n-permutations 0``.

Usage::

    python benchmarks/bench_group_cv.py [--data DIR] [--precision float32|mixed]
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import benchmark_parser, cpu_model, measure


def _bin(name: str) -> str:
    cand = Path(sys.executable).with_name(name)
    return str(cand) if cand.exists() else name


def main() -> None:
    ap = benchmark_parser(__doc__, resolution=4.0, volumes=150, epochs=100, folds=10,
                          n_components=30)
    ap.add_argument("--data", type=Path, default=None,
                    help="folder to keep the cohort and participant outputs in (reused)")
    ap.add_argument("--precision", choices=("float32", "mixed"), default="float32")
    ap.add_argument("--nprocs", type=int, default=2)
    args = ap.parse_args()
    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.mkdtemp(prefix="bench_group_cv_")
        root = Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    bids, deriv, work = root / "bids", root / "derivatives", root / "work"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(args.nprocs)))
    result = {"cpu": cpu_model(), "logical_cpus": os.cpu_count()}
    try:
        if not (bids / "dataset_description.json").exists():
            started = time.perf_counter()
            subprocess.run([_bin("dpnbids-synth"), str(bids), "--space", "template",
                            "--seed", "0", "--n-jobs", str(args.nprocs), "--resolution",
                            str(args.resolution), "--n-volumes", str(args.volumes)],
                           check=True, env=env, stdout=subprocess.DEVNULL)
            result["synth_s"] = round(time.perf_counter() - started, 1)
        common = ["--output-resolution", f"{args.resolution:g}", "--fmriprep-dir",
                  str(bids / "derivatives" / "fmriprep"), "-w", str(work), "--random-seed",
                  "0", "--nprocs", str(args.nprocs), "--skip-bids-validation"]
        if not any(deriv.rglob("*desc-denoised_bold.nii.gz")):
            part = measure([_bin("dpnbids"), str(bids), str(deriv), "participant", *common],
                           env=env)
            result["participant"] = {k: part[k] for k in ("wall_s", "peak_tree_rss_gb",
                                                          "returncode")}
        shutil.rmtree(deriv / "group", ignore_errors=True)
        group_cmd = [_bin("dpnbids"), str(bids), str(deriv), "group", *common,
                     "--input-sets", "ASC", "--folds", str(args.folds), "--epochs",
                     str(args.epochs), "--min-epochs", str(args.epochs), "--patience",
                     str(args.epochs), "--n-permutations", "0", "--n-components",
                     str(args.n_components)]
        if args.precision == "mixed":
            group_cmd.append("--mixed-precision")
        group = measure(group_cmd, env=env)
        result["group"] = {k: group[k] for k in ("wall_s", "peak_tree_rss_gb", "returncode")}
        timings_file = deriv / "group" / "timings.json"
        if timings_file.exists():
            timings = json.loads(timings_file.read_text())
            asc = timings.get("ASC", {})
            result["cv_ASC"] = {
                "total_s": round(asc.get("total_s", float("nan")), 1),
                "seconds_per_fold_mean": round(asc.get("seconds_per_fold_mean", float("nan")), 1),
                "seconds_per_epoch_mean": round(asc.get("seconds_per_epoch_mean", float("nan")),
                                                3),
                "folds": args.folds, "epochs": args.epochs, "precision": args.precision}
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
