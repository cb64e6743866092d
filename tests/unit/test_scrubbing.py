"""Censoring high-motion volumes (``--fd-thresh``, XCP-D style) on planted signals."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.preproc.signal import interpolate_censored
from dpnbids.preproc.denoise import censor_mask, denoise

SHAPE = (5, 6, 7)
AFF = np.diag([3.0, 3.0, 3.0, 1.0])
TR = 2.0


def _img(data):
    img = nib.Nifti1Image(data.astype(np.float32), AFF)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = TR
    return img


def _band_limited(rng, n_t, n, band=(0.015, 0.07)):
    freqs = np.fft.rfftfreq(n_t, d=TR)
    spec = rng.normal(size=(freqs.size, n)) + 1j * rng.normal(size=(freqs.size, n))
    spec[(freqs < band[0]) | (freqs > band[1])] = 0
    ts = np.fft.irfft(spec, n=n_t, axis=0)
    return ts / ts.std(axis=0)


def _table(rng, n_t, high=()):
    fd = np.abs(rng.normal(0, 0.05, n_t))
    fd[0] = np.nan
    fd[list(high)] = 2.0
    cols = {"framewise_displacement": fd}
    for name in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):
        cols[name] = np.cumsum(rng.normal(0, 0.01, n_t))
    return pd.DataFrame(cols)


@pytest.fixture
def planted(rng):
    n_t = 200
    signal = _band_limited(rng, n_t, int(np.prod(SHAPE))).T.reshape(SHAPE + (n_t,))
    clean = 100 + signal
    high = [1, 37, 38, 90, 150, 199]  # edges, a pair, and isolated frames
    spiky = clean.copy()
    spiky[..., high] += 400.0 * rng.choice([-1, 1], size=SHAPE + (len(high),))
    mask = nib.Nifti1Image(np.ones(SHAPE, np.uint8), AFF)
    return dict(n_t=n_t, clean=clean, spiky=spiky, high=high, mask=mask,
                table=_table(rng, n_t, high))


def test_censor_mask_fd_and_motion_outliers(rng):
    table = _table(rng, 50, high=[10, 20])
    assert not censor_mask(table, None).any() and not censor_mask(table, 0).any()
    assert list(np.flatnonzero(censor_mask(table, 0.5))) == [10, 20]
    table["motion_outlier00"] = np.eye(50)[30]
    table["motion_outlier01"] = np.eye(50)[10]
    # fMRIPrep's spike columns are honoured whenever censoring is on, whatever the threshold
    assert list(np.flatnonzero(censor_mask(table, 0.5))) == [10, 20, 30]
    assert list(np.flatnonzero(censor_mask(table, 5.0))) == [10, 30]
    assert not censor_mask(table, None).any()
    assert not censor_mask(table, 0.5)[0]  # the first row's n/a is not censored
    with pytest.raises(InputError, match="positive"):
        censor_mask(table, -1.0)
    with pytest.raises(InputError, match="framewise_displacement"):
        censor_mask(table.drop(columns="framewise_displacement"), 0.5)


def test_interpolate_censored_spline_and_edges():
    t = np.arange(40, dtype=float)
    x = np.stack([np.sin(2 * np.pi * t / 25), 0.01 * t ** 2], axis=1)
    censor = np.zeros(40, bool)
    censor[[0, 1, 17, 18, 39]] = True
    spoilt = x.copy()
    spoilt[censor] = 1e6
    out = interpolate_censored(spoilt, censor)
    np.testing.assert_array_equal(out[~censor], x[~censor])
    np.testing.assert_allclose(out[[17, 18]], x[[17, 18]], atol=2e-3)
    np.testing.assert_array_equal(out[[0, 1]], np.repeat(x[[2]], 2, axis=0))  # edge hold
    np.testing.assert_array_equal(out[39], x[38])
    assert spoilt[17, 0] == 1e6  # the input is not modified
    with pytest.raises(DimensionError, match="one entry per frame"):
        interpolate_censored(spoilt, censor[:-1])
    with pytest.raises(InputError, match="at least 2"):
        interpolate_censored(spoilt, np.r_[np.ones(39, bool), False])


def test_censoring_keeps_spikes_from_leaking_after_bandpass(planted):
    p = planted
    censor = censor_mask(p["table"], 0.5)
    assert list(np.flatnonzero(censor)) == p["high"]
    keep = ~censor
    kw = dict(strategy="minimal", scrub=False)
    ref = denoise(_img(p["clean"]), p["table"], p["mask"], TR, **kw).get_fdata()[..., keep]
    cens = denoise(_img(p["spiky"]), p["table"], p["mask"], TR, censor=censor, **kw)
    plain = denoise(_img(p["spiky"]), p["table"], p["mask"], TR, **kw).get_fdata()[..., keep]
    out = cens.get_fdata()
    assert out.shape == SHAPE + (p["n_t"] - len(p["high"]),)
    assert cens.header.get_data_dtype() == np.float32
    amp = ref.std()
    err_cens = np.abs(out - ref)
    err_plain = np.abs(plain - ref)
    # the neighbours of the spikes: without censoring the band-pass rings the spikes into them
    kept_idx = np.flatnonzero(keep)
    near = np.isin(kept_idx, np.r_[[h + d for h in p["high"] for d in (-2, -1, 1, 2)]])
    assert err_plain[..., near].mean() > 2 * amp
    assert err_cens[..., near].mean() < 0.25 * amp
    assert err_cens.mean() < 0.1 * err_plain.mean()
    r = np.corrcoef(out.reshape(-1, out.shape[-1]).ravel(), ref.reshape(-1).ravel())[0, 1]
    assert r > 0.97


def test_censoring_off_is_byte_identical(planted):
    p = planted
    base = denoise(_img(p["spiky"]), p["table"], p["mask"], TR, strategy="minimal")
    none = denoise(_img(p["spiky"]), p["table"], p["mask"], TR, strategy="minimal",
                   censor=None)
    zeros = denoise(_img(p["spiky"]), p["table"], p["mask"], TR, strategy="minimal",
                    censor=np.zeros(p["n_t"], bool))
    for img in (none, zeros):
        assert np.asanyarray(img.dataobj).tobytes() == np.asanyarray(base.dataobj).tobytes()


def test_censoring_drops_spike_regressors_and_checks_volumes(planted, rng):
    p = planted
    censor = censor_mask(p["table"], 0.5)
    # conn's own spike regressors on the censored volumes are dropped, not interpolated
    table = p["table"].copy()
    for i in range(5):
        table[f"a_comp_cor_{i:02d}"] = rng.normal(size=p["n_t"])
    for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"):
        table[f"{c}_derivative1"] = table[c].diff()
    out = denoise(_img(p["spiky"]), table, p["mask"], TR, strategy="conn", censor=censor)
    assert out.shape[3] == p["n_t"] - censor.sum()
    with pytest.raises(DimensionError, match="one per volume"):
        denoise(_img(p["spiky"]), table, p["mask"], TR, censor=censor[:-1])
    heavy = np.ones(p["n_t"], bool)
    heavy[::20] = False  # 10 volumes left for 17 regressors
    with pytest.raises(InputError, match="censoring leaves 10 of 200 volumes"):
        denoise(_img(p["spiky"]), table, p["mask"], TR, strategy="conn", censor=heavy)


def test_confounds_and_denoise_censors_fmriprep_run(tmp_path):
    from fmriprep_fixtures import make_fmriprep_dataset

    from dpnbids.preproc.confounds import n_censored
    from dpnbids.preproc.pipeline import confounds_and_denoise

    fx = make_fmriprep_dataset(tmp_path / "fx", subjects={"01": 1}, n_volumes=80,
                               layouts=("native",), n_nonsteady=0, n_spikes=3, seed=5)
    run = fx["subjects"]["01"]["runs"][0]
    expected = n_censored(run["confounds"], 0.5)
    assert expected >= 3
    res = {}
    for name, thresh in (("off", None), ("on", 0.5)):
        out = tmp_path / name
        out.mkdir()
        res[name] = confounds_and_denoise(run["bold"]["native"], run["mask"]["native"], tr=2.0,
                                          confounds_file=run["confounds"], strategy="minimal",
                                          smoothing_fwhm=0, fd_thresh=thresh, out_dir=out)
    assert "n_censored" not in res["off"]["motion_summary"]
    summary = res["on"]["motion_summary"]
    assert summary["n_censored"] == expected and summary["n_kept"] == 80 - expected
    assert summary["fd_thresh"] == 0.5 and len(summary["censored_volumes"]) == expected
    assert nib.load(res["on"]["denoised"]).shape[3] == 80 - expected
    assert nib.load(res["off"]["denoised"]).shape[3] == 80
