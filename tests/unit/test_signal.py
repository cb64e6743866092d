"""Non-steady states, slice timing, smoothing and denoising on planted signals."""
from __future__ import annotations

import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.preproc.denoise import STRATEGIES, denoise, strategy_columns
from dpnbids.preproc.signal import (detect_nonsteady_states, fft_bandpass, slice_time_correct,
                                    slice_timing_from_order, smooth)

SHAPE = (7, 8, 9)


def _img(data, tr=2.0, zoom=3.0):
    img = nib.Nifti1Image(data.astype(np.float32), np.diag([zoom, zoom, zoom, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr
    return img


# ----------------------------------------------------------------- non-steady states
@pytest.mark.parametrize("n_dummy", [0, 1, 3])
def test_nonsteady_states_recovered(rng, n_dummy):
    data = rng.normal(100, 2, SHAPE + (60,))
    data[..., :n_dummy] *= np.linspace(1.6, 1.2, max(n_dummy, 1))[:n_dummy]
    assert detect_nonsteady_states(_img(data)) == n_dummy


def test_nonsteady_states_stationary_and_constant(rng):
    assert detect_nonsteady_states(rng.normal(100, 1, (50, 80))) == 0
    assert detect_nonsteady_states(np.full(SHAPE + (30,), 7.0)) == 0


def test_nonsteady_states_capped(rng):
    data = rng.normal(100, 1, SHAPE + (60,))
    data[..., :8] *= 2.0
    assert detect_nonsteady_states(data, max_dummies=5) == 5


# ----------------------------------------------------------------- slice timing
def test_slice_timing_from_order():
    assert slice_timing_from_order(4, 2.0, "ascending") == [0.0, 0.5, 1.0, 1.5]
    assert slice_timing_from_order(4, 2.0, "descending") == [1.5, 1.0, 0.5, 0.0]
    # acquisition 0, 2, 4, 1, 3 -> slice 1 is 4th (t = 3 * 0.4)
    np.testing.assert_allclose(slice_timing_from_order(5, 2.0, "interleaved"),
                               [0.0, 1.2, 0.4, 1.6, 0.8])
    with pytest.raises(InputError, match="Unknown slice order 'spiral'"):
        slice_timing_from_order(4, 2.0, "spiral")


@pytest.mark.parametrize("method", ["fourier", "cubic"])
def test_slice_time_correction_restores_phase(method):
    tr, n_t, f = 2.0, 120, 0.04  # 0.08 cycles per volume
    n_slices = SHAPE[2]
    st = np.array(slice_timing_from_order(n_slices, tr, "interleaved"))
    t = np.arange(n_t) * tr
    data = np.empty(SHAPE + (n_t,))
    for s in range(n_slices):
        data[:, :, s, :] = 100 + 10 * np.sin(2 * np.pi * f * (t + st[s]))
    before = np.abs(data[0, 0, :, 10:-10] - data[0, 0, :1, 10:-10]).max()
    out = slice_time_correct(_img(data, tr), list(st), tr, reference="middle",
                             method=method).get_fdata()
    t_ref = 0.5 * (st.min() + st.max())
    truth = 100 + 10 * np.sin(2 * np.pi * f * (t + t_ref))
    err = np.abs(out[:, :, :, 10:-10] - truth[10:-10]).max()
    assert before > 3.0  # slices out of phase before correction
    assert err < 0.05 * before


def test_slice_axis_and_reference_float(rng):
    tr, n_t = 2.0, 80
    st = slice_timing_from_order(SHAPE[0], tr, "ascending")
    t = np.arange(n_t) * tr
    data = np.empty(SHAPE + (n_t,))
    for s in range(SHAPE[0]):
        data[s] = np.sin(2 * np.pi * 0.03 * (t + st[s]))
    out = slice_time_correct(_img(data), st, tr, slice_axis=0, reference=0.0).get_fdata()
    np.testing.assert_allclose(out[..., 8:-8], np.broadcast_to(
        np.sin(2 * np.pi * 0.03 * t)[8:-8], out[..., 8:-8].shape), atol=0.02)


def test_slice_encoding_direction_negative_reverses(rng):
    tr, n_t = 2.0, 80
    st = slice_timing_from_order(SHAPE[1], tr, "ascending")  # listed from the last slice
    t = np.arange(n_t) * tr
    data = np.empty(SHAPE + (n_t,))
    for s in range(SHAPE[1]):
        data[:, s] = np.sin(2 * np.pi * 0.03 * (t + st[SHAPE[1] - 1 - s]))
    out = slice_time_correct(_img(data), st, tr, reference=0.0,
                             slice_encoding_direction="j-").get_fdata()
    np.testing.assert_allclose(out[..., 8:-8], np.broadcast_to(
        np.sin(2 * np.pi * 0.03 * t)[8:-8], out[..., 8:-8].shape), atol=0.02)
    with pytest.raises(InputError, match="SliceEncodingDirection must be one of"):
        slice_time_correct(_img(data), st, tr, slice_encoding_direction="z")


def test_slice_timing_errors(rng):
    img = _img(rng.normal(size=SHAPE + (10,)))
    with pytest.raises(DimensionError, match=re.escape(
            "SliceTiming has 3 entries but the image has 9 slices along axis 2")):
        slice_time_correct(img, [0, 0.5, 1.0], 2.0)
    with pytest.raises(InputError, match="They look like milliseconds"):
        slice_time_correct(img, list(np.arange(9) * 200.0), 2.0)


# ----------------------------------------------------------------- smoothing
def test_smooth_fwhm(rng):
    data = np.zeros((15, 16, 17, 2))
    data[7, 8, 8] = 1.0
    out = smooth(_img(data, zoom=2.0), 6.0).get_fdata()[..., 0]
    assert out.sum() == pytest.approx(1.0, rel=1e-3)
    profile = out[:, 8, 8]
    sigma_vox = 6.0 / (2 * np.sqrt(2 * np.log(2))) / 2.0
    assert profile[8] / profile[7] == pytest.approx(np.exp(-1 / (2 * sigma_vox ** 2)),
                                                    rel=0.05)
    assert smooth(_img(data), 0) is not None
    with pytest.raises(InputError, match="FWHM must be >= 0 mm"):
        smooth(_img(data), -1)


def test_smooth_matches_nilearn_and_mask_box_changes_nothing_inside(rng):
    from nilearn.image import smooth_img

    data = rng.normal(100, 5, (30, 34, 28, 4))
    data[3, 4, 5, 1] = np.nan  # non-finite values become 0 first, as in nilearn
    affine = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0.3, -126], [0, 0, 2.5, -72],
                       [0, 0, 0, 1]])
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    mask = np.zeros(data.shape[:3], dtype=bool)
    mask[9:20, 12:25, 8:21] = True
    ref = smooth_img(img, fwhm=5.0).get_fdata()
    full = smooth(img, 5.0).get_fdata()
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-3)
    boxed = smooth(img, 5.0, mask=nib.Nifti1Image(mask.astype(np.uint8), affine))
    assert boxed.get_data_dtype() == np.float32
    np.testing.assert_allclose(boxed.get_fdata()[mask], ref[mask], rtol=1e-5, atol=1e-3)
    # outside the box (mask + kernel radius) the data are left unsmoothed
    far = boxed.get_fdata()[0, 0, 0]
    np.testing.assert_allclose(far, data[0, 0, 0], rtol=1e-6)
    with pytest.raises(DimensionError, match="does not match the image grid"):
        smooth(img, 5.0, mask=mask[:-1])


# ----------------------------------------------------------------- denoising
def _confounds(rng, n_t):
    cols = {c: rng.normal(size=n_t) for c in STRATEGIES["acompcor"]}
    df = pd.DataFrame(cols)
    for c in STRATEGIES["24p"]:
        if c not in df:
            df[c] = rng.normal(size=n_t)
    df["framewise_displacement"] = np.abs(rng.normal(0, 0.1, n_t))
    df["global_signal"] = rng.normal(size=n_t)
    for c in df.columns:
        if "derivative1" in c or c == "framewise_displacement":
            df.loc[0, c] = np.nan
    return df


def test_fft_bandpass_keeps_band_and_removes_mean():
    tr, n_t = 2.0, 50  # short run; DCT-II cosines are exact on the mirror-padded grid

    def dct(k):  # frequency k / (2 T tr) Hz
        return np.cos(np.pi * k * (2 * np.arange(n_t) + 1) / (2 * n_t))

    inband = dct(10)  # 0.05 Hz
    out = fft_bandpass(np.stack([inband + 7.0 + dct(40) + 2 * dct(1),  # 0.2 and 0.005 Hz
                                 np.full(n_t, 3.0)], axis=1), tr, high_pass=0.008,
                       low_pass=0.09)
    np.testing.assert_allclose(out[:, 0], inband, atol=1e-10)
    np.testing.assert_allclose(out[:, 1], 0, atol=1e-12)


@pytest.mark.parametrize("filt", ["fft", "butterworth"])
def test_denoise_removes_confound_and_keeps_band(rng, filt):
    tr, n_t = 2.0, 400
    t = np.arange(n_t) * tr
    conf = _confounds(rng, n_t)
    network = np.sin(2 * np.pi * 0.03 * t)  # in the 0.008-0.09 Hz band
    confound_ts = np.nan_to_num(conf["a_comp_cor_01"].to_numpy())
    data = (100 + rng.normal(0, 0.2, SHAPE + (n_t,)) + network + 5 * confound_ts
            + 3 * np.sin(2 * np.pi * 0.2 * t))
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    out = denoise(_img(data, tr), conf, nib.Nifti1Image(mask, np.diag([3.0, 3, 3, 1])), tr,
                  strategy="acompcor", filter=filt).get_fdata()
    assert np.all(out[mask == 0] == 0)
    ts = out[3, 4, 4]
    # 17 random regressors take ~13% of the in-band variance by chance
    assert np.corrcoef(ts[10:-10], network[10:-10])[0, 1] > 0.85
    assert abs(np.corrcoef(ts, confound_ts)[0, 1]) < 0.1


def test_denoise_conn_scrubs_spike(rng):
    tr, n_t = 2.0, 120
    conf = _confounds(rng, n_t)
    conf.loc[60, "framewise_displacement"] = 2.0  # > 0.9 mm
    data = 100 + rng.normal(0, 1, SHAPE + (n_t,))
    data[..., 60] += 30
    mask = nib.Nifti1Image(np.ones(SHAPE, np.uint8), np.diag([3.0, 3, 3, 1]))
    conn = denoise(_img(data, tr), conf, mask, tr, strategy="conn").get_fdata()
    plain = denoise(_img(data, tr), conf, mask, tr, strategy="acompcor").get_fdata()
    assert np.abs(conn[..., 60]).mean() < 0.1 * np.abs(plain[..., 60]).mean()


def test_strategy_columns_and_missing(rng):
    conf = _confounds(rng, 30)
    conf["non_steady_state_outlier_00"] = np.eye(30)[0]
    cols = strategy_columns("minimal", conf)
    assert cols == ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                    "non_steady_state_outlier_00"]
    assert len(strategy_columns("24p", conf)) == 25
    assert strategy_columns("none", conf) == ["non_steady_state_outlier_00"]
    assert strategy_columns("conn", conf, columns=["trans_x", "global_signal"]) == [
        "trans_x", "global_signal", "non_steady_state_outlier_00"]
    with pytest.raises(InputError, match=re.escape(
            "Custom confound columns need ['wm'] that the confounds table lacks")):
        strategy_columns("conn", conf, columns=["trans_x", "wm"])
    small = conf[["trans_x", "trans_y"]]
    with pytest.raises(InputError, match=re.escape(
            "Denoising strategy 'minimal' needs confound columns ['trans_z', 'rot_x', "
            "'rot_y', 'rot_z'] that the confounds table lacks. Available columns: "
            "['trans_x', 'trans_y']")):
        strategy_columns("minimal", small)
    with pytest.raises(InputError, match="Unknown denoising strategy 'fancy'"):
        strategy_columns("fancy", conf)


def test_combined_acompcor_picked_from_fmriprep_metadata(rng):
    conf = _confounds(rng, 30)
    for k in range(5, 12):
        conf[f"a_comp_cor_{k:02d}"] = rng.normal(size=30)
    meta = {f"a_comp_cor_{k:02d}": {"Mask": "CSF" if k < 4 else "WM" if k < 7 else
                                    "combined", "Retained": True} for k in range(12)}
    cols = strategy_columns("acompcor", conf, confounds_meta=meta)
    assert cols[-5:] == [f"a_comp_cor_{k:02d}" for k in range(7, 12)]


def test_denoise_shape_errors(rng):
    conf = _confounds(rng, 20)
    img = _img(rng.normal(size=SHAPE + (25,)))
    mask = nib.Nifti1Image(np.ones(SHAPE, np.uint8), np.diag([3.0, 3, 3, 1]))
    with pytest.raises(DimensionError, match="The confounds table has 20 rows but the BOLD "
                                             "series has 25 volumes"):
        denoise(img, conf, mask, 2.0)
    bad_mask = nib.Nifti1Image(np.ones((7, 8, 10), np.uint8), np.diag([3.0, 3, 3, 1]))
    with pytest.raises(DimensionError, match=re.escape("Mask shape (7, 8, 10) differs from "
                                                       "the BOLD grid (7, 8, 9)")):
        denoise(img, _confounds(rng, 25), bad_mask, 2.0)


def test_denoise_refuses_to_remove_all_band_signal(rng):
    tr, n_t = 2.0, 50  # 17 bins in 0.008-0.09 Hz, 17 "conn" regressors
    conf = _confounds(rng, n_t)
    img = _img(100 + rng.normal(size=SHAPE + (n_t,)))
    mask = nib.Nifti1Image(np.ones(SHAPE, np.uint8), np.diag([3.0, 3, 3, 1]))
    with pytest.raises(InputError, match=re.escape(
            "denoise: 17 confound regressors (rank 17) for 17 degrees of freedom in the "
            "0.008-0.09 Hz band (50 volumes, TR 2 s) would remove all signal.")):
        denoise(img, conf, mask, tr, strategy="acompcor")
    out = denoise(img, conf, mask, tr, strategy="minimal").get_fdata()
    assert out.std() > 0


def test_percent_signal_change_removes_gain_and_baseline(rng):
    import nibabel as nib

    from dpnbids.preproc.denoise import percent_signal_change

    base = rng.uniform(500, 1500, (6, 7, 5)).astype(np.float32)
    fluct = rng.standard_normal((6, 7, 5, 40)).astype(np.float32)
    mask = np.ones((6, 7, 5), np.uint8)
    mask[0] = 0
    base[1, 0, 0] = 1.0  # a dropout voxel inside the mask
    data = base[..., None] * (1 + 0.01 * fluct)
    out1 = percent_signal_change(nib.Nifti1Image(data, np.eye(4)), nib.Nifti1Image(mask, np.eye(4)))
    out2 = percent_signal_change(nib.Nifti1Image(7.5 * data, np.eye(4)),
                                 nib.Nifti1Image(mask, np.eye(4)))
    a, b = np.asarray(out1.dataobj), np.asarray(out2.dataobj)
    np.testing.assert_allclose(a, b, atol=1e-4)                 # scanner gain cancels
    assert np.all(a[0] == 0) and np.all(a[1, 0, 0] == 0)        # outside mask, dropout
    np.testing.assert_allclose(a[2:].mean(axis=-1), 0, atol=1e-3)
    # 1 % fluctuations of unit SD -> SD of ~1 percent whatever the baseline
    np.testing.assert_allclose(a[2:].std(axis=-1), fluct[2:].std(axis=-1), rtol=0.05)
