"""The VoxNet's and its training's parameters, each default defined once.

:class:`ModelParams` holds :func:`dpnbids.learn.model.build_voxnet`'s arguments,
:class:`TrainParams` the options of :func:`dpnbids.learn.train.fit_fold_network`. These
take their defaults from :class:`dpnbids.config.CNNConfig` (the command line's defaults) for
every option the command line has, so a programmatic call that sets nothing trains as the
CLI does; the group level builds both from the run's config
(:func:`dpnbids.group.classify._model_params`, ``_train_params``). A tuning grid
(:data:`dpnbids.learn.cv.TUNE_GRID`) overrides fields of either with :func:`with_overrides`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dpnbids.config import CNNConfig as _CLI


class _Params:
    """Mapping conversions shared by both parameter sets (node specs are JSON)."""

    @classmethod
    def from_mapping(cls, values=None):
        """The parameters with the fields of ``values`` (a mapping) set, the others at their
        defaults; an unknown key raises ValueError naming it and the known ones."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; known "
                             f"fields: {', '.join(sorted(known))}")
        if isinstance(values.get("conv_filters"), list):  # JSON has no tuples
            values["conv_filters"] = tuple(values["conv_filters"])
        return cls(**values)

    def to_mapping(self) -> dict:
        """Every field by name (JSON-able), read back by :meth:`from_mapping`."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelParams(_Params):
    """The architecture and optimiser of :func:`dpnbids.learn.model.build_voxnet`."""

    conv_filters: tuple = (32, 32)
    first_kernel: int = 5
    first_stride: int = 2
    second_kernel: int = 3
    pool_size: int = 2
    dropout: float = _CLI.dropout
    dense_units: int = _CLI.dense_units
    learning_rate: float = _CLI.learning_rate
    epsilon: float = _CLI.adam_epsilon
    weight_decay: float = _CLI.weight_decay


@dataclass(frozen=True)
class TrainParams(_Params):
    """How one network trains (:func:`dpnbids.learn.train._fit_cnn`).

    ``monitor``: the early-stopping metric, "val_loss" or "val_auc"; ``patience`` epochs
    without improvement stop training, but not before ``min_epochs``; ``inner_folds`` K >= 2
    trains an inner-fold ensemble; ``augment``: shifts and intensity jitter
    (:func:`dpnbids.learn.train.augment_batch`); ``balanced``: class-balanced sample
    weights; ``max_restarts``: restarts of a collapsed attempt at half the learning rate.
    """

    epochs: int = _CLI.epochs
    batch_size: int = _CLI.batch_size
    patience: int = _CLI.patience
    min_epochs: int = _CLI.min_epochs
    inner_folds: int = _CLI.inner_folds
    monitor: str = "val_loss"
    augment: bool = _CLI.augment
    balanced: bool = _CLI.class_balance
    mixed_precision: bool = _CLI.mixed_precision
    jit_compile: bool | str = "auto"
    max_restarts: int = 2


def checked(model=None, train=None) -> tuple[ModelParams, TrainParams]:
    """``model`` and ``train``, or the defaults for None; anything other than
    :class:`ModelParams` / :class:`TrainParams` raises TypeError saying how to make one."""
    model = ModelParams() if model is None else model
    train = TrainParams() if train is None else train
    for value, cls, name in ((model, ModelParams, "model_params"),
                             (train, TrainParams, "train_params")):
        if not isinstance(value, cls):
            raise TypeError(f"{name} must be a dpnbids.learn.params.{cls.__name__}, not "
                            f"{type(value).__name__}; build one with {cls.__name__}(...) or "
                            f"{cls.__name__}.from_mapping(...)")
    return model, train


def with_overrides(model: ModelParams, train: TrainParams, values: dict):
    """``model`` and ``train`` with the fields named in ``values`` replaced (each key goes to
    the parameter set that has it: a tuning grid mixes both); an unknown key raises."""
    model_fields = {f.name for f in dataclasses.fields(ModelParams)}
    train_fields = {f.name for f in dataclasses.fields(TrainParams)}
    unknown = sorted(set(values) - model_fields - train_fields)
    if unknown:
        raise ValueError(f"no model or training parameter named {', '.join(unknown)}")
    return (dataclasses.replace(model, **{k: v for k, v in values.items() if k in model_fields}),
            dataclasses.replace(train, **{k: v for k, v in values.items() if k in train_fields}))
