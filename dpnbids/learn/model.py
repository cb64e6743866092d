"""The paper's lightweight VoxNet in backend-agnostic Keras 3, and the CNN grid.

``build_voxnet`` follows Teh et al. (2023): Conv3D 32@5^3 stride 2 + BatchNorm +
ReLU; Conv3D 32@3^3 + BatchNorm + ReLU; MaxPool3D 2; Dropout 0.3; Dense 128;
Dropout 0.3; sigmoid output; binary cross-entropy; Adam(lr 1e-3, epsilon 0.1).
Only ``keras`` APIs are used, so it runs on TensorFlow (default), JAX or PyTorch
(``KERAS_BACKEND``).

The stage-2 maps are resampled to a CNN grid of ``default_cnn_voxel_size`` mm
cropped to the MNI brain bounding box (32 x 39 x 33 voxels at 5 mm).  With 5 mm
voxels and 30 channels the network has 1,327,873 parameters, close to the paper's
~1.4 M (:func:`count_voxnet_params`; 6 mm gives 762,625, 4 mm 2,769,665).
"""
from __future__ import annotations

import numpy as np

from dpnbids.exceptions import DimensionError

#: Default CNN voxel size in mm (see module docstring for the parameter count).
default_cnn_voxel_size = 5.0


def cnn_voxel_size(requested=None) -> float:
    """The CNN grid's voxel size (mm): ``--cnn-voxel-size`` when given, else the default."""
    return float(requested or default_cnn_voxel_size)

#: MNI bounding box of the brain (mm, RAS), covering the MNI152 brain mask.
MNI_BRAIN_BBOX = ((-78.0, 78.0), (-114.0, 78.0), (-72.0, 90.0))


def build_voxnet(input_shape, *, conv_filters=(32, 32), first_kernel=5, first_stride=2,
                 second_kernel=3, pool_size=2, dropout=0.3, dense_units=128,
                 learning_rate=1e-3, epsilon=0.1, weight_decay=0.0, jit_compile="auto",
                 name="voxnet"):
    """Build and compile the VoxNet classifier for inputs ``(X, Y, Z, C)`` (channels last).

    ``weight_decay`` > 0 adds an L2 penalty of that strength to every convolution and
    dense kernel (0, the paper's model, adds none).
    """
    import keras
    from keras import layers

    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 4 or min(shape) < 1:
        raise DimensionError(f"build_voxnet expects input_shape (X, Y, Z, channels); got "
                             f"{input_shape}. Stack the maps as the last axis.")
    after_first = [(s - first_kernel) // first_stride + 1 for s in shape[:3]]
    after_second = [s - second_kernel + 1 for s in after_first]
    if min(after_second) < pool_size:
        raise DimensionError(
            f"input grid {shape[:3]} is too small for VoxNet (5^3 stride-2 and 3^3 "
            f"convolutions then a {pool_size}^3 pool need at least "
            f"{first_kernel + first_stride * (second_kernel + pool_size - 2)} voxels per "
            "axis); use a smaller `cnn_voxel_size`.")
    reg = keras.regularizers.L2(float(weight_decay)) if weight_decay else None
    inputs = keras.Input(shape=shape, name="maps")
    x = layers.Conv3D(conv_filters[0], first_kernel, strides=first_stride, name="conv1",
                      kernel_regularizer=reg)(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu", name="relu1")(x)
    x = layers.Conv3D(conv_filters[1], second_kernel, name="conv2", kernel_regularizer=reg)(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.Activation("relu", name="relu2")(x)
    x = layers.MaxPooling3D(pool_size, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(dropout, name="dropout1")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense", kernel_regularizer=reg)(x)
    x = layers.Dropout(dropout, name="dropout2")(x)
    logits = layers.Dense(1, name="logit", dtype="float32", kernel_initializer="zeros")(x)
    outputs = layers.Activation("sigmoid", name="response", dtype="float32")(logits)
    model = keras.Model(inputs, outputs, name=name)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate, epsilon=epsilon),
                  loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc"), "accuracy"], jit_compile=jit_compile)
    return model


def logit_layer(model):
    """The ``Dense(1)`` layer whose output is ``model``'s logit.

    A :func:`build_voxnet` network ends in ``Dense(1) -> sigmoid``; networks saved by
    earlier versions end in one ``Dense(1, activation="sigmoid")``. Both are accepted.
    """
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and _activation_name(last) == "sigmoid":
        return last
    if isinstance(last, keras.layers.Activation) and _activation_name(last) == "sigmoid":
        names = [layer.name for layer in model.layers]
        prev = model.get_layer("logit") if "logit" in names else None
        if isinstance(prev, keras.layers.Dense) and _activation_name(prev) == "linear":
            return prev
    raise DimensionError(f"the logit of model {model.name!r} is not available: its last "
                         f"layer is {type(last).__name__} with activation "
                         f"{_activation_name(last)!r}; expected Dense(1) followed by a "
                         "sigmoid (or a sigmoid Dense).")


def _activation_name(layer) -> str | None:
    return getattr(getattr(layer, "activation", None), "__name__", None)


def logit_model(model):
    """A Keras model sharing ``model``'s layers whose output is its logit (pre-sigmoid).

    Training minimises the cross-entropy on this output (``from_logits=True``): the loss
    then has a gradient however confident a wrong prediction is, on every backend.
    """
    import keras

    layer = logit_layer(model)
    if layer is model.layers[-1]:
        raise DimensionError(f"model {model.name!r} ends in a sigmoid Dense layer (saved by an "
                             "earlier version): it can be used to predict, not trained again.")
    return keras.Model(model.input, layer.output, name=f"{model.name}_logit")


def predict_logit(model, x, *, batch_size=16) -> np.ndarray:
    """The logits of ``model`` for inputs ``x`` (float64, not rounded through a float32
    sigmoid, so that confident predictions keep their order)."""
    return np.asarray(logit_model(model).predict(x, verbose=0, batch_size=batch_size),
                      dtype=float).ravel()


def count_voxnet_params(input_shape, **kwargs) -> int:
    """Number of parameters of :func:`build_voxnet` for ``input_shape`` (analytic)."""
    x, y, z, c = (int(v) for v in input_shape)
    f1, f2 = kwargs.get("conv_filters", (32, 32))
    k1, s1 = kwargs.get("first_kernel", 5), kwargs.get("first_stride", 2)
    k2, pool = kwargs.get("second_kernel", 3), kwargs.get("pool_size", 2)
    dense = kwargs.get("dense_units", 128)
    dims = [((d - k1) // s1 + 1 - k2 + 1) // pool for d in (x, y, z)]
    flat = f2 * int(np.prod(dims))
    return (k1 ** 3 * c * f1 + f1) + 4 * f1 + (k2 ** 3 * f1 * f2 + f2) + 4 * f2 \
        + flat * dense + dense + dense + 1


def cnn_grid(voxel_size: float):
    """(shape, affine) of the CNN grid: the MNI brain box at ``voxel_size`` mm."""
    vs = float(voxel_size)
    starts = np.array([b[0] for b in MNI_BRAIN_BBOX])
    stops = np.array([b[1] for b in MNI_BRAIN_BBOX])
    shape = tuple(int(np.floor((hi - lo) / vs)) + 1 for lo, hi in zip(starts, stops))
    affine = np.diag([vs, vs, vs, 1.0])
    affine[:3, 3] = starts
    return shape, affine


def resample_maps_to_grid(maps, source_affine, voxel_size, *, mask=None):
    """Resample ``maps`` (S, C, X, Y, Z) to the CNN grid: returns ((S, x, y, z, C), affine).

    Linear interpolation in world coordinates (scipy ``map_coordinates``);
    voxels outside the source field of view are 0.  ``mask`` (X, Y, Z) zeroes
    out-of-brain voxels before resampling.
    """
    from scipy.ndimage import map_coordinates

    arr = np.asarray(maps, dtype=np.float32)
    if arr.ndim != 5:
        raise DimensionError(f"maps must be (subjects, channels, X, Y, Z); got shape {arr.shape}")
    if mask is not None:
        if tuple(mask.shape) != arr.shape[2:]:
            raise DimensionError(f"mask shape {mask.shape} does not match maps {arr.shape[2:]}")
        arr = arr * np.asarray(mask, dtype=np.float32)[None, None]
    shape, affine = cnn_grid(voxel_size)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=0)
    world = np.tensordot(affine[:3, :3], ijk, axes=1) + affine[:3, 3][:, None, None, None]
    inv = np.linalg.inv(np.asarray(source_affine, dtype=float))
    src = np.tensordot(inv[:3, :3], world, axes=1) + inv[:3, 3][:, None, None, None]
    out = np.empty((arr.shape[0],) + shape + (arr.shape[1],), dtype=np.float32)
    for s in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            out[s, ..., c] = map_coordinates(arr[s, c], src, order=1, mode="constant", cval=0.0)
    return out, affine


def build_ensemble(models, name="voxnet_ensemble"):
    """One Keras model whose output is the sigmoid of the mean logit of ``models``.

    Each member is a :func:`build_voxnet` network (``Dense(1)`` logit, then a sigmoid). Its
    body (everything before the logit layer) is kept as it is, the bodies' features are
    concatenated, and one ``Dense(1)`` logit layer holds every member's output weights
    divided by the number of members, so ``logit(ensemble(x)) = mean_k logit(member_k(x))``
    exactly. The result is a single model ending like a member (logit, sigmoid): it saves to
    one ``.keras`` file, predicts like one network, and its logit is attributed like one
    network's (:mod:`dpnbids.learn.saliency`).
    """
    import keras
    from keras import layers

    models = list(models)
    if not models:
        raise DimensionError("build_ensemble needs at least one trained model")
    if len(models) == 1:
        return models[0]
    shape = tuple(models[0].inputs[0].shape[1:])
    inputs = keras.Input(shape=shape, name="maps")
    feats, kernels, biases = [], [], []
    for k, member in enumerate(models):
        if tuple(member.inputs[0].shape[1:]) != shape:
            raise DimensionError(f"ensemble member {k} takes inputs {member.inputs[0].shape}, "
                                 f"member 0 takes {shape}; members must share one grid")
        last = logit_layer(member)
        body = keras.Model(member.inputs, last.input, name=f"member{k}")
        feats.append(body(inputs))
        kernel, bias = last.get_weights()
        kernels.append(kernel)
        biases.append(bias)
    joined = layers.Concatenate(name="members")(feats)
    head = layers.Dense(1, name="logit", dtype="float32")
    outputs = layers.Activation("sigmoid", name="response", dtype="float32")(head(joined))
    head.set_weights([np.concatenate(kernels, axis=0) / len(models),
                      np.mean(biases, axis=0)])
    return keras.Model(inputs, outputs, name=name)
