"""FastICA contrast at clinical length: network recovery and convergence over seeds.

Builds (or reuses, ``--data-dir``) a 43-subject synthetic cohort (29/14) of
110-volume runs at TR 2 s, 4 mm, runs the dpnbids participant level on its
fMRIPrep-style outputs with default flags (``conn`` denoising, ~19 dof per
run), computes MIGP once, and then runs FastICA at ``--n-components`` (default
5, the estimated order) with each contrast and several seeds. It prints, per
contrast and seed, FastICA's iterations (``max_iter`` means it stopped without
converging), the best |r| of each planted network against the planted maps x
grey matter smoothed 5 mm (as ``tests/acceptance/test_e2e_clinical_length.py`` scores them),
the total negentropy, and the best |r| reachable in the K-dimensional PCA
subspace (the ceiling of any rotation).

Usage::

    python benchmarks/bench_ica_contrast.py [--data-dir DIR] [--seeds 5]
        [--n-components 5] [--max-iter 200]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import cpu_model

SPACE = "MNI152NLin2009aSym"


def _unit_rows(a):
    a = a - a.mean(axis=1, keepdims=True)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def prepare(root: Path) -> None:
    """Synthetic cohort + participant level (skipped when ``root/out`` exists)."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    if (root / "out").exists():
        return
    params = SynthParams(n_responders=29, n_nonresponders=14, seed=21, n_volumes=110, tr=2.0,
                         template_resolution=4.0, effect_size=3.0)
    synth = generate_dataset(root / "bids", params, n_jobs=2)
    subprocess.run([sys.executable, "-m", "dpnbids.cli.run", str(synth.bids_dir),
                    str(root / "out"), "participant", "--fmriprep-dir", str(synth.fmriprep_dir),
                    "--skip-bids-validation", "-w", str(root / "work")], check=True)


def load(root: Path):
    """(group PCA maps, planted reference maps) of the cohort under ``root``."""
    import nibabel as nib

    from dpnbids.workflows.inputs import find_participant_outputs
    from dpnbids.analysis.masking import group_mask, load_run_matrix
    from dpnbids.analysis.ica import _migp, variance_normalise
    from dpnbids.preproc.signal import smooth
    from dpnbids.templates import load_template

    out = root / "out"
    subs = sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
    runs = find_participant_outputs(out, subs, task="rest", space=SPACE)
    mask = group_mask(runs, space=SPACE, resolution=4)
    truth = nib.load(str(root / "bids_truth" / "group_maps.nii.gz"))
    gm = np.asarray(load_template(SPACE, 4, "GM").dataobj, dtype=np.float32)
    planted = smooth(nib.Nifti1Image(np.asarray(truth.dataobj) * gm[..., None], truth.affine),
                     5.0)
    ref = np.moveaxis(np.asarray(planted.dataobj), -1, 0)[:, mask]
    res = _migp(lambda i: variance_normalise(load_run_matrix(runs[i].denoised, mask,
                                                             normalise=False)),
                len(runs), dim=64, internal_dim=None, random_state=0, subject_ids=None)
    return res.maps[:64].astype(np.float64), ref


def main(argv=None) -> int:
    from sklearn.decomposition import FastICA

    from dpnbids.analysis.ica import _skew_contrast, fastica, negentropy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-components", type=int, default=5)
    parser.add_argument("--max-iter", type=int, default=200)
    args = parser.parse_args(argv)
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="dpnbids-contrast-"))
    t0 = time.time()
    prepare(root)
    z, ref = load(root)
    k = args.n_components
    ceiling = np.linalg.norm(_unit_rows(ref) @ np.linalg.svd(z - z.mean(1, keepdims=True),
                                                             full_matrices=False)[2][:k].T,
                             axis=1)
    print(f"CPU: {cpu_model()}; data ready in {time.time() - t0:.0f} s; {z.shape[1]} voxels")
    print(f"ceiling in the {k}-dim PCA subspace: {np.round(ceiling, 3)}")
    print(f"{'contrast':8} {'seed':>4} {'iter':>5} {'negentropy':>10}  best |r| per network")
    warnings.simplefilter("ignore")
    for name in ("cube", "logcosh", "exp", "skew", "auto"):
        for seed in range(args.seeds):
            if name == "auto":
                comps, _ = fastica(z, k, random_state=seed, max_iter=args.max_iter)
                n_iter = "-"
            else:
                ica = FastICA(k, whiten="unit-variance", whiten_solver="eigh",
                              fun=_skew_contrast if name == "skew" else name,
                              max_iter=args.max_iter, random_state=seed)
                comps = ica.fit_transform(z.T).T
                n_iter = ica.n_iter_
            r = np.abs(_unit_rows(ref) @ _unit_rows(comps).T).max(axis=1)
            print(f"{name:8} {seed:>4} {n_iter:>5} {negentropy(comps).sum() * 1e3:>10.3f}  "
                  f"{np.round(r, 3)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
