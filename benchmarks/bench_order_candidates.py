"""Model-order candidates on cohorts of :mod:`dpnbids.sim.planted` (not dpnbids-synth).

For each generator setting (number of networks, network size, noise colour,
spatial smoothness, denoised or not) one cohort of ``--subjects`` x
``--volumes`` (TR 2 s) is drawn and three estimates are compared:

* ``median-lap``: the per-run estimate combined by the median
  (:func:`dpnbids.analysis.model_order.estimate_group_order`; the default
  before the pooled estimate);
* ``pooled-mp``: the pooled whitened runs with a Marchenko-Pastur edge fitted
  to the bulk's moments (:func:`dpnbids.analysis.group_order.edge_count`; no
  model of spatial smoothness);
* ``pooled-pa``: the pooled whitened runs against a parallel-analysis null with
  the measured smoothness (:func:`dpnbids.analysis.group_order.estimate_pooled_order`,
  the default).

With ``--recovery`` the group ICA (:class:`dpnbids.analysis.decomposition.GroupICA`,
``n_components="auto"``) is fitted too and the worst / median best |r| of the
planted networks is printed. Prints one table row per setting.

Usage::

    python benchmarks/bench_order_candidates.py [--subjects 43] [--volumes 110] [--recovery]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import cpu_model

DENOISED = dict(band=(0.008, 0.09), n_confounds=17)
SETTINGS = [
    ("5 nets, white", dict(n_networks=5)),
    ("11 nets, AR(1) 0.5, FWHM 2, denoised", dict(n_networks=11, noise="ar1", fwhm=2.0,
                                                   **DENOISED)),
    ("11 nets, 1/f, FWHM 2, denoised", dict(n_networks=11, noise="pink", fwhm=2.0, **DENOISED)),
    ("11 nets, AR(1) 0.3, FWHM 2, not denoised", dict(n_networks=11, noise="ar1", ar=0.3,
                                                       fwhm=2.0)),
    ("11 nets, small (SD 1-1.5), 3 weak, denoised", dict(n_networks=11, sizes=(1.0, 1.5),
                                                         weak_fraction=0.27,
                                                         weak_amplitude=0.4, **DENOISED)),
    ("20 nets, AR(1) 0.6, FWHM 1.5, denoised", dict(n_networks=20, noise="ar1", ar=0.6,
                                                     fwhm=1.5, **DENOISED)),
    ("20 nets, white, FWHM 3", dict(n_networks=20, fwhm=3.0)),
    ("null, 1/f, FWHM 2, denoised", dict(n_networks=0, noise="pink", fwhm=2.0, **DENOISED)),
    ("null, AR(1) 0.6, FWHM 2", dict(n_networks=0, noise="ar1", ar=0.6, fwhm=2.0)),
]


def main(argv=None):
    from dpnbids.analysis.decomposition import GroupICA
    from dpnbids.analysis.group_order import (edge_count, estimate_pooled_order, pool_index,
                                              pool_stride, whiten_run)
    from dpnbids.analysis.model_order import estimate_group_order
    from dpnbids.sim.planted import planted_cohort, recovery

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=43)
    ap.add_argument("--volumes", type=int, default=110)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--recovery", action="store_true")
    ap.add_argument("--only", type=int, nargs="*", help="indices of SETTINGS to run")
    args = ap.parse_args(argv)
    print(f"# {cpu_model()}; {args.subjects} subjects x {args.volumes} volumes, TR 2 s, "
          f"4304-voxel ellipsoid, seed {args.seed}")
    print("| setting | planted | median-lap | pooled-mp | pooled-pa | worst / median |r| | "
          "time median-lap / pooled-pa (s) |")
    print("|---|---|---|---|---|---|---|")
    for j, (name, kw) in enumerate(SETTINGS):
        if args.only and j not in args.only:
            continue
        c = planted_cohort(**kw, n_subjects=args.subjects, n_volumes=args.volumes,
                           seed=args.seed)
        t0 = time.perf_counter()
        old = estimate_group_order(c.loader, len(c.runs), c.mask).n_components
        t_old = time.perf_counter() - t0
        t0 = time.perf_counter()
        cols = pool_index(c.mask, c.maps.shape[1], pool_stride(c.mask))
        white = [whiten_run(r[:, cols]) for r in c.runs]
        pa = estimate_pooled_order(None, len(c.runs), c.mask, whitened=white, random_state=0)
        t_pa = time.perf_counter() - t0
        mp = edge_count(pa.eigenvalues)[0]
        rec = ""
        if args.recovery and kw["n_networks"]:
            ica = GroupICA("auto", pca_dim=min(64, args.volumes // 2), random_state=0,
                           mask=c.mask).fit_arrays(c.loader, len(c.runs))
            r = recovery(ica.components_, c.maps)
            rec = f"{r.min():.2f} / {np.median(r):.2f} at {ica.n_components_}"
        print(f"| {name} | {kw['n_networks']} | {old} | {mp} | {pa.n_components} | {rec} | "
              f"{t_old:.1f} / {t_pa:.1f} |", flush=True)


if __name__ == "__main__":
    main()
