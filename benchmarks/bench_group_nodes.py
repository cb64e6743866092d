"""The group level's learning nodes under different nipype plugins, on one small input.

Builds a seeded random cohort of CNN inputs (``--subjects`` subjects, a ``--grid``^3
grid, ``--channels`` maps, half responders), plans its outer folds and CNN label
permutations exactly as the group level does (:func:`dpnbids.workflows.group_cv.
init_group_cv_wf`: ``cv_asc_foldNN``, ``perm_asc_blockNN``, ``final_asc``, the join) and
runs the same plan with each ``--plugins`` entry in its own work folder:

* ``Linear``: one node after the other in this process (serial);
* ``MultiProc2``: MultiProc, 2 processes (folds side by side);
* ``SLURM``: nipype's SLURM plugin with ``tools/slurm/plugin.yml``; needs ``SLURM_CONF``
  (e.g. the test suite's one-node cluster, ``python tests/slurm_cluster.py``-style).

It prints one JSON line per plugin (wall seconds, nodes) and the ratios against the
first plugin, and checks that every plugin's pooled predictions are byte-identical.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_group_nodes.py --folds 4 --permutations 0 \\
        --plugins Linear MultiProc2
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _measure import cpu_model  # noqa: E402


def _plan(folder: Path, args):
    from dpnbids.config import derive_seed
    from dpnbids.learn.splits import make_outer_splits
    from dpnbids.learn.jobs import PERMUTATIONS_PER_BLOCK, fold_to_dict, write_job_inputs
    from dpnbids.workflows.group_cv import GroupPlan, Job

    rng = np.random.default_rng(0)
    n, g = args.subjects, args.grid
    y = np.array([1, 0] * (n // 2))
    x = rng.normal(0, 1, (n, g, g, g, args.channels)).astype(np.float32)
    x[y == 1, g // 3:g // 2, g // 3:g // 2, g // 3:g // 2, 0] += 1.0
    subjects = [f"{i:02d}" for i in range(n)]
    inputs = write_job_inputs(folder, {"ASC": x}, subjects, y,
                              rng.normal(0, 1, (n, args.channels)))
    base = {"name": "ASC", "selection": "all", "ssc_p": 0.05, "threshold_rule": "youden",
            "model_params": {}, "train_params": {"epochs": args.epochs, "batch_size": 4,
                                                 "patience": args.patience,
                                                 "min_epochs": args.min_epochs}}
    fold_spec = json.dumps({**base, "tune": False, "cv_seed": derive_seed(0, "cv.ASC"),
                            "saliency": {"method": "none"}}, sort_keys=True)
    perm_spec = json.dumps({**base, "n_folds": args.folds, "n_permutations": args.permutations,
                            "perm_seed": derive_seed(0, "perm.ASC"),
                            "perm_splits_seed": derive_seed(0, "cv.perm.splits"),
                            "perm_cv_seed": derive_seed(0, "cv.perm.ASC"),
                            "n_permutations_baselines": 0}, sort_keys=True)
    folds = make_outer_splits(subjects, y, n_folds=args.folds, random_state=1)
    fold_jobs = [Job(f"cv_asc_fold{f.fold:02d}", inputs["ASC"], fold_spec, 1.5,
                     fold=json.dumps(fold_to_dict(f), sort_keys=True)) for f in folds]
    n_blocks = -(-args.permutations // PERMUTATIONS_PER_BLOCK)
    perms = [Job(f"perm_asc_block{b:02d}", inputs["ASC"], perm_spec, 1.5, block=b)
             for b in range(n_blocks)]
    if perms:
        perms.insert(0, Job("perm_asc_observed", inputs["ASC"], perm_spec, 1.5, block=-1))
    settings = json.dumps({"random_seed": 0, "n_bootstrap": 20, "threshold_rule": "youden",
                           "sets": []})
    return GroupPlan(cohort=inputs["cohort"], summaries=inputs["summaries"],
                     folds=fold_jobs, permutations=perms, final=None, settings=settings,
                     n_threads=1, node_plugin_args={})


def _plugin(name: str):
    if name == "Linear":
        return "Linear", {}
    if name.startswith("MultiProc"):
        return "MultiProc", {"n_procs": int(name[len("MultiProc"):] or 2),
                             "mp_context": "forkserver", "raise_insufficient": False,
                             "maxtasksperchild": 1}
    import yaml

    data = yaml.safe_load((REPO / "tools" / "slurm" / "plugin.yml").read_text())
    return data["plugin"], data["plugin_args"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=14)
    parser.add_argument("--grid", type=int, default=12, help="at least 11 (VoxNet)")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--min-epochs", type=int, default=0,
                        help="epochs before early stopping may stop a fold (the CLI's is 10)")
    parser.add_argument("--permutations", type=int, default=0)
    parser.add_argument("--plugins", nargs="+", default=["Linear", "MultiProc2"])
    args = parser.parse_args()
    import getpass
    import os

    from nipype import config as ncfg

    # nipype's batch plugins name each job after $LOGNAME (dpnbids.config.prepare_nipype
    # sets it the same way for the app)
    os.environ.setdefault("LOGNAME", getpass.getuser())

    from dpnbids.workflows.group_cv import init_group_cv_wf

    root = Path(tempfile.mkdtemp(prefix="bench_group_nodes_"))
    plan = _plan(root / "inputs", args)
    results, predictions = [], {}
    for name in args.plugins:
        plugin, plugin_args = _plugin(name)
        ncfg.update_config({"execution": {"hash_method": "content",
                                          "poll_sleep_duration": 0.05
                                          if plugin != "SLURM" else 1}})
        started = time.perf_counter()
        graph = init_group_cv_wf(plan, root / name).run(plugin=plugin,
                                                        plugin_args=plugin_args)
        seconds = time.perf_counter() - started
        pool = next(n for n in graph.nodes() if n.name == "pool_results")
        predictions[name] = (Path(pool.result.outputs.out_dir) / "predictions.tsv").read_bytes()
        results.append({"plugin": name, "wall_s": round(seconds, 1),
                        "nodes": len(plan.folds) + len(plan.permutations)})
        print(json.dumps(results[-1]), flush=True)
    first = results[0]
    print(json.dumps({"cpu": cpu_model(), "subjects": args.subjects, "grid": args.grid,
                      "folds": args.folds, "permutations": args.permutations,
                      "epochs": args.epochs,
                      "ratios_vs_" + first["plugin"]: {r["plugin"]: round(first["wall_s"]
                                                                          / r["wall_s"], 2)
                                                       for r in results[1:]},
                      "predictions_identical": len(set(predictions.values())) == 1}))


if __name__ == "__main__":
    main()
