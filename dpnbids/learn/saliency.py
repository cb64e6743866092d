"""Attribution maps of the VoxNet: gradient x input, integrated gradients, occlusion.

Every method returns attributions of the same shape as its input, ``(N, X, Y, Z, C)``:
one value per voxel and per input channel (component), for each subject.

What is attributed (``target``)
    ``"logit"`` (the default): the pre-sigmoid output of the model's last Dense layer,
    so that a confident prediction (probability near 0 or 1) still has gradients; the
    completeness axiom of integrated gradients then holds on the logit:
    ``sum(IG(x)) ~= logit(x) - logit(baseline)``. ``"probability"`` attributes the
    sigmoid output instead.

Baseline of integrated gradients and occlusion
    The training fold's mean input map (the mean over the outer-training subjects of the
    scaled maps, in the model's input space), never zeros. After per-channel z-scoring a
    zero map is not "no information": it is a brain in which every voxel sits at its
    channel's average over the whole brain, an input no subject has. The training mean is
    the typical patient the model was fitted on, so an attribution says how this patient's
    maps differ from the typical one, voxel by voxel, towards response or non-response.
    It is computed from training subjects only, so no test information leaks into it.

Backends
    Everything is ``keras.ops``/numpy except :func:`_gradient_fn`, the one place that
    differentiates: ``tf.GradientTape`` on TensorFlow, ``jax.grad`` on JAX and
    ``torch.autograd`` on PyTorch (``keras.ops`` has no gradient operator).

This module is pure (Keras, numpy, scipy): it never imports nipype.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas is imported where it is used; the annotation needs only its name
    import pandas as pd

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.learn.model import logit_layer

#: Methods of ``--saliency`` (``none`` disables attribution).
METHODS = ("none", "gradients", "integrated-gradients", "occlusion")
#: Integrated-gradients steps (midpoint Riemann sum); see benchmarks/results/2026-12-06-saliency-cost.md for the cost.
DEFAULT_IG_STEPS = 16
#: Samples per forward/backward pass.
DEFAULT_BATCH = 16


# ----------------------------------------------------------------------------- the model
def _score_fn(model, target: str):
    """``f(x) -> (N,)``: the model's logit or probability, as a keras.ops expression."""
    import keras
    from keras import ops

    if target not in ("logit", "probability"):
        raise InputError(f"target must be 'logit' or 'probability'; got {target!r}")
    if target == "probability":
        return lambda x: ops.reshape(model([x], training=False), (-1,))
    try:
        last = logit_layer(model)
    except DimensionError as err:
        raise InputError(f"{err} Use target='probability'.") from None
    body = keras.Model(model.inputs, last.input, name=f"{model.name}_body")

    def logit(x):
        h = body([x], training=False)
        z = ops.matmul(ops.cast(h, last.kernel.dtype), last.kernel) + last.bias
        return ops.reshape(z, (-1,))

    return logit


def _gradient_fn(score):
    """``g(x) -> (score(x), d sum(score(x)) / dx)`` as float32 numpy arrays: the only
    backend-specific code of this module (on TensorFlow, compiled once with tf.function)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        _quiet_retracing_warning()

        @tf.function(reduce_retracing=True)
        def step(xt):
            with tf.GradientTape() as tape:
                tape.watch(xt)
                out = score(xt)
            return out, tape.gradient(out, xt)  # a vector target: the gradient of its sum

        def run(x):
            out, grad = step(tf.convert_to_tensor(np.asarray(x, dtype=np.float32)))
            return out.numpy(), grad.numpy()
        return run
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        @jax.jit  # compiled once per input shape: op-by-op dispatch is ~100x slower on CPU
        def step(xt):
            out, vjp = jax.vjp(score, xt)
            (grad,) = vjp(jnp.ones_like(out))
            return out, grad

        def run(x):
            out, grad = step(jnp.asarray(x, dtype=jnp.float32))
            return np.asarray(out), np.asarray(grad)
        return run
    if backend == "torch":
        import torch

        def run(x):
            device = keras.ops.convert_to_tensor(np.zeros(1, np.float32)).device
            xt = torch.tensor(np.asarray(x, dtype=np.float32), requires_grad=True,
                              device=device)
            out = score(xt)
            (grad,) = torch.autograd.grad(out.sum(), xt)
            return out.detach().cpu().numpy(), grad.detach().cpu().numpy()
        return run
    raise InputError(f"attribution needs gradients, which dpnbids takes from TensorFlow, JAX "
                     f"or PyTorch; the Keras backend is {backend!r}. Set KERAS_BACKEND to one "
                     "of tensorflow, jax, torch.")


class _RetracingFilter:
    """Drops TensorFlow's "triggered tf.function retracing" warning: every outer fold has
    a new model and so traces its gradient function once, which is expected."""

    def filter(self, record) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _quiet_retracing_warning() -> None:
    import logging

    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _RetracingFilter) for f in logger.filters):
        logger.addFilter(_RetracingFilter())


def _check_input(model, x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4:
        x = x[None]
    want = tuple(int(v) for v in model.inputs[0].shape[1:])
    if x.ndim != 5 or tuple(x.shape[1:]) != want:
        raise DimensionError(f"attribution input has shape {x.shape}; model {model.name!r} "
                             f"expects (N, {', '.join(map(str, want))}). Pass the scaled "
                             "CNN-grid maps exactly as the model saw them.")
    return x


def _check_baseline(baseline, x: np.ndarray) -> np.ndarray:
    if baseline is None:
        raise InputError("a baseline is required: pass the training fold's mean input map "
                         "(mean of the scaled training inputs over subjects)")
    b = np.asarray(baseline, dtype=np.float32)
    if b.ndim == 5 and b.shape[0] == 1:
        b = b[0]
    if b.shape != x.shape[1:]:
        raise DimensionError(f"baseline has shape {b.shape}; expected one input map "
                             f"{x.shape[1:]} (X, Y, Z, C)")
    return b


def predict_score(model, x, *, target="logit", batch_size=DEFAULT_BATCH) -> np.ndarray:
    """The attributed quantity (logit or probability) of each sample of ``x``: (N,)."""
    from keras import ops

    x = _check_input(model, x)
    score = _score_fn(model, target)
    return np.concatenate([np.asarray(ops.convert_to_numpy(score(x[i:i + batch_size])))
                           for i in range(0, len(x), batch_size)]).astype(np.float32)


# ----------------------------------------------------------------------------- methods
def gradient_x_input(model, x, *, target="logit", batch_size=DEFAULT_BATCH) -> np.ndarray:
    """Gradient x input (Shrikumar et al. 2016): ``x * d f / d x``, (N, X, Y, Z, C)."""
    x = _check_input(model, x)
    grad_fn = _gradient_fn(_score_fn(model, target))
    out = np.empty_like(x)
    for i in range(0, len(x), batch_size):
        _, grad = grad_fn(x[i:i + batch_size])
        out[i:i + batch_size] = grad * x[i:i + batch_size]
    return out


def integrated_gradients(model, x, baseline, *, steps=DEFAULT_IG_STEPS, target="logit",
                         batch_size=DEFAULT_BATCH) -> np.ndarray:
    """Integrated gradients (Sundararajan et al. 2017), (N, X, Y, Z, C).

    ``(x - b) * mean_k grad f(b + a_k (x - b))`` with the midpoints
    ``a_k = (k + 1/2) / steps``; all path points of all subjects are evaluated in
    batches of ``batch_size``. ``baseline``: one input map (X, Y, Z, C), the training
    fold's mean (see the module docstring). Completeness: the sum of a subject's
    attributions approximates ``f(x) - f(baseline)`` on ``target``.
    """
    x = _check_input(model, x)
    b = _check_baseline(baseline, x)
    steps = int(steps)
    if steps < 1:
        raise InputError(f"steps must be >= 1; got {steps}")
    grad_fn = _gradient_fn(_score_fn(model, target))
    alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
    # (subject, alpha) pairs, flattened and evaluated in batches
    pairs = [(n, a) for n in range(len(x)) for a in alphas]
    grad_sum = np.zeros_like(x)
    delta = x - b[None]
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        idx = np.array([n for n, _ in chunk])
        al = np.array([a for _, a in chunk], dtype=np.float32).reshape(-1, 1, 1, 1, 1)
        _, grad = grad_fn(b[None] + al * delta[idx])
        for m, n in enumerate(idx):
            grad_sum[n] += grad[m]
    return delta * grad_sum / steps


def occlusion(model, x, *, baseline=None, patch=3, stride=None, target="logit",
              per_channel=False, batch_size=DEFAULT_BATCH) -> np.ndarray:
    """Occlusion (Zeiler & Fergus 2014) with a cubic 3D patch, (N, X, Y, Z, C).

    Each ``patch``^3-voxel cube (moved by ``stride`` voxels, default ``patch``) is
    replaced by the baseline (the training mean map; zeros if None) and the drop
    ``f(x) - f(occluded)`` is given to every voxel of the cube, averaged where cubes
    overlap. With ``per_channel=False`` (the default) a cube is occluded in all channels
    at once and a voxel's drop is shared among the channels in proportion to
    ``|x - baseline|`` there (a channel equal to the baseline gets none); with
    ``per_channel=True`` every channel is occluded on its own (C times the cost).
    """
    from keras import ops

    x = _check_input(model, x)
    b = np.zeros(x.shape[1:], np.float32) if baseline is None else _check_baseline(baseline, x)
    patch = int(patch)
    stride = int(stride or patch)
    if patch < 1 or stride < 1:
        raise InputError(f"patch and stride must be >= 1 voxel; got {patch} and {stride}")
    score = _score_fn(model, target)
    shape = x.shape[1:4]
    corners = [(i, j, k) for i in range(0, max(shape[0] - patch, 0) + stride, stride)
               for j in range(0, max(shape[1] - patch, 0) + stride, stride)
               for k in range(0, max(shape[2] - patch, 0) + stride, stride)]
    groups = [None] if not per_channel else list(range(x.shape[-1]))
    out = np.zeros_like(x)
    for n in range(len(x)):
        ref = float(ops.convert_to_numpy(score(x[n:n + 1])).ravel()[0])
        for ch in groups:
            total = np.zeros(shape, np.float32)
            count = np.zeros(shape, np.float32)
            for s in range(0, len(corners), batch_size):
                chunk = corners[s:s + batch_size]
                batch = np.repeat(x[n:n + 1], len(chunk), axis=0)
                cubes = []
                for m, (i, j, k) in enumerate(chunk):
                    cube = (slice(i, i + patch), slice(j, j + patch), slice(k, k + patch))
                    cubes.append(cube)
                    chan = slice(None) if ch is None else ch
                    batch[(m, *cube, chan)] = b[(*cube, chan)]
                drop = ref - ops.convert_to_numpy(score(batch)).astype(np.float32).ravel()
                for cube, d in zip(cubes, drop):
                    total[cube] += d
                    count[cube] += 1.0
            vox = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
            if ch is None:
                dev = np.abs(x[n] - b)
                norm = dev.sum(axis=-1, keepdims=True)
                out[n] = vox[..., None] * np.divide(dev, norm, out=np.zeros_like(dev),
                                                    where=norm > 0)
            else:
                out[n, ..., ch] = vox
    return out


def attribute(method: str, model, x, *, baseline=None, steps=DEFAULT_IG_STEPS,
              patch=3, batch_size=DEFAULT_BATCH, target="logit") -> np.ndarray:
    """Dispatch on a ``--saliency`` method name (not ``none``)."""
    if method == "gradients":
        return gradient_x_input(model, x, target=target, batch_size=batch_size)
    if method == "integrated-gradients":
        return integrated_gradients(model, x, baseline, steps=steps, target=target,
                                    batch_size=batch_size)
    if method == "occlusion":
        return occlusion(model, x, baseline=baseline, patch=patch, target=target,
                         batch_size=batch_size)
    raise InputError(f"unknown saliency method {method!r}; choose one of "
                     f"{', '.join(m for m in METHODS if m != 'none')}")


# ----------------------------------------------------------------------------- linear model
def haufe_pattern(x_train, w) -> np.ndarray:
    """Haufe et al. (2014) activation pattern ``A = Cov(X) w`` of a linear model.

    ``x_train`` (S, ...) the training inputs the weights ``w`` (prod(...),) were fitted on;
    computed as ``Xc^T (Xc w) / (S - 1)`` without the V x V covariance. Returns ``A``
    with the shape of one input.
    """
    x = np.asarray(x_train)
    flat = x.reshape(len(x), -1).astype(np.float32, copy=False)
    w = np.asarray(w, dtype=np.float32).ravel()
    if w.size != flat.shape[1]:
        raise DimensionError(f"{w.size} weights for inputs of {flat.shape[1]} features")
    if len(flat) < 2:
        raise InputError("the Haufe pattern needs at least 2 training subjects")
    xc = flat - flat.mean(axis=0, dtype=np.float64).astype(np.float32)
    proj = (xc @ w).astype(np.float32)  # (S,): float32 keeps a 1 M-feature fold fast
    return (xc.T @ proj / (len(flat) - 1)).reshape(x.shape[1:])


# ----------------------------------------------------------------------------- summaries
def _normalised(per_channel) -> np.ndarray:
    total = per_channel.sum()
    return per_channel / total if total > 0 else np.zeros_like(per_channel)


def channel_shares(abs_map) -> np.ndarray:
    """Each channel's share of the total |value| of a (X, Y, Z, C) map (sums to 1): the
    share of a Haufe pattern's mass, or of a mean |attribution| map's."""
    a = np.abs(np.asarray(abs_map, dtype=np.float64))
    return _normalised(a.reshape(-1, a.shape[-1]).sum(axis=0))


def smooth_attributions(attr, fwhm_mm: float, voxel_mm) -> np.ndarray:
    """Each subject's signed (N, X, Y, Z, C) attributions smoothed in space, channel by
    channel, with a Gaussian of ``fwhm_mm`` (0: returned as they are).

    Smoothed before any absolute value: below the scale the network resolves (its first
    convolution samples every second voxel), attributions alternate in sign from voxel to
    voxel (noise gradients times the subject's deviation from the baseline) and cancel,
    while an effect the model uses is coherent over its extent and stays."""
    a = np.asarray(attr, dtype=np.float32)
    if not fwhm_mm:
        return a
    from scipy.ndimage import gaussian_filter

    sigma = float(fwhm_mm) / float(voxel_mm) / np.sqrt(8.0 * np.log(2.0))
    return gaussian_filter(a, sigma=(0, sigma, sigma, sigma, 0), mode="constant")


def channel_contributions(attr) -> np.ndarray:
    """(N, C): each subject's signed attribution summed over the voxels of each channel.

    Integrated gradients are additive, so by completeness a channel's sum is its part of
    ``f(x) - f(baseline)``: how far this component's map as a whole moved the subject's
    logit away from the typical training patient's (exact for a linear model with gradient
    x input as well)."""
    a = np.asarray(attr, dtype=np.float64)
    if a.ndim == 4:
        a = a[None]
    return a.reshape(len(a), -1, a.shape[-1]).sum(axis=1)


def contribution_shares(attr) -> np.ndarray:
    """Each channel's share of the subjects' mean |channel contribution| (sums to 1).

    What a component adds to the prediction, not how much its voxels fluctuate: voxel-wise
    attributions of a component the model does not use (noise gradients times the
    subject's deviation from the baseline) are large in |value| but of random sign, and
    cancel in the channel's sum, whereas the attributions of a component that carries the
    prediction add up. Ranking by the summed |attribution| instead rewards a component's
    spatial extent and noise level."""
    return _normalised(np.abs(channel_contributions(attr)).mean(axis=0))


def grid_to_grid(volumes, source_affine, target_affine, target_shape) -> np.ndarray:
    """Resample (X, Y, Z[, C]) volumes from one grid to another through world coordinates.

    Linear interpolation (scipy ``map_coordinates``), 0 outside the source: the inverse of
    :func:`dpnbids.learn.model.resample_maps_to_grid`, mapping CNN-grid attributions back
    onto the analysis grid (the group components' affine and shape).
    """
    from scipy.ndimage import map_coordinates

    vol = np.asarray(volumes, dtype=np.float32)
    squeeze = vol.ndim == 3
    if squeeze:
        vol = vol[..., None]
    if vol.ndim != 4:
        raise DimensionError(f"volumes must be (X, Y, Z) or (X, Y, Z, C); got {vol.shape}")
    shape = tuple(int(v) for v in target_shape)[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=0)
    tgt = np.asarray(target_affine, dtype=float)
    world = np.tensordot(tgt[:3, :3], ijk, axes=1) + tgt[:3, 3][:, None, None, None]
    inv = np.linalg.inv(np.asarray(source_affine, dtype=float))
    src = np.tensordot(inv[:3, :3], world, axes=1) + inv[:3, 3][:, None, None, None]
    out = np.empty(shape + (vol.shape[-1],), dtype=np.float32)
    for c in range(vol.shape[-1]):
        out[..., c] = map_coordinates(vol[..., c], src, order=1, mode="constant", cval=0.0)
    return out[..., 0] if squeeze else out


# ----------------------------------------------------------------------------- the CV
class SaliencyAccumulator:
    """Collects attributions inside the outer CV: use an instance as ``on_fold`` of
    :func:`dpnbids.learn.cv.run_nested_cv`.

    For every outer fold it attributes the fold's CNN on the fold's outer test subjects
    (IG/occlusion baseline: the mean of the fold's scaled training inputs), and refits
    the fold's linear SVM exactly as the CV's baseline does (same features, same seed)
    to take its Haufe pattern.

    Averaging. ``mean_abs_`` (X, Y, Z, K) is the mean |attribution| (after
    :func:`smooth_attributions` with ``fwhm_mm``, 0: none) over all held-out
    (subject, fold) pairs, over the K channels of the input set (channel ``k`` = map
    ``k``, whatever a fold selected): a channel that a fold did not select (SSC) adds
    zero for that fold's subjects, so a component chosen in few folds is down-weighted by
    how rarely the model used it. ``shares_[model]`` is one row per fold of each
    channel's share (unselected channels: 0): for ``"cnn"`` of the held-out subjects' mean
    |channel contribution| (:func:`contribution_shares`), for ``"svm-haufe"`` of the Haufe
    pattern's total |value| (:func:`channel_shares`).

    Parameters
    ----------
    method : str
        ``gradients``, ``integrated-gradients`` or ``occlusion``.
    n_channels : int
        K, the number of maps of the input set before any selection.
    """

    def __init__(self, method, n_channels, *, steps=DEFAULT_IG_STEPS, patch=3,
                 batch_size=DEFAULT_BATCH, target="logit", haufe=True, fwhm_mm=0.0,
                 voxel_mm=None):
        if fwhm_mm and not voxel_mm:
            raise InputError("smoothing the attributions (fwhm_mm > 0) needs the CNN grid's "
                             "voxel size (voxel_mm)")
        self.method = method
        self.fwhm_mm = float(fwhm_mm or 0.0)
        self.voxel_mm = voxel_mm
        self.n_channels = n_channels
        self.steps = steps
        self.patch = patch
        self.batch_size = batch_size
        self.target = target
        self.haufe = haufe
        self.sum_abs_ = None
        self.n_evaluations_ = 0
        self.shares_ = {"cnn": [], "svm-haufe": []}
        self.folds_ = []
        self.seconds_ = 0.0

    def __call__(self, fold_model) -> None:
        import time

        started = time.perf_counter()
        channels = np.asarray(fold_model.channels, dtype=int)
        if channels.size and (channels.min() < 0 or channels.max() >= self.n_channels):
            raise DimensionError(f"fold channels {channels.tolist()} fall outside the "
                                 f"{self.n_channels} maps of the input set")
        x_train = np.asarray(fold_model.x_train, dtype=np.float32)
        x_test = np.asarray(fold_model.x_test, dtype=np.float32)
        baseline = x_train.mean(axis=0)
        attr = attribute(self.method, fold_model.model, x_test, baseline=baseline,
                         steps=self.steps, patch=self.patch, batch_size=self.batch_size,
                         target=self.target)
        smoothed = smooth_attributions(attr, self.fwhm_mm, self.voxel_mm)
        fold_abs = np.abs(smoothed).sum(axis=0)  # (X, Y, Z, c): summed over test subjects
        if self.sum_abs_ is None:
            self.sum_abs_ = np.zeros(fold_abs.shape[:3] + (self.n_channels,), np.float64)
        self.sum_abs_[..., channels] += fold_abs
        self.n_evaluations_ += len(x_test)
        self.shares_["cnn"].append(self._full(contribution_shares(attr), channels))
        if self.haufe:
            w = _linear_svm_weights(x_train, fold_model.y_train)
            pattern = haufe_pattern(x_train, w)
            self.shares_["svm-haufe"].append(self._full(channel_shares(pattern), channels))
        self.seconds_ += time.perf_counter() - started
        self.folds_.append({"repeat": int(fold_model.fold.repeat),
                            "fold": int(fold_model.fold.fold),
                            "test_ids": list(fold_model.test_ids),
                            "channels": [int(c) for c in channels],
                            "n_test": int(len(x_test))})

    def _full(self, shares, channels):
        out = np.zeros(self.n_channels)
        out[channels] = shares
        return out

    def bookkeeping(self) -> dict:
        """Everything collected besides ``sum_abs_``, as JSON (one fold's job hands it on)."""
        return {"n_evaluations": int(self.n_evaluations_), "seconds": float(self.seconds_),
                "folds": list(self.folds_),
                "shares": {m: [[float(v) for v in row] for row in rows]
                           for m, rows in self.shares_.items()}}

    def absorb(self, sum_abs, bookkeeping: dict) -> None:
        """Add what another accumulator collected (``sum_abs_`` and :meth:`bookkeeping`):
        the outer folds' jobs are pooled in fold order into one accumulator."""
        if sum_abs is not None:
            if self.sum_abs_ is None:
                self.sum_abs_ = np.zeros(np.shape(sum_abs), np.float64)
            self.sum_abs_ += np.asarray(sum_abs, np.float64)
        self.n_evaluations_ += int(bookkeeping["n_evaluations"])
        self.seconds_ += float(bookkeeping["seconds"])
        self.folds_.extend(bookkeeping["folds"])
        for model, rows in bookkeeping["shares"].items():
            self.shares_.setdefault(model, []).extend(np.asarray(r, float) for r in rows)

    @property
    def mean_abs_(self) -> np.ndarray:
        """(X, Y, Z, K) mean |attribution| over held-out subjects and folds."""
        if self.sum_abs_ is None:
            raise InputError("no fold was attributed: run the CV with this accumulator "
                             "as on_fold first")
        return (self.sum_abs_ / max(self.n_evaluations_, 1)).astype(np.float32)


def _linear_svm_weights(x_train, y_train) -> np.ndarray:
    """The weights of the CV's linear-SVM baseline on the same fold: the same features,
    objective and solver (:func:`dpnbids.learn.linear.primal_weights`)."""
    from dpnbids.learn.linear import primal_weights

    return primal_weights("svm", x_train, y_train)[0]


def network_ranking(shares, components_table=None, *, input_set: str,
                    model: str) -> pd.DataFrame:
    """Rank the K channels of one input set and model by their mean share over folds.

    ``shares``: (folds, K). ``components_table`` (optional): the group level's table with
    ``component`` and ``network`` columns (network labels). Returns one row per channel:
    input_set, model, component, network, share_mean, share_sd (over folds, ddof=1; n/a
    with one fold), n_folds_used (folds in which the channel had any attribution), rank
    (1 = largest share).
    """
    import pandas as pd

    s = np.atleast_2d(np.asarray(shares, dtype=float))
    k = s.shape[1]
    networks = ["n/a"] * k
    if components_table is not None and "network" in components_table:
        labels = dict(zip(components_table.get("component", range(len(components_table))),
                          components_table["network"]))
        networks = [str(labels.get(i, "n/a")) for i in range(k)]
    mean = s.mean(axis=0)
    sd = s.std(axis=0, ddof=1) if len(s) > 1 else np.full(k, np.nan)
    order = np.argsort(-mean, kind="stable")
    rank = np.empty(k, dtype=int)
    rank[order] = np.arange(1, k + 1)
    frame = pd.DataFrame({"input_set": input_set, "model": model, "component": np.arange(k),
                          "network": networks, "share_mean": mean, "share_sd": sd,
                          "n_folds_used": (s > 0).sum(axis=0), "rank": rank})
    return frame.sort_values("rank", kind="stable").reset_index(drop=True)
