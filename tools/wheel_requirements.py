"""Requirements of a built dpnbids wheel, with the TensorFlow build swapped.

Used by the Dockerfile's build stage::

    python tools/wheel_requirements.py dist/dpnbids-*.whl --tf "tensorflow[and-cuda]==2.21.0" \
        --lock requirements.lock --out /tmp/requirements.txt --constraints /tmp/constraints.txt
    python tools/wheel_requirements.py --check --tf "tensorflow[and-cuda]==2.21.0"

``pyproject.toml`` depends on ``tensorflow-cpu`` (small, CPU only) and the lock
pins it. The image ships the CUDA build instead, so this script writes:

* ``--out``: the wheel's own ``Requires-Dist`` (no extras), with every
  ``tensorflow``/``tensorflow-cpu`` requirement replaced by ``--tf``;
* ``--constraints``: the lock file without its TensorFlow lines, so every
  other package is installed at its locked version.

``--check`` verifies, after installation, that every requirement of the
installed ``dpnbids`` distribution is met, counting the ``--tf`` build as
satisfying ``tensorflow-cpu``; it exits 1 and names what is missing otherwise.
Standard library only (plus ``packaging``, which pip vendors and the venv has).
"""
from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

_TF_NAMES = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(line: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return _canon(match.group(1)) if match else ""


def wheel_requires(wheel: Path) -> list[str]:
    """``Requires-Dist`` lines of ``wheel`` that apply without extras."""
    with zipfile.ZipFile(wheel) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = zf.read(meta_name).decode()
    reqs = []
    for line in meta.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if "extra ==" in req.replace("extra==", "extra =="):
                continue
            reqs.append(req)
    return reqs


def swap_tensorflow(reqs: list[str], tf_spec: str) -> list[str]:
    """Replace every TensorFlow requirement by ``tf_spec`` (added once)."""
    out = [r for r in reqs if _req_name(r) not in _TF_NAMES]
    out.append(tf_spec)
    return out


def lock_constraints(lock: Path) -> list[str]:
    """Lock lines without TensorFlow builds, comments, options and hashes.

    A hashed lock (``name==1.0 \\`` followed by ``--hash=...`` lines) gives ``name==1.0``:
    a constraints file takes no hashes.
    """
    keep = []
    for line in lock.read_text().splitlines():
        line = line.strip().removesuffix("\\").strip()
        if not line or line.startswith(("#", "-")):
            continue
        if _req_name(line) in _TF_NAMES:
            continue
        keep.append(line)
    return keep


def check_installed(tf_spec: str) -> list[str]:
    """Unmet requirements of the installed ``dpnbids`` (TF build aliases allowed)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    tf_name = _req_name(tf_spec)
    missing = []
    for raw in metadata.requires("dpnbids") or []:
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = _canon(req.name)
        if name in _TF_NAMES:
            name = tf_name
            spec = req.specifier
        else:
            spec = req.specifier
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(f"{req} (not installed)")
            continue
        if spec and not spec.contains(version, prereleases=True):
            missing.append(f"{req} (installed {name}=={version})")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", nargs="?", type=Path, help="the dpnbids wheel")
    parser.add_argument("--tf", required=True,
                        help="TensorFlow requirement, e.g. 'tensorflow[and-cuda]==2.21.0'")
    parser.add_argument("--lock", type=Path, help="pinned lock file (requirements.lock)")
    parser.add_argument("--out", type=Path, help="where to write the requirements")
    parser.add_argument("--constraints", type=Path, help="where to write the constraints")
    parser.add_argument("--check", action="store_true",
                        help="check the installed dpnbids instead of writing files")
    args = parser.parse_args(argv)
    if args.check:
        missing = check_installed(args.tf)
        for item in missing:
            print(f"unmet dependency of dpnbids: {item}", file=sys.stderr)
        if not missing:
            print("all dependencies of dpnbids are installed")
        return 1 if missing else 0
    if args.wheel is None or args.out is None:
        parser.error("give the wheel and --out (or --check)")
    args.out.write_text("\n".join(swap_tensorflow(wheel_requires(args.wheel), args.tf)) + "\n")
    if args.constraints is not None:
        lines = lock_constraints(args.lock) if args.lock else []
        args.constraints.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
