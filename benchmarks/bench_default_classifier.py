"""Issue #16's and #15's acceptance figures, measured through the CLI with DEFAULT flags.

For each cohort: ``dpnbids-synth`` (29 responders, 14 non-responders, 150 volumes; planted:
``--effect-networks`` and ``--effect-size`` as given; null: ``--null``), then
``dpnbids participant`` and ``dpnbids group`` with nothing but the inputs, the work folder
and ``--random-seed`` (and ``--input-sets ASC``, the set the criteria name, to save time;
every other flag is the default: 10 outer folds, up to 100 epochs, ``--n-components auto``,
``--saliency integrated-gradients``). It prints one JSON line per cohort and model with
the pooled AUC, fold-mean AUC, sensitivity, specificity, balanced accuracy and Brier score
from ``group/metrics.tsv``, the linear baselines' permutation p, the ASC saliency map's
concentration near the planted networks and the planted networks' ranks in
``group/saliency_networks.tsv``::

    OMP_NUM_THREADS=2 python benchmarks/bench_default_classifier.py WORKROOT \\
        --cohort planted:13:2.0 --cohort null:14

A cohort is ``planted:SEED:EFFECT_SIZE`` (the generator's default effect networks, the
default-mode and sensorimotor networks, at Cohen's d = EFFECT_SIZE) or ``null:SEED``. Existing
cohort folders under WORKROOT are reused.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

BIN = Path(sys.executable).parent


def _run(cmd) -> None:
    subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.DEVNULL)


def make_cohort(root: Path, spec: str, n_volumes: int) -> tuple[Path, dict]:
    kind, seed, *rest = spec.split(":")
    bids = root / spec.replace(":", "_") / "bids"
    extra = ["--null"] if kind == "null" else ["--effect-size", rest[0]]
    if not (bids / "dataset_description.json").exists():
        _run([BIN / "dpnbids-synth", bids, "--n-responders", 29, "--n-nonresponders", 14,
              "--seed", seed, "--n-volumes", n_volumes, "--n-jobs", 2, *extra])
    return bids, {"cohort": spec, "planted": kind != "null"}


def run_dpnbids(bids: Path, seed: int) -> tuple[Path, dict]:
    out, work = bids.parent / "derivatives", bids.parent / "work"
    common = ["--fmriprep-dir", bids / "derivatives" / "fmriprep", "-w", work,
              "--random-seed", seed]
    seconds = {}
    for level, extra in (("participant", ["--nprocs", 2]), ("group", ["--input-sets", "ASC"])):
        started = time.perf_counter()
        if not (out / "group" / "metrics.tsv").exists() or level == "participant":
            _run([BIN / "dpnbids", bids, out, level, *common, *extra])
        seconds[level] = round(time.perf_counter() - started, 1)
    return out / "group", seconds


def saliency_figures(group: Path, truth_dir: Path) -> dict:
    """Summed ASC |IG| within 8 mm of the planted networks' coordinates over the rest of
    the group mask (the measure of tests/integration/test_e2e_synthetic.py), and the planted
    networks' ranks in saliency_networks.tsv."""
    import nibabel as nib

    from _measure import near_planted

    effect = set(json.loads((truth_dir / "truth.json").read_text())["params"]["effect_networks"])
    mask = np.asarray(nib.load(str(next(group.glob("*_desc-ica_mask.nii.gz")))).dataobj) > 0
    img = nib.load(str(next(group.glob("*_desc-saliencyASC_map.nii.gz"))))
    data = np.asarray(img.dataobj)
    near = near_planted(img.affine, data.shape, effect) & mask
    out = {"saliency_ratio_8mm": round(float(data[near].mean() / data[~near & mask].mean()), 2)}
    table = pd.read_csv(group / "saliency_networks.tsv", sep="\t")
    for model, rows in table[table["input_set"] == "ASC"].groupby("model"):
        ranks = sorted(int(r) for r in rows.loc[rows["network"].isin(effect), "rank"])
        out[f"ranks_{model}"] = f"{ranks} of {len(rows)}"
    return out


def report(group: Path, meta: dict, extra: dict) -> None:
    metrics = pd.read_csv(group / "metrics.tsv", sep="\t")
    perms = pd.read_csv(group / "permutation.tsv", sep="\t") \
        if (group / "permutation.tsv").exists() else None
    for _, row in metrics[metrics["input_set"] == "ASC"].iterrows():
        line = {**meta, "model": row["model"]}
        for key in ("auc", "auc_mean", "sensitivity", "specificity", "balanced_accuracy",
                    "brier"):
            if key in row:
                line[key] = round(float(row[key]), 3)
        if perms is not None and "model" in perms:
            hit = perms[(perms["input_set"] == "ASC") & (perms["model"] == row["model"])]
            if len(hit):
                line["permutation_p"] = round(float(hit["p_value"].iloc[0]), 4)
        print(json.dumps({**line, **(extra if row["model"] == "cnn" else {})}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--cohort", action="append", required=True)
    parser.add_argument("--n-volumes", type=int, default=150)
    parser.add_argument("--random-seed", type=int, default=0)
    args = parser.parse_args()
    for spec in args.cohort:
        bids, meta = make_cohort(args.root, spec, args.n_volumes)
        group, seconds = run_dpnbids(bids, args.random_seed)
        extra = {"seconds": seconds}
        if meta["planted"]:
            extra.update(saliency_figures(group, Path(f"{bids}_truth")))
        report(group, meta, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
