"""Which Keras backend trains the CNN, and how many threads it may use.

Keras fixes its backend when it is first imported, and TensorFlow and XLA size their
thread pools when their runtime starts, so :func:`configure` runs before anything imports
Keras (the CLI calls it right after parsing) and works through environment variables,
which nipype's worker processes inherit. Nothing here imports Keras.

The default (``--keras-backend auto``) is measured, not assumed
(``benchmarks/bench_backends.py``; figures in ``benchmarks/README.md``):

* CPU: TensorFlow with its oneDNN kernels (``TF_ENABLE_ONEDNN_OPTS=1``). TensorFlow turns
  oneDNN off by default on some CPUs (AMD EPYC here); its fallback Eigen kernels take
  seconds for one VoxNet step on 5-8 input channels, the inputs the automatic model order
  gives (the pathological case the speed figures record).
* CUDA: JAX when it is installed with CUDA support (the GPU image), else TensorFlow.

``KERAS_BACKEND`` set by the user, or ``--keras-backend``, overrides the default.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from dpnbids.config import available_cpus
from dpnbids.exceptions import InputError

BACKENDS = ("auto", "tensorflow", "jax", "torch")
_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def installed(backend: str) -> bool:
    """Whether the backend's Python package can be imported here."""
    return importlib.util.find_spec(_MODULES[backend]) is not None


def cuda_present() -> bool:
    """An NVIDIA device node exists and CUDA_VISIBLE_DEVICES does not hide every GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none"):
        return False
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()


def _jax_has_cuda() -> bool:
    return any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12"))


def resolve_backend(requested: str = "auto", environ=None) -> str:
    """The backend to use for ``--keras-backend requested`` (see the module docstring)."""
    env = os.environ if environ is None else environ
    if requested not in BACKENDS:
        raise InputError(f"keras backend {requested!r} is not one of {', '.join(BACKENDS)}")
    if requested == "auto":
        requested = env.get("KERAS_BACKEND") or _default_backend()
    if requested not in BACKENDS[1:]:
        raise InputError(f"KERAS_BACKEND={requested!r} is not a backend dpnbids supports "
                         f"({', '.join(BACKENDS[1:])}); unset it or choose one of those.")
    if not installed(requested):
        have = [b for b in BACKENDS[1:] if installed(b)]
        raise InputError(f"the Keras backend {requested!r} is not installed in this "
                         f"environment (installed: {', '.join(have) or 'none'}); choose one "
                         "of those with `keras_backend`, or install it.")
    return requested


def _default_backend() -> str:
    if cuda_present() and installed("jax") and _jax_has_cuda():
        return "jax"
    for name in ("tensorflow", "jax", "torch"):
        if installed(name):
            return name
    raise InputError("no Keras backend is installed (tensorflow, jax or torch); install "
                     "dpnbids with its CPU or CUDA extra.")


def thread_environment(backend: str, threads: int) -> dict:
    """Environment variables that give the backend ``threads`` compute threads."""
    n = str(max(1, int(threads)))
    env = {"KERAS_BACKEND": backend, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
           "MKL_NUM_THREADS": n}
    if backend == "tensorflow":
        env.update(TF_ENABLE_ONEDNN_OPTS="1", TF_NUM_INTRAOP_THREADS=n,
                   TF_NUM_INTEROP_THREADS="1")
    elif backend == "jax":
        env["XLA_FLAGS"] = _merge_xla_flags(
            os.environ.get("XLA_FLAGS", ""),
            {"--xla_cpu_multi_thread_eigen": "true" if int(n) > 1 else "false",
             "intra_op_parallelism_threads": n})
    return env


def _merge_xla_flags(existing: str, wanted: dict) -> str:
    kept = [f for f in existing.split() if f.split("=", 1)[0] not in wanted]
    return " ".join(kept + [f"{k}={v}" for k, v in wanted.items()])


def configure(requested: str = "auto", threads: int | None = None, environ=None) -> str:
    """Choose the backend and set its thread environment; returns the backend's name.

    ``threads`` defaults to :func:`available_cpus`, and is never above it. Values the
    user set in the environment win, except ``KERAS_BACKEND``, which an explicit
    ``requested`` backend overrides. Raises :class:`InputError` when Keras was already
    imported with another backend.
    """
    import sys

    env = os.environ if environ is None else environ
    backend = resolve_backend(requested, env)
    cpus = available_cpus()
    n = cpus if threads is None else max(1, min(int(threads), cpus))
    for key, value in thread_environment(backend, n).items():
        if key == "KERAS_BACKEND":
            env[key] = value
        else:
            env.setdefault(key, value)
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend") and keras.backend.backend() != backend:
        raise InputError(f"Keras was already imported with the {keras.backend.backend()!r} "
                         f"backend; {backend!r} must be chosen before Keras is imported.")
    return backend

