"""Shared benchmark helpers: wall time and peak RSS of a process tree, the CPU model,
the argument parser of a benchmark's cohort options, and the voxels near a planted
effect (the saliency benchmarks' measure).


The tree RSS is sampled from /proc every 0.2 s (sum over the command and all
its descendants), and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` gives the
largest single process.  Linux only.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import threading
import time


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree_rss_kb(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _rss_kb(p)
        stack.extend(_children(p))
    return total


def measure(cmd: list[str], env: dict | None = None, cwd=None) -> dict:
    """Run ``cmd``; return wall_s, peak_tree_rss_gb, peak_single_rss_gb, returncode."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_kb(proc.pid))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = proc.wait()
    stop.set()
    thread.join()
    wall = time.perf_counter() - start
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_s": wall, "peak_tree_rss_gb": peak / 1024**2,
            "peak_single_rss_gb": single / 1024**2, "returncode": code}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except FileNotFoundError:
        pass
    return "unknown CPU"


def benchmark_parser(doc: str, **defaults) -> argparse.ArgumentParser:
    """A parser with one ``--name`` option per keyword (``n_components`` -> ``--n-components``),
    typed like its default; a tuple default takes that many values."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in defaults.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs=len(default), default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    return parser


def near_planted(affine, shape, networks, radius_mm=8.0):
    """Boolean (X, Y, Z): the voxels of the grid within ``radius_mm`` of any MNI
    coordinate of ``networks`` (the generator plants its effects at these coordinates)."""
    import numpy as np

    from dpnbids.analysis.networks import load_network_coordinates

    coords = load_network_coordinates()
    pts = coords.loc[coords["network"].isin(networks), ["x", "y", "z"]].to_numpy()
    ijk = np.indices(shape).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).T
    dist = np.min(np.linalg.norm(world[:, None] - pts[None], axis=-1), axis=1)
    return dist.reshape(shape) <= radius_mm
