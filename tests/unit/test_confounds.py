"""Confounds table: FD by hand, DVARS by formula, aCompCor orthogonality, TSV/JSON."""
from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dpnbids.exceptions import DimensionError
from dpnbids.preproc.confounds import (acompcor, compute_confounds, compute_dvars,
                                       confounds_metadata, cosine_basis,
                                       framewise_displacement, write_confounds)

SHAPE = (7, 8, 9)
AFF = np.diag([3.0, 3.0, 3.0, 1.0])


def test_fd_matches_hand_computation():
    params = np.array([[0, 0, 0, 0, 0, 0],
                       [1.0, -0.5, 0.2, 0.01, 0.0, -0.02],
                       [1.0, -0.5, 0.2, 0.01, 0.0, -0.02],
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    fd = framewise_displacement(params)
    # row 1: 1 + 0.5 + 0.2 + 50 * (0.01 + 0.02) = 3.2
    assert np.isnan(fd[0])
    np.testing.assert_allclose(fd[1:], [3.2, 0.0, 3.2])
    with pytest.raises(DimensionError, match=re.escape("motion parameters must be (T, 6)")):
        framewise_displacement(np.zeros((5, 3)))


def test_dvars_matches_direct_formula(rng):
    x = rng.normal(500, 20, (300, 80))
    dvars, std = compute_dvars(x)
    scaled = x / np.median(x) * 1000
    direct = np.sqrt(np.mean(np.diff(scaled, axis=1) ** 2, axis=0))
    assert np.isnan(dvars[0]) and np.isnan(std[0])
    np.testing.assert_allclose(dvars[1:], direct, rtol=1e-5)
    # white noise: standardised DVARS about 1
    assert np.nanmean(std) == pytest.approx(1.0, abs=0.05)
    # a spike stands out
    x[:, 40] += 60
    _, std = compute_dvars(x)
    assert np.nanargmax(std) in (40, 41) and np.nanmax(std) > 2


def test_acompcor_orthonormal_and_orthogonal_to_basis(rng):
    n_t, tr = 90, 2.0
    basis = cosine_basis(n_t, tr, 128.0)
    assert basis.shape == (n_t, int(np.floor(2 * n_t * tr / 128 + 1)) - 1)
    noise = rng.normal(size=(n_t, 2))
    loadings = rng.normal(size=(2, 200))
    x = (noise @ loadings + 0.1 * rng.normal(size=(n_t, 200))).T + 100
    comps, svals, var = acompcor(x, basis, 5)
    assert comps.shape == (n_t, 5)
    np.testing.assert_allclose(comps.T @ comps, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(basis.T @ comps, 0, atol=1e-10)
    np.testing.assert_allclose(comps.sum(axis=0), 0, atol=1e-10)
    assert np.all(np.diff(svals) <= 0) and var[:2].sum() > 0.9
    # same as an SVD of the high-passed, z-scored data
    design = np.hstack([np.ones((n_t, 1)), basis])
    y = x.T - design @ np.linalg.lstsq(design, x.T, rcond=None)[0]
    y /= y.std(axis=0)
    u, s, _ = np.linalg.svd(y, full_matrices=False)
    np.testing.assert_allclose(svals, s[:5], rtol=1e-8)
    np.testing.assert_allclose(np.abs(u[:, :5].T @ comps), np.eye(5), atol=1e-6)
    # the two planted noise sources span the first two components
    design = np.hstack([np.ones((n_t, 1)), basis])
    resid = noise - design @ np.linalg.lstsq(design, noise, rcond=None)[0]
    proj = comps[:, :2] @ (comps[:, :2].T @ resid)
    assert np.linalg.norm(proj) / np.linalg.norm(resid) > 0.99


def _run(rng, n_t=40, n_dummy_planted=0):
    data = rng.normal(1000, 10, SHAPE + (n_t,))
    data[..., :n_dummy_planted] *= 1.5
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    wm = np.zeros(SHAPE)
    wm[1:5, 1:6, 1:7] = 0.95
    csf = np.zeros(SHAPE)
    csf[5:7, 6:8, 4:8] = 0.97
    params = np.cumsum(rng.normal(0, 0.05, (n_t, 6)), axis=0)
    params[:, 3:] *= 0.01
    img = nib.Nifti1Image(data.astype(np.float32), AFF)
    return (img, nib.Nifti1Image(mask, AFF), params, nib.Nifti1Image(wm, AFF),
            nib.Nifti1Image(csf, AFF), data)


def test_compute_confounds_columns_and_values(rng):
    img, mask, params, wm, csf, data = _run(rng)
    df = compute_confounds(img, mask, motion_params=params, wm_img=wm, csf_img=csf, tr=2.0,
                           n_dummy=0)
    for col in ["trans_x", "rot_z", "trans_x_derivative1", "rot_z_derivative1_power2",
                "trans_y_power2", "framewise_displacement", "dvars", "std_dvars",
                "global_signal", "white_matter", "csf", "csf_derivative1",
                "a_comp_cor_00", "a_comp_cor_04", "cosine00"]:
        assert col in df, col
    assert not any(c.startswith("non_steady_state") for c in df)
    for col in ["trans_x_derivative1", "framewise_displacement", "dvars", "std_dvars"]:
        assert np.isnan(df[col].iloc[0]) and df[col].iloc[1:].notna().all()
    np.testing.assert_allclose(df["global_signal"], data[1:-1, 1:-1, 1:-1].mean(axis=(0, 1, 2)))
    # WM: p > 0.9, eroded by one voxel -> the interior of the 4x5x6 block
    np.testing.assert_allclose(df["white_matter"], data[2:4, 2:5, 2:6].mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(df["csf"], data[5:7, 6:8, 4:8].mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(df["framewise_displacement"], framewise_displacement(params))
    np.testing.assert_allclose(df["trans_x_derivative1"].iloc[1:], np.diff(params[:, 0]))
    acc = df[[f"a_comp_cor_{k:02d}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(acc.T @ acc, np.eye(5), atol=1e-8)
    meta = confounds_metadata(df)
    assert meta["a_comp_cor_00"]["Method"] == "aCompCor"
    assert meta["a_comp_cor_00"]["Mask"] == "combined"
    var = [meta[f"a_comp_cor_{k:02d}"]["VarianceExplained"] for k in range(5)]
    assert np.all(np.diff(var) <= 0) and 0 < sum(var) < 1
    assert meta["white_matter"]["Mask"] == "probability > 0.9, eroded 1 voxel"
    assert meta["framewise_displacement"]["Radius"] == 50.0


def test_nonsteady_outliers_detected(rng):
    img, mask, params, wm, csf, _ = _run(rng, n_t=50, n_dummy_planted=2)
    df = compute_confounds(img, mask, motion_params=params, tr=2.0)
    assert [c for c in df if c.startswith("non_steady")] == [
        "non_steady_state_outlier_00", "non_steady_state_outlier_01"]
    assert df["non_steady_state_outlier_01"].tolist() == [0, 1] + [0] * 48
    assert "a_comp_cor_00" not in df and "white_matter" not in df


def test_wrong_shapes(rng):
    img, mask, params, wm, csf, _ = _run(rng)
    with pytest.raises(DimensionError, match=re.escape(
            "motion parameters have shape (39, 6); expected (40, 6)")):
        compute_confounds(img, mask, motion_params=params[1:], tr=2.0)
    bad = nib.Nifti1Image(np.zeros((7, 8, 10)), AFF)
    with pytest.raises(DimensionError, match=re.escape(
            "The white_matter probability map has shape (7, 8, 10) but the BOLD grid is "
            "(7, 8, 9)")):
        compute_confounds(img, mask, motion_params=params, wm_img=bad, tr=2.0, n_dummy=0)


def test_write_confounds_na(tmp_path, rng):
    img, mask, params, wm, csf, _ = _run(rng)
    df = compute_confounds(img, mask, motion_params=params, wm_img=wm, csf_img=csf, tr=2.0,
                           n_dummy=0)
    path = write_confounds(df, tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv")
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    first = dict(zip(header, lines[1].split("\t")))
    assert first["framewise_displacement"] == "n/a" and first["trans_x_derivative1"] == "n/a"
    assert "nan" not in path.read_text().lower().replace("n/a", "")
    back = pd.read_csv(path, sep="\t", na_values=["n/a"])
    np.testing.assert_allclose(back["dvars"].iloc[1:], df["dvars"].iloc[1:])
    assert list(tmp_path.iterdir()) == [path]


# ----------------------------------------------------------------- fMRIPrep tables
def _fmriprep_table(rng, n_t=30, *, drop=()):
    motion = np.cumsum(rng.normal(0, 0.05, (n_t, 6)), axis=0)
    cols = {}
    for k, name in enumerate(["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]):
        x = motion[:, k]
        d = np.r_[np.nan, np.diff(x)]
        cols.update({name: x, f"{name}_derivative1": d, f"{name}_power2": x ** 2,
                     f"{name}_derivative1_power2": d ** 2})
    for i in range(7):
        cols[f"a_comp_cor_{i:02d}"] = rng.normal(size=n_t)
    cols["framewise_displacement"] = np.r_[np.nan, np.abs(rng.normal(0, 0.1, n_t - 1))]
    cols["non_steady_state_outlier00"] = np.eye(n_t)[0]
    cols["motion_outlier00"] = np.eye(n_t)[7]
    table = pd.DataFrame(cols)
    return table.drop(columns=list(drop)), table


def _write(tmp_path, table, meta=None):
    path = tmp_path / "sub-01_task-rest_desc-confounds_timeseries.tsv"
    table.to_csv(path, sep="\t", na_rep="n/a", index=False)
    if meta is not None:
        path.with_suffix(".json").write_text(__import__("json").dumps(meta))
    return path


def test_read_confounds_na_and_nothing_computed_when_complete(tmp_path, rng):
    from dpnbids.preproc.confounds import read_confounds

    table, _ = _fmriprep_table(rng)
    path = _write(tmp_path, table)
    df, notes = read_confounds(path, strategy="24p")
    assert notes == [] and list(df.columns) == list(table.columns)
    assert np.isnan(df["trans_x_derivative1"].iloc[0])
    np.testing.assert_allclose(df["trans_x"], table["trans_x"], rtol=1e-12)


@pytest.mark.parametrize("strategy", ["24p", "conn", "acompcor"])
def test_read_confounds_computes_missing_derivatives_as_fmriprep(tmp_path, rng, strategy):
    from dpnbids.preproc.confounds import read_confounds
    from dpnbids.preproc.denoise import strategy_columns

    expansions = [c for c in _fmriprep_table(rng)[1].columns
                  if c.endswith(("_derivative1", "_power2"))]
    table, full = _fmriprep_table(np.random.default_rng(1), drop=expansions)
    path = _write(tmp_path, table)
    df, notes = read_confounds(path, strategy=strategy)
    wanted = strategy_columns(strategy, df)
    full = _fmriprep_table(np.random.default_rng(1))[1]
    for col in wanted:
        np.testing.assert_allclose(df[col].to_numpy(), full[col].to_numpy(), equal_nan=True,
                                   rtol=1e-10, atol=1e-12, err_msg=col)
    assert np.isnan(df["trans_x_derivative1"].iloc[0])
    if strategy == "24p":
        assert np.isnan(df["rot_z_derivative1_power2"].iloc[0])
        assert not np.isnan(df["rot_z_power2"].iloc[0])
    else:  # only what the strategy needs is added
        assert "trans_x_power2" not in df
    assert notes and all(path.name in n and "computed" in n for n in notes)
    assert any("'trans_x'" in n for n in notes)
    # the fMRIPrep 23 spelling of non-steady-state outliers is regressed
    assert "non_steady_state_outlier00" in wanted


def test_missing_base_column_is_refused_with_file_named(tmp_path, rng):
    from dpnbids.exceptions import InputError
    from dpnbids.preproc.confounds import check_confounds_header, read_confounds

    table, _ = _fmriprep_table(rng, drop=["rot_y", "rot_y_derivative1"])
    path = _write(tmp_path, table)
    with pytest.raises(InputError, match=r"(?s)sub-01_task-rest.*rot_y_derivative1"):
        read_confounds(path, strategy="conn")
    with pytest.raises(InputError, match=r"(?s)sub-01_task-rest.*\['rot_y'\] that"):
        check_confounds_header(path, "minimal")
    table, _ = _fmriprep_table(rng, drop=["rot_y_derivative1"])
    assert "rot_y_derivative1" in check_confounds_header(_write(tmp_path, table), "conn")


def test_check_confounds_header_accepts_computable_derivatives(tmp_path, rng):
    from dpnbids.preproc.confounds import check_confounds_header

    table, _ = _fmriprep_table(rng, drop=[c for c in _fmriprep_table(rng)[1].columns
                                          if "_derivative1" in c or "_power2" in c])
    meta = {f"a_comp_cor_{i:02d}": {"Mask": "combined" if i >= 2 else "CSF", "Retained": True}
            for i in range(7)}
    path = _write(tmp_path, table, meta)
    cols = check_confounds_header(path, "conn")
    assert "trans_x_derivative1" in cols
    # combined-mask components from the JSON; the padded expansion columns are never picked
    assert [c for c in cols if c.startswith("a_comp_cor")] == [f"a_comp_cor_{i:02d}"
                                                                for i in range(2, 7)]
    assert len(check_confounds_header(path, "24p")) == 24 + 1


def test_read_confounds_of_fmriprep_fixture(tmp_path):
    from fmriprep_fixtures import make_fmriprep_dataset

    from dpnbids.preproc.confounds import n_censored, read_confounds

    fx = make_fmriprep_dataset(tmp_path, subjects={"01": 1}, n_volumes=24, layouts=(),
                               n_nonsteady=1, n_spikes=2,
                               drop_columns=[f"{m}_derivative1" for m in
                                             ("trans_x", "trans_y", "trans_z",
                                              "rot_x", "rot_y", "rot_z")])
    path = fx["subjects"]["01"]["runs"][0]["confounds"]
    df, notes = read_confounds(path, strategy="conn")
    assert len(notes) == 6 and df["rot_z_derivative1"].iloc[1:].notna().all()
    n_spikes = sum(c.startswith("motion_outlier") for c in df.columns)
    assert n_censored(path, None) == 0
    assert n_censored(path, 100.0) == n_spikes  # the spike columns alone
    fd = df["framewise_displacement"].fillna(0).to_numpy()
    spikes = df[[c for c in df.columns if c.startswith("motion_outlier")]].to_numpy().sum(1) > 0
    assert n_censored(path, 0.2) == int(((fd > 0.2) | spikes).sum())
