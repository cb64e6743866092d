"""Head-motion correction: dpnbids (antspyx rigid, per volume) vs nipy's SpaceTimeRealign.

Usage: OMP_NUM_THREADS=2 python benchmarks/bench_hmc.py [--bold PATH] [--nthreads 2]

Both run on the same real BOLD (studyforrest sub-01, 80x80x35x156, oblique,
Philips-scaled int16), each in its own child process, which reports its wall
time and peak RSS (``getrusage``). dpnbids is timed as the participant level
runs it: ``estimate_head_motion`` (median reference) plus
``slice_time_correct`` (ascending; the run has no SliceTiming), because
SpaceTimeRealign corrects slice timing and motion jointly. nipy is not a
dependency of dpnbids: ``pip install nipy`` into the venv to run this.

Agreement: framewise displacement (Power, 50 mm) of both estimates, their
Pearson r and the median absolute FD difference, printed as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import cpu_model

DEFAULT_BOLD = (Path(__file__).resolve().parents[2] / "shared" / "data" / "studyforrest"
                / "sub-01" / "func" / "sub-01_task-oneback_bold.nii.gz")

_OURS = r"""
import json, resource, sys, time
import numpy as np
from dpnbids.preproc.bold import estimate_head_motion
from dpnbids.preproc.checks import load_bold
from dpnbids.preproc.signal import slice_time_correct, slice_timing_from_order
bold, out, nthreads = sys.argv[1], sys.argv[2], int(sys.argv[3])
meta = json.loads(open(bold.replace(".nii.gz", ".json")).read())
t0 = time.perf_counter()
img, tr = load_bold(bold, sidecar=meta, min_volumes=10)
st = slice_timing_from_order(img.shape[2], tr, "ascending")
slice_time_correct(img, st, tr)
t_stc = time.perf_counter() - t0
res = estimate_head_motion(bold, out, omp_nthreads=nthreads)
wall = time.perf_counter() - t0
np.save(out + "/ours.npy", res.params)
print(json.dumps({"wall_s": round(wall, 1), "stc_s": round(t_stc, 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}))
"""

_NIPY = r"""
import json, resource, sys, time
import nibabel as nib
import numpy as np
from nipy.algorithms.registration import SpaceTimeRealign
bold, out = sys.argv[1], sys.argv[2]
meta = json.loads(open(bold.replace(".nii.gz", ".json")).read())
t0 = time.perf_counter()
img = nib.load(bold)
img = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
r = SpaceTimeRealign(img, tr=float(meta["RepetitionTime"]), slice_times="ascending",
                     slice_info=2)
r.estimate(refscan=None)
params = np.array([np.r_[t.translation, t.rotation] for t in r._transforms[0]])
wall = time.perf_counter() - t0
np.save(out + "/nipy.npy", params)
print(json.dumps({"wall_s": round(wall, 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)}))
"""


def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    d = np.abs(np.diff(params, axis=0))
    return np.r_[0.0, d[:, :3].sum(1) + radius * d[:, 3:].sum(1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bold", type=Path, default=DEFAULT_BOLD)
    ap.add_argument("--nthreads", type=int, default=2)
    args = ap.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.nthreads),
           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(args.nthreads)}
    result = {"cpu": cpu_model(), "bold": str(args.bold)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, code, extra in (("dpnbids", _OURS, [str(args.nthreads)]), ("nipy", _NIPY, [])):
            proc = subprocess.run([sys.executable, "-c", code, str(args.bold), tmp, *extra],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        ours = np.load(Path(tmp) / "ours.npy")
        nipy = np.load(Path(tmp) / "nipy.npy")
    fd_o, fd_n = framewise_displacement(ours), framewise_displacement(nipy)
    result["agreement"] = {
        "fd_mean_mm": {"dpnbids": round(float(fd_o.mean()), 3), "nipy": round(float(fd_n.mean()), 3)},
        "fd_pearson_r": round(float(np.corrcoef(fd_o[1:], fd_n[1:])[0, 1]), 3),
        "fd_median_abs_diff_mm": round(float(np.median(np.abs(fd_o - fd_n))), 3),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
