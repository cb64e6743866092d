"""``dpnbids-synth``: write a synthetic BIDS dataset with planted networks and labels.

The generative model is documented in :mod:`dpnbids.sim.generator`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from dpnbids import __version__
from dpnbids.cli import types
from dpnbids.exceptions import DpnbidsError


def _defaults():
    from dpnbids.sim.generator import SynthParams

    return SynthParams()


_positive_int = types.positive_int
_nonneg_float = types.nonneg_float
_positive_float = types.positive_float


def _csv(value: str) -> tuple:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    d = _defaults()
    parser = argparse.ArgumentParser(
        prog="dpnbids-synth",
        description="Write a synthetic resting-state BIDS dataset (T1w + BOLD, participants.tsv "
                    "with a responder label) from a documented generative model, and its "
                    "ground truth in OUT_DIR_truth. See the dpnbids.sim.generator docstring.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="new or empty folder for the BIDS dataset")
    parser.add_argument("--version", action="version", version=f"dpnbids-synth {__version__}")
    g = parser.add_argument_group("cohort and labels")
    g.add_argument("--n-responders", type=_positive_int, default=d.n_responders)
    g.add_argument("--n-nonresponders", type=_positive_int, default=d.n_nonresponders)
    g.add_argument("--seed", type=int, default=d.seed, help="one seed for everything")
    g.add_argument("--null", action="store_true",
                   help="no effect: labels are independent of the images")
    g.add_argument("--effect-size", type=_nonneg_float, default=d.effect_size,
                   help="Cohen's d of the effect networks' map amplitude, responders vs "
                        "non-responders")
    g.add_argument("--effect-networks", type=_csv, default=d.effect_networks,
                   help="comma-separated networks carrying the effect")
    g.add_argument("--networks", type=_csv, default=d.networks,
                   help="comma-separated networks to simulate")
    g = parser.add_argument_group("acquisition")
    g.add_argument("--space", choices=("native", "template"), default=d.space,
                   help="template: images on the MNI grid plus fMRIPrep-style derivatives; "
                        "native: subject space with known transforms")
    g.add_argument("--n-volumes", type=_positive_int, default=d.n_volumes)
    g.add_argument("--tr", type=_positive_float, default=d.tr, help="repetition time (s)")
    g.add_argument("--resolution", type=_positive_float, default=d.template_resolution,
                   help="template grid (mm) of the model and of template-space images")
    g.add_argument("--bold-voxel-size", type=_positive_float, default=d.bold_voxel_size,
                   help="native-space BOLD voxel size (mm)")
    g.add_argument("--t1w-voxel-size", type=_positive_float, default=d.t1w_voxel_size,
                   help="T1w voxel size (mm)")
    g.add_argument("--slice-order", choices=("ascending", "descending", "interleaved"),
                   default=d.slice_order)
    g.add_argument("--n-sessions", type=_positive_int, default=d.n_sessions)
    g.add_argument("--n-runs", type=_positive_int, default=d.n_runs)
    g.add_argument("--task", default=d.task, help="BIDS task label")
    g = parser.add_argument_group("signal and noise")
    g.add_argument("--noise-level", type=_nonneg_float, default=d.noise_level,
                   help="noise SD relative to the peak network signal")
    g.add_argument("--motion-mm", type=_nonneg_float, default=d.motion_mm,
                   help="typical largest head translation (mm)")
    g = parser.add_argument_group("execution")
    g.add_argument("--n-jobs", type=_positive_int, default=1,
                   help="subjects generated in parallel (output does not depend on it)")
    g.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def main(argv=None) -> int:
    """Entry point of ``dpnbids-synth``; returns the exit code."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s dpnbids-synth %(levelname)s: %(message)s")
    log = logging.getLogger("dpnbids.synth")
    try:
        params = SynthParams(
            n_responders=args.n_responders, n_nonresponders=args.n_nonresponders,
            seed=args.seed, null=args.null, space=args.space, n_volumes=args.n_volumes,
            tr=args.tr, template_resolution=args.resolution,
            bold_voxel_size=args.bold_voxel_size, t1w_voxel_size=args.t1w_voxel_size,
            networks=tuple(args.networks), effect_networks=tuple(args.effect_networks),
            effect_size=args.effect_size, noise_level=args.noise_level,
            motion_mm=args.motion_mm, slice_order=args.slice_order,
            n_sessions=args.n_sessions, n_runs=args.n_runs, task=args.task)
        start = time.perf_counter()

        def progress(i, n, sub):
            log.info("subject %d/%d (%s) written", i, n, sub)

        result = generate_dataset(args.out_dir, params, n_jobs=args.n_jobs, progress=progress)
    except DpnbidsError as exc:
        print(f"dpnbids-synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"BIDS dataset: {result.bids_dir}")
    print(f"ground truth: {result.truth_dir}")
    if result.fmriprep_dir is not None:
        print(f"fMRIPrep-style derivatives: {result.fmriprep_dir}")
    log.info("done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
