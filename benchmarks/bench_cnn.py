"""Benchmark: VoxNet training time per epoch and per fold, and achieved GFLOP/s.

For each input set (ASC: 30 maps, SSC: 8 maps, RSP: 30 BOLD volumes by default)
at the default CNN grid, one outer fold of a 43-subject 10-fold CV is trained on
random data for ``--epochs`` epochs; the first epoch (graph tracing/compilation)
is reported separately and the per-epoch time is the mean of the later ones.
The full-CV figure is EXTRAPOLATED: folds x (first epoch + (max_epochs - 1) x
seconds/epoch + prediction + baselines), i.e. the worst case without early stopping.

FLOPs are counted analytically (multiply-add = 2 FLOPs): forward convolutions and
dense layers; backward = 2 x forward for every layer except the first convolution
(no gradient w.r.t. the input: 1 x).  Peak = cores x GHz x FLOPs/cycle, where
FLOPs/cycle is 32 (fp32, two 256-bit FMA units, AVX2) or 64 (AVX-512): an
assumption printed with the result.

Only keras, numpy and scikit-learn are imported, so it runs on any Keras backend:
``KERAS_BACKEND=jax python benchmarks/bench_cnn.py --cpus 0`` on a GPU machine.
``--cpus N`` pins the process to N cores before the backend starts (default 2).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time


def _cpu_info():
    name, mhz, flags = platform.processor() or "unknown", None, ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name":
                name = val.strip()
            elif key.strip() in ("CPU max MHz", "CPU MHz") and mhz is None:
                mhz = float(val)
            elif key.strip() == "Flags":
                flags = val
    except OSError:
        pass
    if mhz is None:
        try:
            with open("/proc/cpuinfo") as fh:
                mhz = next(float(line.split(":")[1]) for line in fh if line.startswith("cpu MHz"))
        except (OSError, StopIteration):
            mhz = float("nan")
    per_cycle = 64 if "avx512f" in flags.split() else 32 if "avx2" in flags.split() else 16
    return name, mhz, per_cycle


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=43)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=4, help="epochs actually timed per input set")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--voxel-size", type=float, default=None, help="default: the CNN default")
    ap.add_argument("--sets", nargs="+", default=["ASC:30", "SSC:8", "RSP:30"],
                    help="NAME:CHANNELS pairs")
    ap.add_argument("--cpus", type=int, default=2, help="pin to this many cores (0: no pinning)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="float32",
                    choices=("float32", "mixed_bfloat16", "mixed_float16"),
                    help="Keras dtype policy (dpnbids --mixed-precision picks mixed_bfloat16 "
                         "on CPU and mixed_float16 on a GPU)")
    args = ap.parse_args(argv)
    if args.cpus and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cpus]
        os.sched_setaffinity(0, cpus)
        for var in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "XLA_FLAGS_CPU_THREADS"):
            os.environ.setdefault(var, str(args.cpus))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import keras
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    from dpnbids.learn.model import build_voxnet, cnn_grid, cnn_voxel_size

    vs = cnn_voxel_size(args.voxel_size)
    shape, _ = cnn_grid(vs)
    name, mhz, per_cycle = _cpu_info()
    n_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    peak = n_cores * mhz / 1000 * per_cycle
    print(f"CPU: {name}; {n_cores} cores used; {mhz:.0f} MHz; peak assumption "
          f"{per_cycle} fp32 FLOPs/cycle/core -> {peak:.0f} GFLOP/s")
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, precision "
          f"{args.precision}; devices: "
          f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'default')}")
    n_test = int(np.ceil(args.subjects / args.folds))
    n_outer = args.subjects - n_test
    n_val = max(2, round(0.2 * n_outer))
    n_train = n_outer - n_val
    print(f"grid {shape} at {vs} mm; {args.subjects} subjects, {args.folds} folds: "
          f"{n_train} train / {n_val} validation / {n_test} test per fold; batch "
          f"{args.batch_size}; {args.epochs} epochs timed, extrapolated to {args.max_epochs}")
    rng = np.random.default_rng(args.seed)

    class Timer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.t0)

    rows = []
    for spec in args.sets:
        set_name, _, ch = spec.partition(":")
        ch = int(ch)
        x = rng.normal(size=(n_outer + n_test,) + shape + (ch,)).astype(np.float32)
        y = np.array([0, 1] * ((n_outer + n_test) // 2 + 1))[: n_outer + n_test]
        keras.utils.set_random_seed(args.seed)
        keras.mixed_precision.set_global_policy(args.precision)
        model = build_voxnet(shape + (ch,))
        keras.mixed_precision.set_global_policy("float32")
        timer = Timer()
        model.fit(x[:n_train], y[:n_train].astype(np.float32),
                  validation_data=(x[n_train:n_outer], y[n_train:n_outer].astype(np.float32)),
                  epochs=args.epochs, batch_size=args.batch_size, callbacks=[timer], verbose=0)
        t0 = time.perf_counter()
        model.predict(x[n_outer:], verbose=0)
        pred_s = time.perf_counter() - t0
        flat = x.reshape(len(x), -1)
        t0 = time.perf_counter()
        LinearSVC(max_iter=20000).fit(flat[:n_outer], y[:n_outer])
        LogisticRegression(max_iter=5000).fit(flat[:n_outer], y[:n_outer])
        base_s = time.perf_counter() - t0
        first = timer.times[0]
        per_epoch = float(np.mean(timer.times[1:])) if len(timer.times) > 1 else first
        fold_s = first + (args.max_epochs - 1) * per_epoch + pred_s + base_s
        fwd, train = voxnet_flops(shape, ch)
        gflop_epoch = (n_train * train + n_val * fwd) / 1e9
        gflops = gflop_epoch / per_epoch
        rows.append((set_name, ch, model.count_params(), first, per_epoch, fold_s,
                     args.folds * fold_s / 60, gflop_epoch, gflops, 100 * gflops / peak))
        del model
    print(f"{'set':4} {'ch':>3} {'params':>9} {'epoch1_s':>8} {'s/epoch':>8} {'s/fold':>8} "
          f"{'CV_min':>7} {'GFLOP/ep':>8} {'GFLOP/s':>8} {'%peak':>6}")
    for r in rows:
        print(f"{r[0]:4} {r[1]:3d} {r[2]:9d} {r[3]:8.2f} {r[4]:8.3f} {r[5]:8.1f} {r[6]:7.1f} "
              f"{r[7]:8.1f} {r[8]:8.1f} {r[9]:6.1f}")
    print("s/fold and CV_min are extrapolated to --max-epochs without early stopping "
          "(an upper bound); %peak is against the stated peak assumption.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
