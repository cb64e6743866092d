"""A --model bundle is validated completely before use: checksums written at save time,
the bundle.json schema, the shapes and dtypes of its arrays, complete files. A damaged
bundle is refused naming the file, never with a KeyError, ValueError or "File not found"."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import nibabel as nib
import numpy as np
import pytest

from conftest import make_tiny_bids, run_cli, randomise_logit_head
from dpnbids.learn.bundle import (BUNDLE_FILES, CHECKSUMS, Bundle, _write_checksums, load_bundle,
                                  software_versions)
from dpnbids.learn.scaling import ChannelScaler
from dpnbids.exceptions import BundleError, InputError, ModelMismatchError
from dpnbids.learn.model import build_voxnet, cnn_grid


def _source_maps(folder, rng, voxel_size):
    """Three random group maps and a full mask at 6 mm in ``folder`` (maps.nii.gz,
    mask.nii.gz), on a grid that covers the CNN grid of ``voxel_size``; that grid's shape and
    affine."""
    shape, affine = cnn_grid(voxel_size)
    src_affine = np.diag([6.0, 6.0, 6.0, 1.0])
    src_affine[:3, 3] = affine[:3, 3]
    src_shape = tuple(2 * s for s in shape)
    nib.save(nib.Nifti1Image(rng.normal(size=src_shape + (3,)).astype(np.float32), src_affine),
             str(folder / "maps.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones(src_shape, np.uint8), src_affine),
             str(folder / "mask.nii.gz"))
    return shape, affine


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One bundle written by Bundle.save; each test damages a copy of it."""
    import keras

    tmp = tmp_path_factory.mktemp("bundle")
    rng = np.random.default_rng(3)
    vs = 12.0
    shape, affine = _source_maps(tmp, rng, vs)
    keras.utils.set_random_seed(1)
    scaling = ChannelScaler([0.1, -0.2], [1.5, 0.5], np.ones(shape, bool))
    return Bundle(group_maps_file=tmp / "maps.nii.gz", mask_file=tmp / "mask.nii.gz",
                  selected_components=[0, 2], grid_affine=affine, grid_shape=shape,
                  scaling=scaling, input_set="SSC", feature="pe", config={"seed": 1},
                  cv_metrics={"auc": 0.8}, space="MNI152NLin2009aSym", resolution=6,
                  n_components=3, voxel_size=vs, versions=software_versions("0.0.test"),
                  network=build_voxnet(shape + (2,))).save(tmp / "model")


@pytest.fixture
def bundle(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "model")


def _edit_json(folder, edit, *, checksums="update"):
    meta = json.loads((folder / "bundle.json").read_text())
    edit(meta)
    (folder / "bundle.json").write_text(json.dumps(meta))
    if checksums == "update":
        _write_checksums(folder)  # a consistently edited bundle: the schema must catch it
    elif checksums == "remove":
        (folder / CHECKSUMS).unlink()


def _truncate(file, keep=0.5):
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def test_checksums_cover_every_file(bundle):
    lines = (bundle / CHECKSUMS).read_text().splitlines()
    listed = {}
    for line in lines:
        digest, name = line.split("  ")
        listed[name] = digest
    assert set(listed) == set(BUNDLE_FILES)
    for name, digest in listed.items():
        assert hashlib.sha256((bundle / name).read_bytes()).hexdigest() == digest
    loaded = load_bundle(bundle)
    assert loaded.n_components == 3 and loaded.scaling.support.dtype == bool


@pytest.mark.parametrize("name", ["bundle.json", "scaling_support.npy", "model.keras",
                                  "group_maps.nii.gz"])
def test_damaged_file_fails_its_checksum(bundle, name):
    _truncate(bundle / name)
    with pytest.raises(BundleError, match="does not match its checksum") as info:
        load_bundle(bundle)
    assert str(bundle / name) in str(info.value)


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: m.pop("n_components"), "lacks the key(s) n_components"),
    (lambda m: m.pop("scaling"), "lacks the key(s) scaling"),
    (lambda m: m.update(resolution="6"), "resolution='6' (str); expected a positive number"),
    (lambda m: m.update(n_components=3.0), "n_components=3.0"),
    (lambda m: m.update(n_components=True), "n_components=True"),
    (lambda m: m.update(voxel_size=-1), "voxel_size=-1"),
    (lambda m: m.update(grid_shape=[4, 4]), "grid_shape"),
    (lambda m: m.update(grid_affine="eye"), "grid_affine"),
    (lambda m: m.update(space=7), "space=7"),
    (lambda m: m.update(input_set="RSP"), "input_set='RSP'"),
    (lambda m: m.update(selected_components=[0, 5]), "selected_components"),
    (lambda m: m["scaling"].update(mean=["a", 1]), "scaling.mean"),
    (lambda m: m["scaling"].update(sd=[1.0]), "scaling.sd"),
    (lambda m: m["scaling"].update(sd=[1.0, 0.0]), "positive numbers"),
    (lambda m: m.update(cv_metrics=[0.8]), "cv_metrics"),
])
@pytest.mark.parametrize("checksums", ["update", "remove"])
def test_schema_errors_name_the_key(bundle, edit, fragment, checksums):
    _edit_json(bundle, edit, checksums=checksums)
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert fragment in message and str(bundle / "bundle.json") in message


def test_unsupported_version(bundle):
    _edit_json(bundle, lambda m: m.update(bundle_version=99))
    with pytest.raises(ModelMismatchError, match="bundle version 99 is not supported"):
        load_bundle(bundle)


def test_not_json(bundle):
    (bundle / "bundle.json").write_text("{truncated")
    _write_checksums(bundle)
    with pytest.raises(BundleError, match="is not valid JSON"):
        load_bundle(bundle)


@pytest.mark.parametrize("array,fragment", [
    (np.ones((2, 2, 2), bool), "shape (2, 2, 2)"),
    (None, "holds a float64 array"),
])
def test_npy_shape_and_dtype(bundle, array, fragment):
    file = bundle / "scaling_support.npy"
    if array is None:
        array = np.load(file).astype(float)
    np.save(file, array)
    _write_checksums(bundle)
    with pytest.raises(BundleError, match="expected bool of shape") as info:
        load_bundle(bundle)
    assert fragment in str(info.value) and str(file) in str(info.value)


def test_maps_must_match_the_component_count(bundle):
    file = bundle / "group_maps.nii.gz"
    img = nib.load(str(file))
    nib.save(nib.Nifti1Image(img.get_fdata()[..., :2], img.affine), str(file))
    _write_checksums(bundle)
    with pytest.raises(BundleError, match="holds 2 maps but bundle.json says n_components=3"):
        load_bundle(bundle)


@pytest.mark.parametrize("name,fragment", [
    ("scaling_support.npy", "could not be read as a .npy array"),
    ("model.keras", "is not a complete Keras archive"),
    ("group_maps.nii.gz", "could not be read as a NIfTI image"),
    ("group_mask.nii.gz", "could not be read as a NIfTI image"),
])
def test_truncated_files_without_checksums(bundle, name, fragment, caplog):
    """An older bundle has no checksums: its contents are still checked in full."""
    (bundle / CHECKSUMS).unlink()
    _truncate(bundle / name, keep=0.6)
    with pytest.raises(BundleError, match=fragment) as info:
        load_bundle(bundle)
    assert str(bundle / name) in str(info.value)


def test_older_bundle_without_checksums_loads_with_a_warning(bundle, caplog):
    (bundle / CHECKSUMS).unlink()
    with caplog.at_level(logging.WARNING, logger="dpnbids.learn.bundle"):
        loaded = load_bundle(bundle)
    assert loaded.selected_components == [0, 2]
    assert "no checksums.sha256" in caplog.text and "older dpnbids" in caplog.text


def test_malformed_checksums_file(bundle):
    (bundle / CHECKSUMS).write_text("not a checksum line\n")
    with pytest.raises(BundleError, match="malformed line 1"):
        load_bundle(bundle)


def test_missing_file_is_not_a_bundle(bundle):
    (bundle / "model.keras").unlink()
    with pytest.raises(InputError, match="missing model.keras"):
        load_bundle(bundle)


def test_unloadable_model_is_named(bundle):
    """A complete zip that Keras cannot read still ends in a message naming the file,
    at load time (before any subject is processed)."""
    import zipfile

    with zipfile.ZipFile(bundle / "model.keras", "w") as archive:
        archive.writestr("junk.txt", "not a model")
    _write_checksums(bundle)
    with pytest.raises(BundleError, match="is not a Keras model archive") as info:
        load_bundle(bundle)
    assert str(bundle / "model.keras") in str(info.value)


@pytest.mark.parametrize("damage", ["remove_key", "string_number", "truncated_npy",
                                    "truncated_keras"])
def test_cli_refuses_a_damaged_model(bundle, tmp_path, damage):
    if damage == "remove_key":
        _edit_json(bundle, lambda m: m.pop("voxel_size"), checksums="remove")
    elif damage == "string_number":
        _edit_json(bundle, lambda m: m.update(n_components="3"), checksums="remove")
    elif damage == "truncated_npy":
        _truncate(bundle / "scaling_support.npy")
    else:
        _truncate(bundle / "model.keras")
    bids = make_tiny_bids(tmp_path / "bids", labels=("1",), n_volumes=120)
    out = tmp_path / "out"
    code = run_cli([bids, out, "participant", "--skip-bids-validation", "--model", bundle])
    err = run_cli.last_stderr
    assert code == 2, err
    assert "Traceback" not in err and "KeyError" not in err and "File not found" not in err
    assert str(bundle) in err
    assert not out.exists()


def test_an_inner_fold_ensemble_is_saved_and_predicts_as_one_model(saved, tmp_path):
    """--inner-folds K: the final model is one Keras model holding K networks; the bundle
    stores, verifies and reloads it like a single network, with the same predictions."""
    import keras

    from dpnbids.learn.bundle import predict
    from dpnbids.learn.model import build_ensemble

    single = load_bundle(saved)
    members = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        members.append(randomise_logit_head(build_voxnet(single.grid_shape + (2,)), seed))
    ensemble = build_ensemble(members)
    folder = dataclasses.replace(single, path=None, network=ensemble).save(tmp_path / "model")
    loaded = load_bundle(folder)
    maps = saved.parent / "maps.nii.gz"
    x = predict(loaded, maps, return_input=True)
    np.testing.assert_allclose(predict(loaded, maps),
                               np.asarray(ensemble.predict(x, verbose=0)).ravel(), rtol=1e-5)


@pytest.fixture(scope="module")
def other_weights(saved, tmp_path_factory):
    """model.keras of another training with the same architecture and component count."""
    import keras

    keras.utils.set_random_seed(2)
    shape = tuple(json.loads((saved / "bundle.json").read_text())["grid_shape"])
    tmp = tmp_path_factory.mktemp("other")
    build_voxnet(shape + (2,)).save(str(tmp / "model.keras"))
    return tmp / "model.keras"


@pytest.mark.parametrize("checksums", ["regenerate", "remove"])
def test_weights_from_another_run_are_refused_without_checksums(bundle, other_weights,
                                                                 checksums):
    import shutil

    shutil.copyfile(other_weights, bundle / "model.keras")
    if checksums == "regenerate":
        _write_checksums(bundle)
    else:
        (bundle / CHECKSUMS).unlink()
    with pytest.raises(BundleError, match="holds weights that bundle.json .* does not record"):
        load_bundle(bundle)


@pytest.mark.parametrize("edit", [
    lambda m: m["scaling"].update(mean=[0.3, -0.2]),
    lambda m: m.update(calibration={"slope": 1.0, "intercept": 0.5, "threshold": 0.5}),
    lambda m: m.update(selected_components=[0, 1]),
])
def test_maps_scaling_or_calibration_edited_after_save_are_refused(bundle, edit):
    _edit_json(bundle, edit)  # checksums regenerated: only the binding can tell
    with pytest.raises(BundleError, match=r"scaling or calibration .*binding digest mismatch"):
        load_bundle(bundle)


def test_maps_from_another_run_are_refused_without_checksums(bundle, rng):
    img = nib.load(str(bundle / "group_maps.nii.gz"))
    nib.save(nib.Nifti1Image(rng.normal(size=img.shape).astype(np.float32), img.affine),
             str(bundle / "group_maps.nii.gz"))
    (bundle / CHECKSUMS).unlink()
    with pytest.raises(BundleError, match="not those its weights were trained with"):
        load_bundle(bundle)


def test_the_saved_binding_loads_and_the_model_still_loads(bundle):
    loaded = load_bundle(bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert len(meta["binding"]["weights_sha256"]) == 64
    assert loaded.model.count_params() > 0  # Keras ignores the binding member


def test_save_then_load_gives_back_the_bundle(tmp_path, rng):
    """Bundle.save mirrors load_bundle: every field comes back (the files as the folder's
    copies, the scaling with its support, the deconfounder with its fitted state)."""
    import keras
    import pandas as pd

    from dpnbids.learn.confounds import FoldDeconfounder

    vs = 12.0
    shape, affine = _source_maps(tmp_path, rng, vs)
    x = rng.normal(size=(10,) + shape + (2,)).astype(np.float32)
    x[:, :2] = 0.0  # voxels outside every subject's brain: not in the support
    table = pd.DataFrame({"site": ["A", "B"] * 5, "age": rng.uniform(20, 60, 10)},
                         index=[f"{i:02d}" for i in range(10)])
    deconf = FoldDeconfounder(table, covariates=["age"], harmonize="site")
    deconf.fit(x, np.arange(10))
    scaling = ChannelScaler.fit(x)
    keras.utils.set_random_seed(2)
    bundle = Bundle(group_maps_file=tmp_path / "maps.nii.gz", mask_file=tmp_path / "mask.nii.gz",
                    input_set="SSC", feature="pe", space="MNI152NLin2009cAsym", resolution=6.0,
                    n_components=3, voxel_size=vs, grid_shape=tuple(shape),
                    grid_affine=np.asarray(affine, float), selected_components=[0, 2],
                    scaling=scaling, cv_metrics={"auc": 0.75}, versions=software_versions("9"),
                    config={"seed": 1, "nested": {"a": [1, 2]}},
                    calibration={"slope": 1.2, "intercept": -0.1, "threshold": 0.4,
                                 "threshold_rule": "youden"},
                    history={"loss": [0.7, 0.6], "val_loss": [0.69, 0.65]},
                    baseline=scaling.transform(x).mean(axis=0), deconfounding=deconf,
                    network=build_voxnet(tuple(shape) + (2,)))
    loaded = load_bundle(bundle.save(tmp_path / "model"))
    assert loaded.path == tmp_path / "model"
    assert loaded.group_maps_file == loaded.path / "group_maps.nii.gz"
    assert loaded.mask_file == loaded.path / "group_mask.nii.gz"
    for name in ("input_set", "feature", "space", "resolution", "n_components", "voxel_size",
                 "grid_shape", "selected_components", "scaling", "cv_metrics", "versions",
                 "config", "calibration", "history"):
        assert getattr(loaded, name) == getattr(bundle, name), name
    assert not loaded.scaling.support[:2].any() and loaded.scaling.support[2:].all()
    np.testing.assert_array_equal(loaded.grid_affine, bundle.grid_affine)
    np.testing.assert_array_equal(loaded.baseline, bundle.baseline)
    (meta, arrays), (want_meta, want_arrays) = loaded.deconfounding.state(), deconf.state()
    assert meta == want_meta and sorted(arrays) == sorted(want_arrays)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], want_arrays[k])
    np.testing.assert_allclose(loaded.model.predict(bundle.baseline[None], verbose=0),
                               bundle.network.predict(bundle.baseline[None], verbose=0),
                               rtol=1e-6)
    assert sorted(p.name for p in loaded.path.iterdir()) == sorted(
        BUNDLE_FILES + (CHECKSUMS, "ig_baseline.npy", "deconfound.npz"))
