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
