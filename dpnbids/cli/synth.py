"""``dpnbids-synth``: write a synthetic BIDS dataset with planted networks and labels.

The generative model is documented in :mod:`dpnbids.sim.generator`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from dpnbids import __version__
from dpnbids.cli import types
from dpnbids.exceptions import DpnbidsError


def _csv(value: str) -> tuple:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {value!r}")
    return items


def _cli_fields():
    """(field, its CLI metadata) of every SynthParams field that dpnbids-synth exposes."""
    from dpnbids.sim.params import SynthParams

    return [(f, f.metadata["cli"]) for f in dataclasses.fields(SynthParams)
            if "cli" in f.metadata]


def _add_field(group, f, cli) -> None:
    """One SynthParams field as an option: flag, type and help from its metadata, default
    from the dataclass."""
    flag = cli["flag"] or "--" + f.name.replace("_", "-")
    kwargs = {"dest": f.name, "help": cli["help"] or None}
    if f.type in ("bool", bool):
        group.add_argument(flag, action="store_true", **kwargs)
        return
    kind = cli["kind"]
    if kind:
        kwargs["type"] = {"csv": _csv, "int": int}.get(kind) or getattr(types, kind)
    if cli["choices"]:
        kwargs["choices"] = cli["choices"]
    else:
        kwargs["metavar"] = flag[2:].upper().replace("-", "_")
    group.add_argument(flag, default=f.default, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The dpnbids-synth parser: one option per exposed SynthParams field (its metadata
    says how), plus the output folder and the execution options."""
    from dpnbids.sim.params import CLI_GROUPS

    parser = argparse.ArgumentParser(
        prog="dpnbids-synth",
        description="Write a synthetic resting-state BIDS dataset (T1w + BOLD, participants.tsv "
                    "with a responder label) from a documented generative model, and its "
                    "ground truth in OUT_DIR_truth. See the dpnbids.sim.generator docstring.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="new or empty folder for the BIDS dataset")
    parser.add_argument("--version", action="version", version=f"dpnbids-synth {__version__}")
    groups = {name: parser.add_argument_group(name) for name in CLI_GROUPS}
    for f, cli in _cli_fields():
        _add_field(groups[cli["group"]], f, cli)
    g = parser.add_argument_group("execution")
    g.add_argument("--n-jobs", type=types.positive_int, default=1,
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
    log = logging.getLogger(__name__)
    try:
        params = SynthParams(**{f.name: getattr(args, f.name) for f, _ in _cli_fields()})
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
