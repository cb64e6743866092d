"""The one input scaling (a per-channel z-score over the training subjects' brain voxels)
and the model and training parameters: fitted once, shared by the CNN and the baselines."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from dpnbids.config import CNNConfig
from dpnbids.learn.linear import GramCache
from dpnbids.learn.params import ModelParams, TrainParams, with_overrides
from dpnbids.learn.scaling import ChannelScaler, moments_from_sums


def _maps(rng, n=7, shape=(7, 8, 9), channels=3):
    x = (rng.normal(size=(n,) + shape + (channels,)) * [1.0, 3.0, 0.5] + [0.0, 5.0, -2.0])
    x = x.astype(np.float32)
    x[:, :2] = 0.0  # outside every subject's brain
    x[0, 3, 3, 3, :] = 0.0  # one subject's hole inside it stays in the support
    return x


def test_scaler_is_the_z_score_over_in_brain_voxels(rng):
    x = _maps(rng)
    sc = ChannelScaler.fit(x)
    support = np.any(x != 0, axis=(0, 4))
    assert support[3, 3, 3] and not support[:2].any() and sc.support.dtype == bool
    vals = x[:, support, :].astype(np.float64)
    np.testing.assert_allclose(sc.mean, vals.mean(axis=(0, 1)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sc.sd, vals.std(axis=(0, 1)), rtol=1e-5)
    z = sc.transform(x)
    assert z.dtype == np.float32 and not z[:, :2].any()
    inside = z[:, support, :]
    np.testing.assert_allclose(inside.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(inside.std(axis=(0, 1)), 1.0, rtol=1e-5)


def test_constant_channel_gets_unit_sd_and_json_round_trips(rng):
    x = _maps(rng)
    x[..., 1] = np.where(np.any(x != 0, axis=(0, 4)), 2.0, 0.0)  # constant in the brain
    sc = ChannelScaler.fit(x)
    assert sc.sd[1] == 1.0 and sc.mean[1] == pytest.approx(2.0)
    back = ChannelScaler.from_json(sc.to_json(), sc.support)
    assert back == sc and sc.to_json()["method"].startswith("per-channel z-score")
    assert back != ChannelScaler(sc.mean, sc.sd * 2, sc.support)
    mean, sd = moments_from_sums(np.array([6.0, 3.0]), np.array([14.0, 3.0]), 3)
    np.testing.assert_allclose(mean, [2.0, 1.0])
    np.testing.assert_allclose(sd, [np.sqrt(14 / 3 - 4), 1.0])


def test_gram_cache_scales_as_the_scaler(rng):
    x = _maps(rng)
    x[0, 3, 3, 3, :] = 1.0  # every map non-zero on the support: the kernel's exact case
    gram = GramCache(x)
    assert gram.exact_support
    train, channels = np.array([1, 2, 4, 6]), np.array([0, 2])
    mean, sd = gram.scaler(train, channels)
    sc = ChannelScaler.fit(x[train][..., channels])
    np.testing.assert_allclose(mean, sc.mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sd, sc.sd, rtol=1e-6)
    z = sc.transform(x[..., channels]).reshape(len(x), -1).astype(np.float64)
    np.testing.assert_allclose(gram.kernel(train, channels), z @ z.T, rtol=1e-4, atol=1e-3)


def test_params_from_mapping_refuse_unknown_keys():
    assert TrainParams.from_mapping({"epochs": 3}) == TrainParams(epochs=3)
    assert TrainParams.from_mapping(None) == TrainParams()
    with pytest.raises(ValueError, match="TrainParams has no field.*epoch\\b.*known fields"):
        TrainParams.from_mapping({"epoch": 3})
    with pytest.raises(ValueError, match="ModelParams has no field.*learning_rte"):
        ModelParams.from_mapping({"learning_rte": 1e-2})
    model = ModelParams(conv_filters=(8, 16), dense_units=4)
    assert ModelParams.from_mapping(model.to_mapping()) == model
    import json

    assert ModelParams.from_mapping(json.loads(json.dumps(model.to_mapping()))) == model


def test_a_grid_candidate_overrides_the_set_that_has_it():
    model, train = with_overrides(ModelParams(), TrainParams(epochs=7),
                                  {"epsilon": 1e-3, "augment": True, "dropout": 0.5})
    assert model == dataclasses.replace(ModelParams(), epsilon=1e-3, dropout=0.5)
    assert train == TrainParams(epochs=7, augment=True)
    with pytest.raises(ValueError, match="no model or training parameter named lr"):
        with_overrides(ModelParams(), TrainParams(), {"lr": 1e-3})


def test_group_level_builds_the_parameters_from_the_configuration():
    from dpnbids.group.classify import _model_params, _train_params

    cnn = CNNConfig()
    config = SimpleNamespace(cnn=cnn)
    model, train = _model_params(config), _train_params(config)
    assert (model.dropout, model.dense_units, model.learning_rate, model.epsilon,
            model.weight_decay) == (cnn.dropout, cnn.dense_units, cnn.learning_rate,
                                    cnn.adam_epsilon, cnn.weight_decay)
    assert (train.epochs, train.batch_size, train.patience, train.min_epochs,
            train.inner_folds, train.augment, train.balanced, train.mixed_precision) == \
        (cnn.epochs, cnn.batch_size, cnn.patience, cnn.min_epochs, cnn.inner_folds,
         cnn.augment, cnn.class_balance, cnn.mixed_precision)
    assert train.monitor == "val_loss"
    auc = _train_params(SimpleNamespace(cnn=dataclasses.replace(cnn, early_stopping="auc")))
    assert auc.monitor == "val_auc"


def test_a_mapping_where_parameters_belong_is_refused_with_how_to_fix():
    from dpnbids.learn.cv import run_nested_cv

    x = np.zeros((4, 3, 3, 3, 1), np.float32)
    with pytest.raises(TypeError, match="train_params must be a .*TrainParams.*from_mapping"):
        run_nested_cv(x, [0, 1, 0, 1], ["a", "b", "c", "d"], [], train_params={"epochs": 2})
