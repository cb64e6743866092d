"""VoxNet factory, CNN grid resampling and the model bundle."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from dpnbids.exceptions import DimensionError, InputError, ModelMismatchError
from dpnbids.learn.model import (build_voxnet, cnn_grid, logit_layer, count_voxnet_params, default_cnn_voxel_size,
                           resample_maps_to_grid)

GRID = (14, 16, 13)


@pytest.mark.parametrize("channels", [1, 30])
def test_voxnet_shapes_and_param_count(channels):
    model = build_voxnet(GRID + (channels,))
    assert model.input_shape == (None,) + GRID + (channels,)
    assert model.output_shape == (None, 1)
    assert model.count_params() == count_voxnet_params(GRID + (channels,))
    names = [layer.name for layer in model.layers]
    assert names[1:] == ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "pool", "flatten",
                         "dropout1", "dense", "dropout2", "logit", "response"]
    assert model.get_layer("conv1").strides == (2, 2, 2)
    assert model.get_layer("conv1").kernel_size == (5, 5, 5)
    opt = model.optimizer
    assert float(opt.learning_rate) == pytest.approx(1e-3) and opt.epsilon == pytest.approx(0.1)
    prob = np.asarray(model.predict(np.zeros((3,) + GRID + (channels,), np.float32), verbose=0))
    assert prob.shape == (3, 1) and np.all((prob > 0) & (prob < 1))


def test_default_grid_is_near_the_paper_parameter_count():
    shape, affine = cnn_grid(default_cnn_voxel_size)
    assert affine[0, 0] == default_cnn_voxel_size
    n = count_voxnet_params(shape + (30,))
    assert 1.2e6 < n < 1.6e6  # the paper reports ~1.4 M


@pytest.mark.parametrize("shape", [(14, 16, 13), (14, 16, 13, 2, 1), (9, 16, 13, 1)])
def test_voxnet_rejects_bad_shapes(shape):
    with pytest.raises(DimensionError, match="input_shape|too small"):
        build_voxnet(shape if len(shape) != 3 else shape)


def test_resample_identity_and_mask(rng):
    vs = 8.0
    shape, affine = cnn_grid(vs)
    maps = rng.normal(size=(2, 3) + shape).astype(np.float32)
    out, out_affine = resample_maps_to_grid(maps, affine, vs)
    assert out.shape == (2,) + shape + (3,)
    np.testing.assert_allclose(out, np.moveaxis(maps, 1, -1), atol=1e-5)
    np.testing.assert_array_equal(out_affine, affine)
    mask = np.zeros(shape, bool)
    mask[2:5, 3:9, 2:6] = True
    masked, _ = resample_maps_to_grid(maps, affine, vs, mask=mask)
    assert np.all(masked[:, ~mask] == 0) and np.any(masked[:, mask] != 0)
    with pytest.raises(DimensionError, match="subjects, channels"):
        resample_maps_to_grid(maps[0], affine, vs)
    with pytest.raises(DimensionError, match="mask shape"):
        resample_maps_to_grid(maps, affine, vs, mask=mask[:-1])


# ----------------------------------------------------------------------------- bundle
@pytest.fixture
def bundle_dir(tmp_path, rng):
    from dpnbids.learn.bundle import Bundle, software_versions
    from dpnbids.learn.scaling import ChannelScaler

    vs = 12.0
    shape, affine = cnn_grid(vs)
    k = 3
    src_affine = np.diag([6.0, 6.0, 6.0, 1.0])
    src_affine[:3, 3] = affine[:3, 3]
    src_shape = tuple(2 * s for s in shape)
    mask = np.ones(src_shape, np.uint8)
    nib.save(nib.Nifti1Image(rng.normal(size=src_shape + (k,)).astype(np.float32), src_affine),
             str(tmp_path / "maps.nii.gz"))
    nib.save(nib.Nifti1Image(mask, src_affine), str(tmp_path / "mask.nii.gz"))
    subj = rng.normal(size=src_shape + (k,)).astype(np.float32)
    nib.save(nib.Nifti1Image(subj, src_affine), str(tmp_path / "subj.nii.gz"))
    import keras

    keras.utils.set_random_seed(1)
    model = build_voxnet(shape + (2,))
    scaling = ChannelScaler([0.1, -0.2], [1.5, 0.5], np.ones(shape, bool))
    out = Bundle(group_maps_file=tmp_path / "maps.nii.gz", mask_file=tmp_path / "mask.nii.gz",
                 selected_components=[0, 2], grid_affine=affine, grid_shape=shape,
                 scaling=scaling, input_set="SSC", feature="zstat", config={"seed": 1},
                 cv_metrics={"auc": 0.8}, space="MNI152NLin2009aSym", resolution=6,
                 n_components=k, voxel_size=vs, versions=software_versions("0.0.test"),
                 network=model).save(tmp_path / "model")
    return out, model, tmp_path / "subj.nii.gz", scaling


def test_bundle_round_trip_predicts_identically(bundle_dir):
    from dpnbids.learn.bundle import load_bundle, predict

    out, model, subj, scaling = bundle_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "bundle.json", "checksums.sha256", "group_maps.nii.gz", "group_mask.nii.gz",
        "model.keras", "scaling_support.npy"]
    assert not list(out.parent.glob(".tmp-*"))
    meta = json.loads((out / "bundle.json").read_text())
    assert {"dpnbids", "keras", "keras_backend", "numpy"} <= set(meta["versions"])
    bundle = load_bundle(out)
    assert bundle.selected_components == [0, 2] and bundle.n_components == 3
    img = nib.load(str(subj))
    x, _ = resample_maps_to_grid(np.moveaxis(img.get_fdata(dtype=np.float32), -1, 0)[None],
                                 img.affine, bundle.voxel_size)
    expected = model.predict(scaling.transform(x[..., [0, 2]]), verbose=0).ravel()
    got = predict(bundle, subj)
    assert got.shape == (1,)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("field,kwargs", [
    ("space", {"space": "MNI152NLin6Asym"}),
    ("resolution", {"resolution": 2}),
    ("number of components", {"n_components": 20}),
    ("CNN grid shape", {"grid_shape": (1, 2, 3)}),
])
def test_bundle_mismatch_names_the_field(bundle_dir, field, kwargs):
    from dpnbids.learn.bundle import check_compatible, load_bundle

    bundle = load_bundle(bundle_dir[0])
    check_compatible(bundle, space="MNI152NLin2009aSym", resolution=6, n_components=3)
    with pytest.raises(ModelMismatchError, match=field):
        check_compatible(bundle, **kwargs)


def test_bundle_rejects_wrong_subject_maps_and_folders(bundle_dir, tmp_path, rng):
    from dpnbids.learn.bundle import load_bundle, predict

    out, _, subj, _ = bundle_dir
    img = nib.load(str(subj))
    bad = nib.Nifti1Image(img.get_fdata(dtype=np.float32)[..., :2], img.affine)
    with pytest.raises(ModelMismatchError, match="2 components but the model expects 3"):
        predict(load_bundle(out), bad)
    with pytest.raises(InputError, match="missing bundle.json"):
        load_bundle(tmp_path)


def test_ensemble_is_one_model_with_the_mean_logit(tmp_path, rng):
    """build_ensemble: logit(ensemble) = mean of the members' logits, one sigmoid Dense last
    layer (so saliency's logit target works), and it survives a save and load."""
    import keras

    from dpnbids.learn.model import build_ensemble

    x = rng.normal(size=(4,) + GRID + (2,)).astype(np.float32)
    members = []
    for k in range(3):
        keras.utils.set_random_seed(k)
        member = build_voxnet(GRID + (2,))
        head = member.get_layer("logit")  # zero-initialised: give each member its own
        rng = np.random.default_rng(k)
        head.set_weights([rng.normal(0, 0.3, head.kernel.shape).astype(np.float32),
                          np.array([0.1 * k], np.float32)])
        members.append(member)
    ens = build_ensemble(members)
    assert build_ensemble(members[:1]) is members[0]

    def logit(p):
        p = np.asarray(p, dtype=float).ravel()
        return np.log(p / (1 - p))

    want = np.mean([logit(m.predict(x, verbose=0)) for m in members], axis=0)
    np.testing.assert_allclose(logit(ens.predict(x, verbose=0)), want, atol=1e-4)
    assert ens.layers[-1].name == "response" and ens.get_layer("logit") is logit_layer(ens)
    ens.save(tmp_path / "ens.keras")
    again = keras.models.load_model(tmp_path / "ens.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), ens.predict(x, verbose=0),
                               atol=1e-6)
    with pytest.raises(DimensionError, match="at least one"):
        build_ensemble([])
    with pytest.raises(DimensionError, match="share one grid"):
        build_ensemble([members[0], build_voxnet((15, 16, 13, 2))])
