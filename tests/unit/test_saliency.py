"""Attribution maps: the methods on models with known gradients, integrated gradients'
completeness, the Adebayo et al. (2018) sanity checks, a planted local effect inside the
outer CV, the grid mapping, the network ranking and the written derivatives."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dpnbids.exceptions import InputError
from dpnbids.learn import saliency as sal

#: unequal axes; 4 mm voxels with an origin that is not 0 (a "crop offset")
GRID = (14, 16, 13)
AFFINE = np.array([[4.0, 0, 0, -30.0], [0, 4.0, 0, -40.0], [0, 0, 4.0, -22.0], [0, 0, 0, 1]])


def _linear_model(shape, w, bias=0.3):
    """sigmoid(w . x + bias): the logit's gradient is w everywhere."""
    import keras

    inp = keras.Input(shape=shape, name="maps")
    flat = keras.layers.Flatten()(inp)
    out = keras.layers.Dense(1, activation="sigmoid", name="response")(flat)
    model = keras.Model(inp, out, name="linear")
    model.get_layer("response").set_weights([w.reshape(-1, 1).astype(np.float32),
                                             np.array([bias], np.float32)])
    return model


def test_methods_are_exact_on_a_linear_model(rng):
    shape = (5, 6, 4, 2)
    w = rng.normal(size=shape).astype(np.float32)
    model = _linear_model(shape, w)
    x = rng.normal(size=(3,) + shape).astype(np.float32)
    base = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(sal.gradient_x_input(model, x), w * x, rtol=1e-4, atol=1e-5)
    ig = sal.integrated_gradients(model, x, base, steps=4, batch_size=5)
    np.testing.assert_allclose(ig, w * (x - base), rtol=1e-4, atol=1e-5)
    # patch 1, one channel at a time: the drop of the logit is w * (x - baseline)
    occ = sal.occlusion(model, x[:1], baseline=base, patch=1, per_channel=True)
    np.testing.assert_allclose(occ, w * (x[:1] - base), rtol=1e-3, atol=1e-4)
    # all channels at once: the voxel's drop, shared among its channels
    joint = sal.occlusion(model, x[:1], baseline=base, patch=1)
    np.testing.assert_allclose(joint.sum(-1), (w * (x[:1] - base)).sum(-1), rtol=1e-3,
                               atol=1e-4)
    # probability target: the gradient is p(1-p) w
    p = sal.predict_score(model, x, target="probability")
    gp = sal.gradient_x_input(model, x, target="probability")
    np.testing.assert_allclose(gp, (p * (1 - p))[:, None, None, None, None] * w * x,
                               rtol=1e-3, atol=1e-5)


@pytest.mark.slow  # about 21 s of CPU, 53 s on shared cores (2026-12-07)
def test_integrated_gradients_completeness_on_voxnet(rng):
    """sum(IG) ~= logit(x) - logit(baseline) (the completeness axiom; on the logit)."""
    from dpnbids.learn.model import build_voxnet

    import keras

    from conftest import randomise_logit_head

    keras.utils.set_random_seed(1)
    model = randomise_logit_head(build_voxnet(GRID + (2,)), seed=1)
    x = rng.normal(size=(2,) + GRID + (2,)).astype(np.float32)
    base = 0.2 * rng.normal(size=GRID + (2,)).astype(np.float32)
    ig = sal.integrated_gradients(model, x, base, steps=64)
    delta = sal.predict_score(model, x) - sal.predict_score(model, base[None])[0]
    total = ig.reshape(2, -1).sum(axis=1)
    assert np.all(np.abs(delta) > 1e-3)
    np.testing.assert_allclose(total, delta, rtol=0.05, atol=2e-3)


def test_bad_inputs_say_what_was_expected(rng):
    from dpnbids.exceptions import DimensionError, InputError

    model = _linear_model((3, 3, 3, 1), np.ones((3, 3, 3, 1)))
    with pytest.raises(DimensionError, match=r"expects \(N, 3, 3, 3, 1\)"):
        sal.gradient_x_input(model, np.zeros((1, 3, 3, 2, 1)))
    with pytest.raises(InputError, match="baseline is required"):
        sal.integrated_gradients(model, np.zeros((1, 3, 3, 3, 1)), None)
    with pytest.raises(InputError, match="unknown saliency method"):
        sal.attribute("smoothgrad", model, np.zeros((1, 3, 3, 3, 1)))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_gradients_on_other_backends(backend, tmp_path):
    """The one backend-specific function, run in a fresh process under KERAS_BACKEND."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed in this environment; the {backend} branch "
                    "of _gradient_fn is untested here")
    code = ("import numpy as np, keras\n"
            "from tests.unit.test_saliency import _linear_model\n"
            "from dpnbids.learn import saliency as sal\n"
            "rng = np.random.default_rng(0); shape = (4, 5, 3, 2)\n"
            "w = rng.normal(size=shape).astype('float32'); m = _linear_model(shape, w)\n"
            "x = rng.normal(size=(2,) + shape).astype('float32')\n"
            "assert keras.backend.backend() == %r\n"
            "np.testing.assert_allclose(sal.gradient_x_input(m, x), w * x, rtol=1e-4, "
            "atol=1e-5)\n" % backend)
    env = {**os.environ, "KERAS_BACKEND": backend,
           "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_haufe_pattern_is_covariance_times_weights(rng):
    x = rng.normal(size=(12, 3, 2, 2)).astype(np.float32)
    x[:, 0] += x[:, 1]  # correlated features
    w = rng.normal(size=12)
    expected = np.cov(x.reshape(12, -1), rowvar=False) @ w
    np.testing.assert_allclose(sal.haufe_pattern(x, w).ravel(), expected, rtol=1e-4)


def _world_centroid(vol, affine):
    ijk = np.array(np.nonzero(vol > 0.5 * vol.max())).T
    wts = vol[vol > 0.5 * vol.max()]
    centre = (ijk * wts[:, None]).sum(0) / wts.sum()
    return affine[:3, :3] @ centre + affine[:3, 3]


def test_cnn_grid_maps_back_to_the_same_world_coordinates():
    """A blob on the CNN grid lands at the same world coordinates on the analysis grid,
    and the analysis -> CNN -> analysis round trip keeps a smooth map."""
    from dpnbids.learn.model import cnn_grid, resample_maps_to_grid

    shape, cnn_aff = cnn_grid(6.0)
    analysis_aff = np.array([[4.0, 0, 0, -90.0], [0, 4.0, 0, -126.0], [0, 0, 4.0, -72.0],
                             [0, 0, 0, 1]])
    analysis_shape = (46, 55, 46)
    vol = np.zeros(shape, np.float32)
    vol[8:11, 20:23, 12:15] = 1.0
    back = sal.grid_to_grid(vol, cnn_aff, analysis_aff, analysis_shape)
    assert back.shape == analysis_shape
    np.testing.assert_allclose(_world_centroid(back, analysis_aff),
                               _world_centroid(vol, cnn_aff), atol=2.0)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in analysis_shape], indexing="ij")
    smooth = np.exp(-((ii - 20) ** 2 + (jj - 30) ** 2 + (kk - 25) ** 2) / 60.0)
    on_cnn, _ = resample_maps_to_grid(smooth[None, None], analysis_aff, 6.0)
    again = sal.grid_to_grid(on_cnn[0], cnn_aff, analysis_aff, analysis_shape)[..., 0]
    inside = smooth > 0.2
    assert np.corrcoef(again[inside], smooth[inside])[0, 1] > 0.98


def test_network_ranking_orders_by_mean_share():
    shares = np.array([[0.2, 0.7, 0.1], [0.4, 0.5, 0.1]])
    table = pd.DataFrame({"component": [0, 1, 2], "network": ["DMN", "SMN", "VIS"]})
    out = sal.network_ranking(shares, table, input_set="ASC", model="cnn")
    assert out["network"].tolist() == ["SMN", "DMN", "VIS"]
    assert out["rank"].tolist() == [1, 2, 3]
    np.testing.assert_allclose(out["share_mean"], [0.6, 0.3, 0.1])
    np.testing.assert_allclose(out["share_sd"], [np.std([0.7, 0.5], ddof=1),
                                                 np.std([0.2, 0.4], ddof=1), 0.0])


def test_channel_contributions_split_the_logit_change_by_component(rng):
    """On a linear model integrated gradients are w (x - b), so each channel's sum is its
    exact part of logit(x) - logit(b); the parts add up to the whole."""
    shape = (4, 5, 3, 3)
    w = rng.normal(size=shape).astype(np.float32)
    model = _linear_model(shape, w)
    x = rng.normal(size=(4,) + shape).astype(np.float32)
    base = rng.normal(size=shape).astype(np.float32)
    contrib = sal.channel_contributions(sal.integrated_gradients(model, x, base, steps=2))
    expected = (w * (x - base)).reshape(4, -1, 3).sum(axis=1)
    np.testing.assert_allclose(contrib, expected, rtol=1e-4, atol=1e-4)
    change = sal.predict_score(model, x) - sal.predict_score(model, base[None])
    np.testing.assert_allclose(contrib.sum(axis=1), change, rtol=1e-4, atol=1e-4)


def test_contribution_shares_rank_what_moves_the_prediction_not_voxel_noise(rng):
    """A component whose voxel attributions are large but of random sign (noise gradients)
    carries a large share of the summed |attribution| and almost none of the summed
    contribution; a component with small, coherent attributions is the reverse."""
    n, vox = 20, (6, 6, 6)
    noise = rng.normal(scale=1.0, size=(n,) + vox)
    noise -= noise.mean(axis=(1, 2, 3), keepdims=True)  # sums to 0 in each subject
    signal = np.zeros((n,) + vox)
    signal[:, 2:4, 2:4, 2:4] = rng.choice([-0.5, 0.5], size=n)[:, None, None, None]
    attr = np.stack([noise, signal], axis=-1)
    by_mass = sal.channel_shares(np.abs(attr).mean(axis=0))
    by_contribution = sal.contribution_shares(attr)
    assert by_mass[0] > 0.9 and by_contribution[1] > 0.99
    np.testing.assert_allclose(by_contribution.sum(), 1.0)
    np.testing.assert_allclose(sal.contribution_shares(np.zeros((2,) + vox + (3,))), 0.0)


def test_smoothing_before_the_absolute_value_cancels_sign_noise_not_a_coherent_effect(rng):
    """Voxel attributions of random sign fall by smoothing (then |.|); a coherent blob keeps
    most of its mean |attribution|; FWHM 0 is the identity; the sum is kept."""
    vox = (16, 16, 16)
    noise = rng.normal(size=(6,) + vox + (1,)).astype(np.float32)
    blob = np.zeros((6,) + vox + (1,), np.float32)
    blob[:, 5:11, 5:11, 5:11] = 1.0
    np.testing.assert_array_equal(sal.smooth_attributions(noise, 0.0, 5.0), noise)
    sm_noise = sal.smooth_attributions(noise, 8.0, 5.0)
    sm_blob = sal.smooth_attributions(blob, 8.0, 5.0)
    assert np.abs(sm_noise).mean() < 0.4 * np.abs(noise).mean()
    inner = (slice(None), slice(6, 10), slice(6, 10), slice(6, 10))
    assert np.abs(sm_blob[inner]).mean() > 0.8
    np.testing.assert_allclose(sm_blob.sum(), blob.sum(), rtol=1e-3)
    with pytest.raises(InputError, match="voxel size"):
        sal.SaliencyAccumulator("integrated-gradients", 2, fwhm_mm=8.0)


# ----------------------------------------------------------------------------- planted CV
#: the planted cohort's grid ("CNN grid"): 4 mm, an ellipsoid brain inside it
PGRID = (20, 23, 19)
PBLOB = (slice(6, 11), slice(12, 17), slice(7, 11))


def _brain():
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in PGRID], indexing="ij")
    return ((ii - 9.5) / 8.5) ** 2 + ((jj - 11) / 10) ** 2 + ((kk - 9) / 8) ** 2 <= 1


def _planted_cohort(rng, n=48, channels=3, amplitude=3.0):
    """Responders +a/2, non-responders -a/2 in a blob of channel 0 (component 0); noise
    elsewhere; zero outside the brain (as the scaled CNN inputs are)."""
    y = np.array([1, 0] * (n // 2))
    x = rng.normal(size=(n,) + PGRID + (channels,)).astype(np.float32)
    x[(slice(None), *PBLOB, 0)] += np.where(y == 1, amplitude / 2,
                                            -amplitude / 2)[:, None, None, None]
    return x * _brain()[None, ..., None], y


@pytest.fixture(scope="module")
def planted_cv():
    """A 2-fold nested CV of the VoxNet on the planted cohort, attributed in the folds."""
    from dpnbids.learn.cv import run_nested_cv
    from dpnbids.learn.params import ModelParams, TrainParams
    from dpnbids.learn.splits import make_outer_splits

    rng = np.random.default_rng(42)
    x, y = _planted_cohort(rng)
    ids = [f"{i:02d}" for i in range(1, len(y) + 1)]
    folds = make_outer_splits(ids, y, n_folds=2, random_state=3)
    acc = sal.SaliencyAccumulator("integrated-gradients", x.shape[-1])
    kept = []

    def on_fold(fm):
        acc(fm)
        kept.append(fm)

    res = run_nested_cv(x, y, ids, folds,
                        model_params=ModelParams(epsilon=1e-3, weight_decay=1e-2),
                        train_params=TrainParams(epochs=30, batch_size=4, patience=100),
                        baselines=("svm",), random_state=0, on_fold=on_fold)
    return acc, kept, res


def _blob_ratio(vol3d, affine, blob=PBLOB, radius_mm=8.0, brain=None):
    """Mean within ``radius_mm`` of the planted blob over the mean of the rest of the brain."""
    from scipy.ndimage import distance_transform_edt

    region = np.zeros(vol3d.shape, bool)
    region[blob] = True
    dist = distance_transform_edt(~region, sampling=np.abs(np.diag(affine)[:3]))
    near = dist <= radius_mm
    brain = np.ones(vol3d.shape, bool) if brain is None else brain
    return float(vol3d[near & brain].mean() / vol3d[~near & brain].mean())


@pytest.mark.slow
def test_planted_effect_is_where_the_attribution_is(planted_cv):
    """On the planted component, mean |IG| within 8 mm of the planted blob is >= 2x the
    rest of the brain; the planted component ranks first (top third) for the CNN and for
    the SVM's Haufe pattern."""
    from sklearn.metrics import roc_auc_score

    acc, kept, res = planted_cv
    pred = res.predictions[res.predictions["model"] == "cnn"]
    assert roc_auc_score(pred["true_label"], pred["probability"]) > 0.8
    mean_abs = acc.mean_abs_
    assert mean_abs.shape == PGRID + (3,)
    comp = _blob_ratio(mean_abs[..., 0], AFFINE, brain=_brain())
    summed = _blob_ratio(mean_abs.sum(-1), AFFINE, brain=_brain())
    print(f"|IG| within 8 mm of the blob / rest of brain: planted component {comp:.2f}, "
          f"sum over components {summed:.2f}")
    assert comp >= 2.0
    assert acc.n_evaluations_ == 48 and len(acc.folds_) == 2
    for model in ("cnn", "svm-haufe"):
        ranking = sal.network_ranking(acc.shares_[model], None, input_set="ASC", model=model)
        assert ranking.loc[ranking["component"] == 0, "rank"].item() == 1, ranking


@pytest.mark.slow
def test_randomised_weights_sanity_check(planted_cv):
    """Adebayo et al. (2018) model-parameter randomisation: the same method on the same
    subjects with re-initialised weights does not reproduce the trained model's maps.

    Measured on the signed per-subject maps (rank correlation ~0) and on where |IG|
    concentrates (only the trained model finds the planted blob). The rank correlation of
    the group-mean |maps| stays high (~0.8, printed): both models share the stride-2
    convolution's uneven voxel coverage and the |x - baseline| factor of IG.
    """
    import keras
    from conftest import randomise_logit_head
    from scipy.stats import spearmanr

    _, kept, _ = planted_cv
    brain = _brain()
    for fm in kept:
        base = fm.x_train.mean(axis=0)
        trained = sal.integrated_gradients(fm.model, fm.x_test, base)
        keras.utils.set_random_seed(123)
        random_model = keras.models.clone_model(fm.model)  # fresh initial weights,
        randomise_logit_head(random_model, 123)  # the zero-initialised logit layer too
        rand = sal.integrated_gradients(random_model, fm.x_test, base)
        signed = np.mean([spearmanr(t[brain].ravel(), r[brain].ravel())[0]
                          for t, r in zip(trained, rand)])
        at, ar = np.abs(trained).mean(0), np.abs(rand).mean(0)
        rho_abs = spearmanr(at.sum(-1)[brain], ar.sum(-1)[brain])[0]
        rt, rr = (_blob_ratio(at[..., 0], AFFINE, brain=brain),
                  _blob_ratio(ar[..., 0], AFFINE, brain=brain))
        print(f"trained vs randomised: signed rho {signed:.3f}, |map| rho {rho_abs:.3f}, "
              f"blob ratio {rt:.2f} vs {rr:.2f}")
        assert abs(signed) < 0.1
        assert rt >= 2.0 and rt > 1.25 * rr
        shares = sal.channel_shares(ar)
        assert shares.max() - shares.min() < 0.05  # no component preferred at random


@pytest.mark.slow
def test_written_maps_are_on_the_group_grid(planted_cv, tmp_path):
    """The derivatives: the group components' affine and shape, sidecars, the ranking."""
    from types import SimpleNamespace

    from dpnbids.config import CNNConfig
    from dpnbids.derivatives import DerivativesWriter
    from dpnbids.workflows.saliency import write_group_saliency

    acc, _, _ = planted_cv
    group = tmp_path / "group"
    group.mkdir()
    # an analysis grid unlike the CNN grid: 3 mm, another origin
    aff = np.array([[3.0, 0, 0, -33.0], [0, 3.0, 0, -43.0], [0, 0, 3.0, -25.0], [0, 0, 0, 1]])
    shape = (28, 32, 27)
    comps_file = group / "task-rest_space-MNI152NLin2009cAsym_res-3_desc-ica_components.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape + (3,), np.float32), aff), str(comps_file))
    res = SimpleNamespace(comps_file=comps_file, mask=np.ones(shape, bool), group_dir=group,
                          space="MNI152NLin2009cAsym",
                          components_table=pd.DataFrame({"component": [0, 1, 2],
                                                         "network": ["SMN", "DMN", "VIS"]}))
    config = SimpleNamespace(cnn=CNNConfig())
    out = write_group_saliency(config, DerivativesWriter(tmp_path), res, {"SSC-leaky": acc},
                               AFFINE)
    stem = "task-rest_space-MNI152NLin2009cAsym_res-3_desc-saliencySSCleaky"
    comps = nib.load(str(group / f"{stem}_components.nii.gz"))
    smap = nib.load(str(group / f"{stem}_map.nii.gz"))
    np.testing.assert_array_equal(comps.affine, aff)
    np.testing.assert_array_equal(smap.affine, aff)
    assert comps.shape == shape + (3,) and smap.shape == shape
    meta = json.loads((group / f"{stem}_components.json").read_text())
    assert meta["Method"] == "integrated-gradients" and "mean input map" in meta["Baseline"]
    assert len(meta["Folds"]) == 2 and meta["HeldOutEvaluations"] == 48
    # the planted blob, in world coordinates, is where the written component map peaks
    world = [(AFFINE[a, a] * s.start + AFFINE[a, 3], AFFINE[a, a] * (s.stop - 1) + AFFINE[a, 3])
             for a, s in enumerate(PBLOB)]
    blob = tuple(slice(int(np.ceil((lo - aff[a, 3]) / 3)), int((hi - aff[a, 3]) // 3) + 1)
                 for a, (lo, hi) in enumerate(world))
    brain = sal.grid_to_grid(_brain().astype(np.float32), AFFINE, aff, shape) > 0.5
    data = np.asarray(comps.dataobj)[..., 0]
    assert _blob_ratio(data, aff, blob=blob, brain=brain) >= 1.8
    table = pd.read_csv(group / "saliency_networks.tsv", sep="\t")
    assert set(table["model"]) == {"cnn", "svm-haufe"}
    for _, rows in table.groupby("model"):
        top = rows[rows["rank"] <= np.ceil(len(rows) / 3)]
        assert "SMN" in set(top["network"]), rows
    assert out["sets"]["SSC-leaky"]["map"].name == f"{stem}_map.nii.gz"
    # and the report section draws them
    from dpnbids.reports.saliency import saliency_section

    html = saliency_section(out)
    assert html.count("data:image/png;base64") == 2 and "SSC-leaky" in html


def test_cli_choices_are_the_methods():
    from dpnbids.cli.parser import SALIENCY_METHODS

    assert SALIENCY_METHODS == sal.METHODS


# ----------------------------------------------------------------------------- --model
def _bundle(tmp_path, rng, *, baseline=True):
    """A small bundle (12 mm CNN grid, 3 components, untrained weights) and one subject's
    stage-2 maps on an 8 mm analysis grid."""
    import keras

    from dpnbids.learn.bundle import Bundle
    from dpnbids.learn.scaling import ChannelScaler
    from dpnbids.learn.model import build_voxnet, resample_maps_to_grid
    from dpnbids.workflows.saliency import bundle_baseline

    aff = np.array([[8.0, 0, 0, -80.0], [0, 8.0, 0, -116.0], [0, 0, 8.0, -74.0], [0, 0, 0, 1]])
    shape = (21, 25, 22)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    mask = ((ii - 10) / 9) ** 2 + ((jj - 12) / 11) ** 2 + ((kk - 11) / 9) ** 2 <= 1
    maps = rng.normal(size=(6, 3) + shape).astype(np.float32) * mask
    x, grid_aff = resample_maps_to_grid(maps, aff, 12.0, mask=mask)
    scaling = ChannelScaler.fit(x)
    from conftest import randomise_logit_head

    keras.utils.set_random_seed(0)
    model = randomise_logit_head(build_voxnet(x.shape[1:]))
    nib.save(nib.Nifti1Image(maps[0].transpose(1, 2, 3, 0), aff), str(tmp_path / "g.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(tmp_path / "m.nii.gz"))
    path = Bundle(group_maps_file=tmp_path / "g.nii.gz", mask_file=tmp_path / "m.nii.gz",
                  selected_components=None, grid_affine=grid_aff, grid_shape=x.shape[1:4],
                  scaling=scaling, input_set="ASC", feature="pe", config={},
                  cv_metrics={"auc": 0.5}, space="MNI152NLin2009cAsym", resolution=8.0,
                  n_components=3, voxel_size=12.0,
                  baseline=bundle_baseline(x, None, scaling) if baseline else None,
                  network=model).save(tmp_path / "model")
    subject = tmp_path / "sub-01_task-rest_space-MNI152NLin2009cAsym_res-8_desc-stage2pe_components.nii.gz"
    nib.save(nib.Nifti1Image(maps[1].transpose(1, 2, 3, 0), aff), str(subject))
    return path, subject, aff, shape


@pytest.mark.slow  # about 21 s of CPU, 55 s on shared cores (2026-12-07)
def test_model_prediction_writes_a_subject_map(tmp_path, rng):
    from dpnbids.learn.bundle import load_bundle, scaled_input
    from dpnbids.workflows.predict import predict_subject

    path, subject, aff, shape = _bundle(tmp_path, rng)
    bundle = load_bundle(path)
    assert bundle.baseline is not None and bundle.baseline.shape == tuple(bundle.grid_shape) + (3,)
    out = tmp_path / "out"
    source = tmp_path / "bids" / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    pred = predict_subject(path, subject, subject, out, source)
    func = Path(pred).parent
    stem = "sub-01_task-rest_space-MNI152NLin2009cAsym_res-8_desc-saliency"
    comps = nib.load(str(func / f"{stem}_components.nii.gz"))
    smap = nib.load(str(func / f"{stem}_map.nii.gz"))
    np.testing.assert_array_equal(comps.affine, aff)
    assert comps.shape == shape + (3,) and smap.shape == shape
    meta = json.loads((func / f"{stem}_map.json").read_text())
    assert meta["Method"] == "integrated-gradients" and "mean input map" in meta["Baseline"]
    # on the CNN grid, the prediction's IG sums to logit(x) - logit(training mean)
    xs = scaled_input(bundle, nib.load(str(subject)))
    ig = sal.integrated_gradients(bundle.model, xs, bundle.baseline, steps=64)
    delta = sal.predict_score(bundle.model, xs) - sal.predict_score(bundle.model,
                                                                    bundle.baseline[None])
    np.testing.assert_allclose(ig.sum(), delta[0], rtol=0.05, atol=2e-3)
    assert np.count_nonzero(np.asarray(smap.dataobj)) > 100


def test_older_bundle_without_baseline_still_predicts(tmp_path, rng, caplog):
    from dpnbids.learn.bundle import _write_checksums, load_bundle
    from dpnbids.workflows.predict import predict_subject

    path, subject, _, _ = _bundle(tmp_path, rng, baseline=False)
    assert not (path / "ig_baseline.npy").exists()
    assert load_bundle(path).baseline is None
    source = tmp_path / "bids" / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    with caplog.at_level("WARNING"):
        pred = predict_subject(path, subject, subject, tmp_path / "out", source)
    assert Path(pred).exists()
    assert not list(Path(pred).parent.glob("*desc-saliency*"))
    assert "stores no training mean map" in caplog.text
    # a damaged baseline is refused like any other damaged bundle file
    np.save(path / "ig_baseline.npy", np.zeros((2, 2), np.float32))
    _write_checksums(path)
    from dpnbids.exceptions import BundleError

    with pytest.raises(BundleError, match="ig_baseline.npy.*expected float32 of shape"):
        load_bundle(path)
