"""Benchmark: the VoxNet's train step, prediction and integrated gradients per Keras backend.

Each configuration runs in its own subprocess (a Keras backend and TensorFlow's kernel
library are fixed when a process first imports them), pinned to the same ``--cpus`` cores,
and the configurations are interleaved ``--rounds`` times so that a busy machine slows them
alike; the table gives medians and the ratio of each train step to TensorFlow's legacy
setting (graph mode, oneDNN off: what the CLI ran before the backend choice).

Configurations (``--configs``):

* ``tf-legacy``: TensorFlow, ``TF_ENABLE_ONEDNN_OPTS=0``, graph mode (tf.function), no XLA;
* ``tf-onednn``: TensorFlow with oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS=1``), no XLA;
* ``tf-xla``: TensorFlow, ``jit_compile=True`` (XLA);
* ``jax``: ``KERAS_BACKEND=jax`` (XLA through JAX);
* ``torch``: ``KERAS_BACKEND=torch`` (skipped when PyTorch is not installed).

Every configuration also sets ``TF_DETERMINISTIC_OPS=1`` as the CLI does. FLOPs are counted
from the layer shapes (:func:`voxnet_flops`: multiply-add = 2 FLOPs; backward = 2 x forward
except the first convolution, which needs no input gradient), and the fraction of peak is
against this CPU's float32 matmul rate measured by numpy in the parent process on the same
cores (``--cpus``), not a datasheet figure.

    python benchmarks/bench_backends.py                    # 5, 8 and 30 channels, default grid
    python benchmarks/bench_backends.py --voxel-size 2 --channels 8 --steps 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CONFIGS = {
    "tf-legacy": {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"},
    "tf-onednn": {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "1"},
    "tf-xla": {"KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "1", "_XLA": "1"},
    "jax": {"KERAS_BACKEND": "jax"},
    "torch": {"KERAS_BACKEND": "torch"},
}


def voxnet_flops(shape, channels, f1=32, f2=32, dense=128):
    """Forward FLOPs per sample and training FLOPs (forward + backward) per sample."""
    d1 = [(s - 5) // 2 + 1 for s in shape]
    d2 = [d - 2 for d in d1]
    d3 = [d // 2 for d in d2]
    n1, n2, n3 = (d1[0] * d1[1] * d1[2], d2[0] * d2[1] * d2[2], d3[0] * d3[1] * d3[2])
    conv1 = 2 * n1 * f1 * 125 * channels
    conv2 = 2 * n2 * f2 * 27 * f1
    fc = 2 * n3 * f2 * dense + 2 * dense
    fwd = conv1 + conv2 + fc
    return fwd, fwd + conv1 + 2 * (conv2 + fc)


def matmul_peak_gflops(n=2048, repeats=5) -> float:
    """This process's best float32 matmul rate (GFLOP/s) on an n x n product."""
    import numpy as np

    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def child(config: str, channels: int, voxel_size: float, steps: int, batch: int) -> dict:
    """Run in the subprocess: time the train step, prediction and integrated gradients."""
    import numpy as np

    import keras

    from dpnbids.learn.model import build_voxnet, cnn_grid
    from dpnbids.learn.saliency import integrated_gradients

    shape, _ = cnn_grid(voxel_size)
    rng = np.random.default_rng(0)
    n = max(steps * batch, 8)
    x = rng.normal(size=(n,) + shape + (channels,)).astype(np.float32)
    y = (np.arange(n) % 2).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = build_voxnet(shape + (channels,),
                         jit_compile=True if os.environ.get("_XLA") else False)
    started = time.perf_counter()
    model.train_on_batch(x[:batch], y[:batch])
    first = time.perf_counter() - started
    times = [_timed(lambda i=i: model.train_on_batch(x[i * batch:(i + 1) * batch],
                                                     y[i * batch:(i + 1) * batch]))
             for i in range(steps)]
    model.predict(x[:batch], verbose=0)
    predict = _timed(lambda: model.predict(x, verbose=0)) / n
    baseline = np.zeros_like(x[0])
    integrated_gradients(model, x[:1], baseline)
    ig = _timed(lambda: integrated_gradients(model, x[:2], baseline)) / 2
    return {"config": config, "backend": keras.backend.backend(), "channels": channels,
            "grid": list(shape), "first_step_s": first, "step_s": float(np.median(times)),
            "predict_s_per_subject": predict, "ig_s_per_subject": ig}


def _run_child(config, args, channels):
    env = {k: v for k, v in os.environ.items() if k not in ("_XLA",)}
    env.update(CONFIGS[config])
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["TF_DETERMINISTIC_OPS"] = "1"
    cmd = [sys.executable, __file__, "--child", config, "--channels", str(channels),
           "--voxel-size", str(args.voxel_size), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                          timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"config": config, "channels": channels, "error": proc.stderr[-300:]}
    return json.loads(lines[-1])


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _report(rows, args, peak):
    import numpy as np

    print(f"{'config':10} {'ch':>3} {'grid':>12} {'step_ms':>8} {'x legacy':>8} "
          f"{'%peak':>6} {'first_s':>7} {'pred_ms/subj':>12} {'IG_ms/subj':>10}")
    by = {}
    for r in rows:
        if "error" not in r:
            by.setdefault((r["config"], r["channels"]), []).append(r)
    for (config, ch), runs in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        step = float(np.median([r["step_s"] for r in runs]))
        legacy = by.get(("tf-legacy", ch))
        ratio = (float(np.median([r["step_s"] for r in legacy])) / step) if legacy else np.nan
        _, train = voxnet_flops(runs[0]["grid"], ch)
        pct = 100 * train * args.batch_size / step / 1e9 / peak
        print(f"{config:10} {ch:3d} {'x'.join(map(str, runs[0]['grid'])):>12} "
              f"{1000 * step:8.0f} {ratio:8.1f} {pct:6.1f} "
              f"{np.median([r['first_step_s'] for r in runs]):7.1f} "
              f"{1000 * np.median([r['predict_s_per_subject'] for r in runs]):12.0f} "
              f"{1000 * np.median([r['ig_s_per_subject'] for r in runs]):10.0f}")
    for r in rows:
        if "error" in r:
            print(f"{r['config']} {r['channels']}: failed: {r['error'].strip()[-200:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--channels", nargs="+", type=int, default=[5, 8, 30])
    ap.add_argument("--voxel-size", type=float, default=5.0)
    ap.add_argument("--steps", type=int, default=6, help="timed train steps per run")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions")
    ap.add_argument("--cpus", type=int, default=2, help="pin to this many cores (0: all)")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.channels[0], args.voxel_size, args.steps,
                               args.batch_size)))
        return 0
    if args.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpus])
    configs = [c for c in args.configs if c != "torch" or _torch_available()]
    peak = matmul_peak_gflops()
    print(f"{len(os.sched_getaffinity(0))} cores; measured float32 matmul peak "
          f"{peak:.0f} GFLOP/s; voxel size {args.voxel_size} mm; batch {args.batch_size}; "
          f"{args.steps} steps x {args.rounds} rounds; configs {configs}", flush=True)
    rows = []
    for _ in range(args.rounds):
        for ch in args.channels:
            for config in configs:
                rows.append(_run_child(config, args, ch))
                print(json.dumps(rows[-1]), flush=True)
    _report(rows, args, peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
