"""Signal steps on the real studyforrest BOLD and a template-space series.

Usage: python benchmarks/bench_signal.py [--bold PATH] [--resolution 2] [--seed 0]

Native space (the real run, 80x80x35x156, Philips int16): ``load_bold`` (full
read and checks), ``detect_nonsteady_states``, ``slice_time_correct``
(Fourier, ascending order). Template space (MNI152NLin2009aSym brain mask at
``--resolution`` mm, random series with as many volumes): ``compute_confounds``
(with WM/CSF tissue maps), ``smooth`` (5 mm), ``denoise`` (``conn``, FFT
band-pass). Prints JSON: seconds per step and the process's peak RSS.
Run with OMP_NUM_THREADS=2 to match the 2-core target.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_model

DEFAULT_BOLD = (Path(__file__).resolve().parents[2] / "shared" / "data" / "studyforrest"
                / "sub-01" / "func" / "sub-01_task-oneback_bold.nii.gz")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bold", type=Path, default=DEFAULT_BOLD)
    ap.add_argument("--resolution", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from dpnbids.preproc.checks import load_bold
    from dpnbids.preproc.confounds import compute_confounds
    from dpnbids.preproc.denoise import denoise
    from dpnbids.preproc.signal import (detect_nonsteady_states, slice_time_correct,
                                        slice_timing_from_order, smooth)
    from dpnbids.templates import load_template

    times = {}

    def timed(name, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        times[name] = round(time.perf_counter() - t0, 3)
        return out

    meta = json.loads(args.bold.with_name(args.bold.name.replace(".nii.gz", ".json"))
                      .read_text())
    img, tr = timed("load_bold", load_bold, args.bold, sidecar=meta, min_volumes=50)
    n_dummy = timed("detect_nonsteady_states", detect_nonsteady_states, img)
    st = slice_timing_from_order(img.shape[2], tr, "ascending")
    timed("slice_time_correct", slice_time_correct, img, st, tr)
    n_t = img.shape[3]
    del img

    rng = np.random.default_rng(args.seed)
    mask_img = load_template("MNI152NLin2009aSym", args.resolution, "mask")
    wm = load_template("MNI152NLin2009aSym", args.resolution, "WM")
    csf = load_template("MNI152NLin2009aSym", args.resolution, "CSF")
    mask = np.asanyarray(mask_img.dataobj) > 0.5
    data = np.zeros(mask.shape + (n_t,), np.float32)
    data[mask] = rng.normal(1000, 10, (int(mask.sum()), n_t)).astype(np.float32)
    bold = nib.Nifti1Image(data, mask_img.affine)
    motion = np.cumsum(rng.normal(0, 0.02, (n_t, 6)), axis=0) * [1, 1, 1, .01, .01, .01]
    conf = timed("compute_confounds", compute_confounds, bold, mask_img, motion_params=motion,
                 wm_img=wm, csf_img=csf, tr=tr, n_dummy=0)
    smoothed = timed("smooth_5mm", smooth, bold, 5.0)
    timed("denoise_conn", denoise, smoothed, conf, mask_img, tr, strategy="conn")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"cpu": cpu_model(), "bold_volumes": n_t, "n_dummy": n_dummy,
                      "template_grid": list(mask.shape), "brain_voxels": int(mask.sum()),
                      "seconds": times, "total_s": round(sum(times.values()), 2),
                      "peak_rss_mb": round(peak_mb)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
