"""Pre-fetch templates into ``TEMPLATEFLOW_HOME`` at image build time.

Runs once in the Dockerfile so that a container never needs the network:

1. ``MNI152NLin2009aSym`` (the default output space) is seeded offline from
   the copy nilearn ships (:func:`dpnbids.templates.seed_templateflow`),
   T1w, brain mask and GM/WM/CSF at every requested resolution;
2. every space in ``--fetch`` (default ``MNI152NLin2009cAsym``) is downloaded
   with the TemplateFlow client: T1w, brain mask and tissue probability maps
   at the requested resolutions.

Step 2 needs the TemplateFlow S3 bucket. With ``--strict`` (the Dockerfile's
default) an unreachable server fails the build; without it the space is
skipped with a warning, and ``--output-space`` for it then fails at run time
with a message naming the missing template.

Usage::

    python tools/prefetch_templates.py --home /opt/templateflow \
        --resolutions 1 2 --fetch MNI152NLin2009cAsym --strict
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def fetch_space(space: str, resolutions: list[int]) -> list[Path]:
    """Download T1w, brain mask and tissue maps of ``space`` with TemplateFlow."""
    import templateflow.api as tflow

    files: list[Path] = []
    queries = [
        dict(suffix="T1w", desc=None),
        dict(suffix="mask", desc="brain"),
        dict(suffix="probseg", label=["GM", "WM", "CSF"], desc=None),
    ]
    for res in resolutions:
        for query in queries:
            got = tflow.get(space, resolution=res, extension=".nii.gz", **query)
            got = got if isinstance(got, list) else [got]
            if not got:
                raise RuntimeError(f"TemplateFlow returned nothing for {space} res-{res} {query}")
            files.extend(Path(p) for p in got)
    tflow.get(space, suffix="description", extension=".json")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pre-fetch templates for an offline image.")
    parser.add_argument("--home", type=Path, required=True, help="TEMPLATEFLOW_HOME to fill")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[1, 2],
                        help="resolutions (mm) downloaded for the --fetch spaces")
    parser.add_argument("--seed-resolutions", type=float, nargs="+", default=None,
                        help="resolutions (mm) of the offline MNI152NLin2009aSym seed "
                             "(default: --resolutions); the image's template folder is "
                             "read-only at run time, so seed every grid a run may ask for")
    parser.add_argument("--fetch", nargs="*", default=["MNI152NLin2009cAsym"],
                        help="TemplateFlow spaces to download (empty: none)")
    parser.add_argument("--strict", action="store_true",
                        help="fail when a space in --fetch cannot be downloaded")
    args = parser.parse_args(argv)

    # TemplateFlow unpacks its skeleton (the file index) into a home that does not
    # exist yet, so download first and seed the offline default afterwards.
    os.environ["TEMPLATEFLOW_HOME"] = str(args.home)
    failed = []
    for space in args.fetch:
        try:
            files = fetch_space(space, args.resolutions)
        except Exception as exc:  # noqa: BLE001 - network errors come in many types
            failed.append(space)
            # TemplateFlow's index holds empty placeholder files; drop them so that
            # dpnbids reports the space as unavailable instead of reading an empty file.
            for placeholder in (args.home / f"tpl-{space}").glob("*.nii.gz"):
                if placeholder.stat().st_size == 0:
                    placeholder.unlink()
            print(f"WARNING: could not download {space} from TemplateFlow ({type(exc).__name__}: "
                  f"{exc}); it will not be available offline in this image.", file=sys.stderr)
        else:
            print(f"fetched {space}: {len(files)} files")
    from dpnbids.templates import seed_templateflow

    seed = args.seed_resolutions or args.resolutions
    seed_templateflow(args.home, tuple(float(r) for r in seed))
    print(f"seeded MNI152NLin2009aSym at {seed} mm from nilearn's copy")
    if failed and args.strict:
        print(f"ERROR: template download failed for {', '.join(failed)}. Build with network "
              "access to the TemplateFlow server, or pass "
              "--build-arg TEMPLATEFLOW_STRICT=0 to build without them.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
