"""Confound-only baselines, in-fold covariate removal and harmonisation, leave-group-out
folds, on cohorts with a planted site or motion confound (dpnbids.sim.confounded)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dpnbids.exceptions import DataLeakageError, InputError
from dpnbids.learn.confounds import (FoldDeconfounder, check_fit_leakage, confound_baselines,
                                     confound_permutations,
                                     confound_table, confound_warnings, confounds_by_class,
                                     linear_cv_auc, make_group_splits)
from dpnbids.learn.splits import Fold, make_outer_splits
from dpnbids.learn.metrics import summarise_folds
from dpnbids.sim.confounded import confounded_maps

SEEDS = (11, 12, 13)


def _cohort(confound, seed, effect=0.0):
    x, y, table = confounded_maps(confound=confound, seed=seed, effect_size=effect,
                                  n_effect=2)
    ids = list(table.index)
    return x, y, table, ids, make_outer_splits(ids, y, n_folds=5, random_state=seed)


def _mean_aucs(confound, deconf_kwargs, effect=0.0):
    raw, fixed = [], []
    for seed in SEEDS:
        x, y, table, ids, folds = _cohort(confound, seed, effect)
        raw.append(linear_cv_auc(x, y, ids, folds))
        fixed.append(linear_cv_auc(x, y, ids, folds,
                                   deconfound=FoldDeconfounder(table, **deconf_kwargs)))
    return float(np.mean(raw)), float(np.mean(fixed))


@pytest.mark.parametrize("confound,column,flag", [("site", "site", "`harmonize` site"),
                                                  ("motion", "mean_fd",
                                                   "`covariates` mean_fd")])
def test_baselines_flag_the_planted_confound(confound, column, flag):
    x, y, table, ids, folds = _cohort(confound, 11)
    pred = confound_baselines(table, y, folds)
    assert set(pred["input_set"]) == {"confounds"}
    assert set(pred["model"]) == {"site", "mean_fd", "age", "sex"}
    summary = summarise_folds(pred)
    auc = summary.set_index("model")["auc"]
    assert auc["age"] < 0.7 and auc["sex"] < 0.7    # drawn independently of the label
    index = {s: i for i, s in enumerate(ids)}
    nulls = confound_permutations(
        table, y, lambda labels: [(np.array([index[s] for s in f.outer_train_ids]),
                                   np.array([index[s] for s in f.test_ids])) for f in folds],
        n_permutations=199, random_state=0, columns=[column])
    observed, null = nulls[column]
    p = (1 + np.sum(null >= observed)) / (1 + null.size)
    assert auc[column] >= 0.7 or p < 0.05
    perm = pd.DataFrame([{"input_set": "confounds", "model": column, "p_value": p}])
    warnings = confound_warnings(summary, perm, table=table)
    assert any(w.startswith(column) and flag in w for w in warnings), warnings
    by_class = confounds_by_class(table, y).set_index("confound")
    assert by_class.loc[column, "p_value"] < 0.05


def test_harmonize_site_brings_a_null_cohort_to_chance():
    raw, harmonised = _mean_aucs("site", {"harmonize": "site"})
    assert raw >= 0.65
    assert abs(harmonised - 0.5) <= 0.15


def test_covariates_mean_fd_removes_most_of_a_motion_confound():
    """Linear removal of mean FD cannot remove the generator's non-linear artefacts
    (amplitude / (1 + FD), spikes): the AUC drops by > 0.15, not all the way to 0.5
    (docs/confounds.md)."""
    raw, fixed = _mean_aucs("motion", {"covariates": ["mean_fd"]})
    assert raw >= 0.8
    assert fixed <= raw - 0.15


@pytest.mark.parametrize("confound,kwargs,floor", [("site", {"harmonize": "site"}, 0.85),
                                                   ("motion", {"covariates": ["mean_fd"]},
                                                    0.8)])
def test_the_flags_keep_a_brain_effect_under_the_same_confound(confound, kwargs, floor):
    _, fixed = _mean_aucs(confound, kwargs, effect=3.0)
    assert fixed >= floor


def test_in_fold_removal_is_not_biased_below_chance_like_whole_data_removal():
    from dpnbids.learn.confounds import apply_residualiser, encode, fit_residualiser

    in_fold, whole = [], []
    for seed in SEEDS:
        x, y, table, ids, folds = _cohort("site", seed)
        in_fold.append(linear_cv_auc(x, y, ids, folds,
                                     deconfound=FoldDeconfounder(table, covariates=["site"])))
        _, design = encode(table, ["site"], np.arange(len(ids)))
        flat = x.reshape(len(ids), -1)
        xw = apply_residualiser(fit_residualiser(flat, design), flat, design)
        whole.append(linear_cv_auc((xw.reshape(x.shape) * (x != 0)).astype(np.float32), y,
                                   ids, folds))
    assert np.mean(whole) < 0.35          # the known pessimistic bias
    assert abs(np.mean(in_fold) - 0.5) <= 0.15


def test_fits_never_see_the_test_fold_and_are_recorded():
    x, y, table, ids, folds = _cohort("site", 11)
    deconf = FoldDeconfounder(table, covariates=["age"], harmonize="site")
    fold = folds[0]
    index = {s: i for i, s in enumerate(ids)}
    outer = np.array([index[s] for s in fold.outer_train_ids])
    te = np.array([index[s] for s in fold.test_ids])
    out = deconf.fold(x[outer], x[te], outer, te, fold)
    xo, xt, record = out["outer"], out["test"], out["record"]
    assert xo.shape == x[outer].shape and xt.shape == x[te].shape
    assert sorted(record["fitted_on"]) == sorted(fold.outer_train_ids)
    assert record["harmonize"] == "site" and record["covariates"] == ["age"]
    assert np.all(xt[x[te] == 0] == 0)      # outside the brain stays zero
    bad = Fold(0, 0, fold.train_ids, fold.val_ids, fold.test_ids + (fold.train_ids[0],), 1)
    with pytest.raises(DataLeakageError, match="covariate"):
        check_fit_leakage(bad, list(fold.outer_train_ids), "covariate/harmonisation")


def test_leave_group_out_folds():
    x, y, table, ids, _ = _cohort("site", 11)
    folds = make_group_splits(ids, y, table["site"], random_state=0, group_name="site")
    assert len(folds) == 2
    for fold in folds:
        sites = set(table.loc[list(fold.test_ids), "site"])
        assert len(sites) == 1
        assert not sites & set(table.loc[list(fold.outer_train_ids), "site"])
    assert sorted(sum((list(f.test_ids) for f in folds), [])) == sorted(ids)
    with pytest.raises(InputError, match="at least two levels"):
        make_group_splits(ids, y, ["A"] * len(ids), group_name="site")


def test_confound_table_reads_participants_and_refuses_missing_values():
    participants = pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03"],
                                 "Site": ["x", "y", "x"], "age": ["50", "n/a", "61"],
                                 "group": ["1", "0", "1"]}, index=["01", "02", "03"])
    table = confound_table(participants, ["01", "02", "03"], mean_fd={"01": 0.1, "02": 0.2})
    assert list(table.columns) == ["mean_fd", "site", "age"]
    assert np.isnan(table.loc["03", "mean_fd"]) and np.isnan(table.loc["02", "age"])
    assert table["site"].tolist() == ["x", "y", "x"]
    with pytest.raises(InputError, match="'age' is n/a or empty for sub-02"):
        confound_table(participants, ["01", "02", "03"], required=("age",))
    with pytest.raises(InputError, match="no 'scanner' column"):
        confound_table(participants, ["01", "02", "03"], required=("scanner",))


@pytest.mark.slow
def test_nested_cv_deconfounds_every_model_inside_the_folds():
    """The hook in run_nested_cv: the CNN and the linear baselines see the deconfounded
    inputs, each fold manifest records the fit and the subjects it was fitted on."""
    from dpnbids.learn.cv import run_nested_cv
    from dpnbids.learn.params import ModelParams, TrainParams

    x, y, table = confounded_maps(8, 8, confound="site", shape=(11, 12, 11), n_maps=2, seed=3)
    ids = list(table.index)
    folds = make_outer_splits(ids, y, n_folds=2, random_state=0)
    deconf = FoldDeconfounder(table, covariates=["age"], harmonize="site")
    res = run_nested_cv(x, y, ids, folds, model_params=ModelParams(dense_units=4),
                        train_params=TrainParams(epochs=1, batch_size=8, min_epochs=0),
                        baselines=("svm",), deconfound=deconf, random_state=0)
    assert set(res.predictions["model"]) == {"cnn", "svm"}
    assert res.predictions.groupby("model").size().tolist() == [16, 16]
    for fold, manifest in zip(folds, res.manifests):
        record = manifest["deconfounding"]
        assert sorted(record["fitted_on"]) == sorted(fold.outer_train_ids)
        assert record["harmonize"] == "site" and record["covariates"] == ["age"]


def test_permutation_ranking_shortcut_matches_the_logistic_fit(rng):
    from dpnbids.learn.confounds import _logistic_values, _ranking_values
    from dpnbids.learn.linear import fold_auc

    for _ in range(20):
        f = rng.normal(0, 1, (30, 1))
        y = (rng.random(30) < 0.5).astype(int)
        y[:2] = [0, 1]
        te = rng.normal(0, 1, (9, 1))
        yt = np.r_[0, 1, (rng.random(7) < 0.5).astype(int)]
        assert fold_auc(yt, _ranking_values(f, y, te)) == \
            pytest.approx(fold_auc(yt, _logistic_values(f, y, te)))


def _deconfounded_bundle(tmp_path):
    """A bundle whose model was trained with --covariates mean_fd --harmonize site (sites
    A and B), its group maps (also a patient's 2-component maps) and the fitted deconfounder."""
    import keras
    import nibabel as nib

    from dpnbids.learn.bundle import Bundle
    from dpnbids.learn.model import build_voxnet, cnn_grid
    from dpnbids.learn.scaling import ChannelScaler

    vs = 12.0
    shape, affine = cnn_grid(vs)
    rng = np.random.default_rng(0)
    src_affine = np.diag([6.0, 6.0, 6.0, 1.0])
    src_affine[:3, 3] = affine[:3, 3]
    src_shape = tuple(2 * s for s in shape)
    maps = rng.normal(size=src_shape + (2,)).astype(np.float32)
    nib.save(nib.Nifti1Image(maps, src_affine), str(tmp_path / "maps.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones(src_shape, np.uint8), src_affine),
             str(tmp_path / "mask.nii.gz"))
    n = 12
    table = pd.DataFrame({"site": ["A", "B"] * (n // 2), "mean_fd": rng.uniform(0.1, 0.5, n)},
                         index=[f"{i:02d}" for i in range(n)])
    x = rng.normal(size=(n,) + shape + (2,)).astype(np.float32)
    deconf = FoldDeconfounder(table, covariates=["mean_fd"], harmonize="site")
    deconf.fit(x, np.arange(n))
    keras.utils.set_random_seed(1)
    folder = Bundle(group_maps_file=tmp_path / "maps.nii.gz",
                    mask_file=tmp_path / "mask.nii.gz", selected_components=None,
                    grid_affine=affine, grid_shape=shape,
                    scaling=ChannelScaler([0.0, 0.0], [1.0, 1.0], np.ones(shape, bool)),
                    input_set="ASC", feature="pe", config={}, cv_metrics={},
                    space="MNI152NLin2009aSym", resolution=6, n_components=2,
                    voxel_size=vs, deconfounding=deconf,
                    network=build_voxnet(shape + (2,))).save(tmp_path / "model")
    return folder, tmp_path / "maps.nii.gz", deconf, x


def test_bundle_stores_the_fits_and_predict_applies_them(tmp_path, caplog):
    """The final model's covariate/harmonisation fits travel in the bundle; predicting needs
    the patient's values, and a site the model never saw is corrected with nothing."""
    import logging

    from dpnbids.learn.bundle import load_bundle, predict

    folder, maps, deconf, x = _deconfounded_bundle(tmp_path)
    bundle = load_bundle(folder)
    stored = bundle.deconfounding
    assert stored.covariates == ("mean_fd",) and stored.harmonize == "site"
    patient = pd.DataFrame({"site": ["B"], "mean_fd": [0.3]}, index=["99"])
    got = stored.transform(x[:1], table=patient)[0]
    want = deconf.transform(x[:1], table=patient)[0]
    np.testing.assert_allclose(got, want)
    with pytest.raises(InputError, match="needs the patient's mean_fd, site"):
        predict(bundle, maps)
    report = {}
    with caplog.at_level(logging.WARNING):
        p = predict(bundle, maps,
                    confounds=pd.DataFrame({"site": ["C"], "mean_fd": [0.2]}, index=["99"]),
                    report=report)
    assert 0 <= p[0] <= 1
    assert report["sites_unseen_in_training"] == ["C"]
    assert "not among the model's training sites" in caplog.text


def test_participant_model_reads_the_patients_site_and_motion(tmp_path):
    """participant --model's prediction step: the patient's site from participants.tsv,
    mean FD from the run's confounds table, recorded in the prediction's sidecar."""
    import json

    from dpnbids.derivatives import DerivativesWriter
    from dpnbids.workflows.predict import predict_subject

    folder, maps, _, _ = _deconfounded_bundle(tmp_path)
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tsite\nsub-99\tD\n")
    source = "sub-99/func/sub-99_task-rest_bold.nii.gz"
    conf = DerivativesWriter(out).path(source=source, suffix="timeseries", extension=".tsv",
                                       desc="confounds")
    conf.parent.mkdir(parents=True)
    pd.DataFrame({"framewise_displacement": [np.nan, 0.2, 0.4]}).to_csv(conf, sep="\t",
                                                                        index=False)
    target = predict_subject(folder, maps, maps, out, source, saliency="none", bids_dir=bids)
    sidecar = json.loads(Path(str(target)[:-4] + ".json").read_text())
    assert sidecar["Deconfounding"]["SitesUnseenInTraining"] == ["D"]
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-99\t50\n")
    with pytest.raises(InputError, match="no 'site' column"):
        predict_subject(folder, maps, maps, out, source, saliency="none", bids_dir=bids)
