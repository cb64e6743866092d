"""dpnbids GroupICA vs nilearn CanICA on the same synthetic data.

Synthetic data: template-space 4D NIfTI runs inside the MNI152NLin2009aSym
brain mask with planted networks (the Seitzman 2018 network templates of
:func:`dpnbids.analysis.networks.network_templates`, 6 mm Gaussian blobs at the ROIs,
scaled to a peak of 0.7; white noise scaled so every voxel has unit variance;
AR(1) time courses that differ between subjects). If ``dpnbids.sim.generator`` is available
and ``--source synthetic`` is given, its fMRIPrep-style outputs and truth maps
are used instead.

Each method runs in its own subprocess, which reports its wall time and its
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``); recovery is the best
|r| of each planted network against the estimated components (median and min).

Methods (same n_components, no smoothing, both read the NIfTI files):

* ``ours``: :class:`dpnbids.analysis.decomposition.GroupICA` (MIGP, pca_dim 64, one FastICA run);
* ``ours-icasso10``: the same with ``n_repeats=10`` (ICASSO);
* ``ours-auto`` (``--auto``): ``n_components="auto"``, the default; its time
  includes the model-order estimate, and CanICA then runs at the order it chose;
* ``canica``: nilearn ``CanICA`` with its defaults (n_init=10, do_cca=True)
  except ``smoothing_fwhm=None`` and ``threshold=None`` (unthresholded maps,
  like ours, so |r| compares like with like).

Usage::

    python benchmarks/bench_group_ica.py [--subjects 20] [--volumes 150] [--res 4]
    python benchmarks/bench_group_ica.py --auto --subjects 43 --volumes 110
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import benchmark_parser, cpu_model

HERE = Path(__file__).resolve().parent




# ----------------------------------------------------------------------------- data
def make_data(out: Path, *, subjects, volumes, res, n_networks, seed):
    import nibabel as nib

    from dpnbids.templates import load_template

    from dpnbids.analysis.networks import network_templates

    rng = np.random.default_rng(seed)
    mimg = load_template("MNI152NLin2009aSym", res, "mask")
    mask = np.asarray(mimg.dataobj) > 0.5
    tpl_img, names = network_templates(mimg, mask=mask)
    maps = np.moveaxis(np.asarray(tpl_img.dataobj, dtype=np.float32), -1, 0)
    if n_networks < len(names):
        keep = sorted(rng.choice(len(names), n_networks, replace=False))
        maps, names = maps[keep], [names[i] for i in keep]
    maps *= 0.7
    flat = maps[:, mask]
    noise_sd = np.sqrt(np.clip(1 - (flat ** 2).sum(0), 0.1, None)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(subjects):
        e = rng.standard_normal((volumes, n_networks)).astype(np.float32)
        tc = np.empty_like(e)
        tc[0] = e[0]
        for t in range(1, volumes):
            tc[t] = 0.5 * tc[t - 1] + np.sqrt(1 - 0.25) * e[t]
        data = tc @ flat + noise_sd * rng.standard_normal((volumes, flat.shape[1]),
                                                          dtype=np.float32)
        vol4d = np.zeros(mask.shape + (volumes,), dtype=np.float32)
        vol4d[mask] = data.T
        path = out / f"sub-{s:02d}_bold.nii.gz"
        nib.save(nib.Nifti1Image(vol4d, mimg.affine), str(path))
        files.append(str(path))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), mimg.affine), str(out / "mask.nii.gz"))
    np.save(out / "truth.npy", flat)
    (out / "files.json").write_text(json.dumps(files))
    (out / "names.json").write_text(json.dumps(names))


def make_synthetic(out: Path, *, subjects, volumes, res, seed):
    """Use dpnbids.sim.generator (template mode) if present."""
    import nibabel as nib

    from dpnbids.sim import generator as synthetic

    params = synthetic.SynthParams(n_subjects=subjects, n_volumes=volumes, resolution=res,
                                   seed=seed)
    result = synthetic.generate_dataset(out / "synth", params)
    files = sorted(str(p) for p in Path(result.fmriprep_dir).rglob("*desc-preproc_bold.nii.gz"))
    truth_imgs = sorted(Path(result.truth_dir).rglob("*.nii*"))
    truth_img = next(p for p in truth_imgs if "network" in p.name.lower())
    timg = nib.load(str(truth_img))
    first = nib.load(files[0])
    mask = np.asarray(nib.load(str(sorted(Path(result.fmriprep_dir).rglob(
        "*desc-brain_mask.nii.gz"))[0])).dataobj) > 0.5
    truth = np.asarray(timg.dataobj, dtype=np.float32)[mask].T
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), first.affine), str(out / "mask.nii.gz"))
    np.save(out / "truth.npy", truth)
    (out / "files.json").write_text(json.dumps(files))


# ----------------------------------------------------------------------------- methods
def run_method(method: str, data_dir: Path, n_components: int, seed: int,
               pca_dim: int = 64) -> dict:
    import nibabel as nib

    files = json.loads((data_dir / "files.json").read_text())
    mask_img = nib.load(str(data_dir / "mask.nii.gz"))
    mask = np.asarray(mask_img.dataobj) > 0
    started = time.perf_counter()
    extra = {}
    if method.startswith("ours"):
        from dpnbids.analysis.masking import load_run_matrix
        from dpnbids.analysis.decomposition import GroupICA

        repeats = 10 if method.endswith("icasso10") else 1
        auto = method == "ours-auto"  # the default: the order estimated, estimate included
        ica = GroupICA(n_components="auto" if auto else n_components, pca_dim=pca_dim,
                       n_repeats=repeats, random_state=seed, mask=mask if auto else None)
        ica.fit_arrays(lambda i: load_run_matrix(files[i], mask, normalise=False), len(files))
        comps = ica.components_
        extra["n_components"] = int(ica.n_components_)
    elif method == "canica":
        from nilearn.decomposition import CanICA

        canica = CanICA(mask=mask_img, n_components=n_components, smoothing_fwhm=None,
                        threshold=None, random_state=seed, memory_level=0, n_jobs=1)
        canica.fit(files)
        comps = np.asarray(canica.components_img_.dataobj, dtype=np.float32)[mask].T
    else:
        raise SystemExit(f"unknown method {method}")
    wall = time.perf_counter() - started
    np.save(data_dir / f"components_{method}.npy", comps)
    return {"method": method, "wall_s": wall, **extra,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2}


def recovery(truth, comps):
    def z(a):
        a = a - a.mean(1, keepdims=True)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    r = np.abs(z(truth.astype(np.float64)) @ z(comps.astype(np.float64)).T)
    return r.max(axis=1)


def main(argv=None):
    parser = benchmark_parser(__doc__, subjects=20, volumes=150, res=4.0, networks=13,
                              n_components=20, pca_dim=64, seed=0)
    parser.add_argument("--source", choices=("builtin", "synthetic"), default="builtin")
    parser.add_argument("--methods", nargs="+", default=["ours", "ours-icasso10", "canica"])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--auto", action="store_true",
                        help="dpnbids with --n-components auto (the estimate is timed with "
                             "it), then CanICA at the order dpnbids chose")
    args = parser.parse_args(argv)

    if args.run:
        print(json.dumps(run_method(args.run, args.data_dir, args.n_components, args.seed,
                                    args.pca_dim)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        started = time.perf_counter()
        if args.source == "synthetic":
            make_synthetic(data_dir, subjects=args.subjects, volumes=args.volumes,
                           res=args.res, seed=args.seed)
        else:
            make_data(data_dir, subjects=args.subjects, volumes=args.volumes, res=args.res,
                      n_networks=args.networks, seed=args.seed)
        truth = np.load(data_dir / "truth.npy")
        print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs)")
        print(f"data ({args.source}): {args.subjects} subjects x {args.volumes} volumes x "
              f"{truth.shape[1]} voxels ({args.res:g} mm), {truth.shape[0]} planted networks; "
              f"generated in {time.perf_counter() - started:.1f} s; "
              f"n_components = {args.n_components}, pca_dim (ours) = {args.pca_dim}")
        print(f"{'method':<16}{'wall s':>9}{'peak RSS GB':>13}{'median |r|':>12}{'min |r|':>9}"
              f"{'n |r|>=0.9':>12}")
        methods = ["ours-auto", "canica"] if args.auto else args.methods
        for method in methods:
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--run", method, "--data-dir",
                 str(data_dir), "--n-components", str(args.n_components), "--seed",
                 str(args.seed), "--pca-dim", str(args.pca_dim)], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{method}: failed\n{proc.stderr[-2000:]}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if method == "ours-auto":  # CanICA runs at the order dpnbids chose
                args.n_components = res["n_components"]
                print(f"ours-auto chose {args.n_components} components")
            best = recovery(truth, np.load(data_dir / f"components_{method}.npy"))
            print(f"{method:<16}{res['wall_s']:>9.1f}{res['peak_rss_gb']:>13.2f}"
                  f"{np.median(best):>12.3f}{best.min():>9.3f}"
                  f"{int((best >= 0.9).sum()):>7d}/{best.size}")


if __name__ == "__main__":
    main()
