"""The synthetic BIDS generator: validity, determinism, planted truth, native-space transforms."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage, stats

from conftest import run_validator
from dpnbids.cli.synth import main as synth_main
from dpnbids.exceptions import InputError
from dpnbids.sim.generator import (SPACE, SynthParams, band_limited_coefficients, evaluate_signals,
                               generate_dataset, motion_matrix, slice_timing)

SMALL = dict(n_responders=4, n_nonresponders=4, n_volumes=40, tr=2.6, effect_size=6.0)
NETS = ("default_mode", "sensorimotor", "visual", "fronto_parietal", "cerebellar")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_dataset(root / "planted", SynthParams(seed=3, **SMALL), n_jobs=2)


@pytest.fixture(scope="module")
def null(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return generate_dataset(root / "null", SynthParams(seed=3, null=True, **SMALL), n_jobs=2)


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    params = SynthParams(n_responders=2, n_nonresponders=2, n_volumes=40, space="native",
                         seed=5)
    return generate_dataset(root / "native", params, n_jobs=2)


def _tree_hashes(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _ttest(values, labels):
    return stats.ttest_ind(values[labels == 1], values[labels == 0]).statistic


# ----------------------------------------------------------------------------- BIDS validity
def test_template_mode_passes_bids_validator(planted):
    proc = run_validator(planted.bids_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_native_mode_passes_bids_validator(native):
    proc = run_validator(native.bids_dir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_layout_participants_and_sidecars(planted):
    bids = planted.bids_dir
    assert planted.truth_dir == bids.parent / "planted_truth"
    assert not (bids / "planted_truth").exists()
    parts = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert list(parts.columns) == ["participant_id", "responder", "age", "sex"]
    assert parts["participant_id"].tolist() == [f"sub-{i:02d}" for i in range(1, 9)]
    assert sorted(parts["responder"]) == [0] * 4 + [1] * 4
    meta = json.loads((bids / "participants.json").read_text())
    assert set(meta) == {"participant_id", "responder", "age", "sex"}
    desc = json.loads((bids / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw"

    bold = bids / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz"
    img = nib.load(bold)
    side = json.loads(bold.with_name("sub-01_task-rest_bold.json").read_text())
    assert side["RepetitionTime"] == 2.6 and side["TaskName"] == "rest"
    assert img.shape[3] == 40 and img.header.get_zooms()[3] == pytest.approx(2.6)
    st = np.array(side["SliceTiming"])
    assert len(st) == img.shape[2] and st.min() == 0 and st.max() < 2.6
    assert np.all(np.diff(st) > 0)  # ascending
    assert (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").exists()


def test_fmriprep_derivatives(planted):
    fp = planted.fmriprep_dir
    assert fp == planted.bids_dir / "derivatives" / "fmriprep"
    desc = json.loads((fp / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    func = fp / "sub-02" / "func"
    stem = f"sub-02_task-rest_space-{SPACE}_res-4"
    img = nib.load(func / f"{stem}_desc-preproc_bold.nii.gz")
    mask = nib.load(func / f"{stem}_desc-brain_mask.nii.gz")
    assert img.shape[:3] == mask.shape and img.shape[3] == 40
    assert np.allclose(np.abs(np.diag(img.affine))[:3], 4.0)
    assert json.loads((func / f"{stem}_desc-preproc_bold.json").read_text())[
        "RepetitionTime"] == 2.6
    for name in ("desc-preproc_T1w", "desc-brain_mask"):
        assert (fp / "sub-02" / "anat" / f"sub-02_space-{SPACE}_res-4_{name}.nii.gz").exists()
    conf = pd.read_csv(func / "sub-02_task-rest_desc-confounds_timeseries.tsv", sep="\t",
                       na_values="n/a")
    required = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z",
                "trans_x_derivative1", "rot_z_derivative1", "framewise_displacement",
                "dvars", "std_dvars", "global_signal", "white_matter", "csf"]
    required += [f"a_comp_cor_{i:02d}" for i in range(5)]
    assert set(required) <= set(conf.columns)
    assert len(conf) == 40
    assert conf["framewise_displacement"].isna().tolist() == [True] + [False] * 39
    motion = pd.read_csv(planted.truth_dir / "sub-02" / "sub-02_task-rest_motion.tsv", sep="\t")
    np.testing.assert_allclose(conf[motion.columns].to_numpy(), motion.to_numpy(), atol=1e-5)
    cmeta = json.loads((func / "sub-02_task-rest_desc-confounds_timeseries.json").read_text())
    assert cmeta["a_comp_cor_00"]["Method"] == "aCompCor"


# ----------------------------------------------------------------------------- planted truth
def test_truth_folder(planted):
    truth = planted.truth_dir
    desc = json.loads((truth / "truth.json").read_text())
    assert desc["params"]["effect_size"] == 6.0 and desc["networks"] == list(NETS)
    labels = pd.read_csv(truth / "labels.tsv", sep="\t")
    parts = pd.read_csv(planted.bids_dir / "participants.tsv", sep="\t")
    assert labels["responder"].tolist() == parts["responder"].tolist()
    assert labels["effect_applied"].tolist() == parts["responder"].tolist()
    group = nib.load(truth / "group_maps.nii.gz")
    assert group.shape[3] == len(NETS)
    maps = nib.load(truth / "sub-01" / "sub-01_maps.nii.gz")
    assert maps.shape == group.shape
    np.testing.assert_allclose(maps.affine, group.affine)
    tc = pd.read_csv(truth / "sub-01" / "sub-01_task-rest_timecourses.tsv", sep="\t")
    assert list(tc.columns) == ["onset", *NETS, "physio"]
    np.testing.assert_allclose(tc["onset"], np.arange(40) * 2.6)
    np.testing.assert_allclose(tc[list(NETS)].std(ddof=0), 1.0, rtol=1e-4)
    motion = pd.read_csv(truth / "sub-01" / "sub-01_task-rest_motion.tsv", sep="\t")
    assert np.all(motion.iloc[0] == 0)
    max_trans = np.abs(motion[["trans_x", "trans_y", "trans_z"]].to_numpy()).max()
    assert 0.25 - 1e-9 <= max_trans <= 0.75 + 1e-9  # motion_mm * U(0.5, 1.5)
    np.testing.assert_allclose(
        np.loadtxt(truth / "sub-01" / "sub-01_from-T1w_to-template_affine.txt"), np.eye(4))


def test_effect_rule_exact_in_truth(planted, null):
    lp = pd.read_csv(planted.truth_dir / "labels.tsv", sep="\t")
    ln = pd.read_csv(null.truth_dir / "labels.tsv", sep="\t")
    assert lp["responder"].tolist() == ln["responder"].tolist()
    assert ln["effect_applied"].sum() == 0
    y = lp["responder"].to_numpy()
    for net in NETS:
        diff = lp[f"amplitude_{net}"] - ln[f"amplitude_{net}"]
        expected = 6.0 * 0.2 * y if net in ("default_mode", "sensorimotor") else 0 * y
        np.testing.assert_allclose(diff, expected, atol=1e-12)
    assert _ttest(lp["amplitude_default_mode"].to_numpy(), y) > 4
    assert _ttest(ln["amplitude_default_mode"].to_numpy(), y) < 3


def test_null_images_do_not_depend_on_labels(planted, null):
    """Same seed: non-responders are byte-identical; responders differ only by the effect."""
    labels = pd.read_csv(planted.bids_dir / "participants.tsv", sep="\t")
    for sub, y in zip(labels["participant_id"], labels["responder"]):
        rel = Path(sub) / "func" / f"{sub}_task-rest_bold.nii.gz"
        same = (planted.bids_dir / rel).read_bytes() == (null.bids_dir / rel).read_bytes()
        assert same == (y == 0)


def _image_amplitudes(result, nets=NETS):
    """Per-subject network amplitude from the preproc BOLD by least squares on known truth."""
    truth = result.truth_dir
    group = np.asarray(nib.load(truth / "group_maps.nii.gz").dataobj)
    labels = pd.read_csv(truth / "labels.tsv", sep="\t")
    out = []
    for sub in labels["participant_id"]:
        func = result.fmriprep_dir / sub / "func"
        stem = f"{sub}_task-rest_space-{SPACE}_res-4"
        data = np.asarray(nib.load(func / f"{stem}_desc-preproc_bold.nii.gz").dataobj)
        mask = np.asarray(nib.load(func / f"{stem}_desc-brain_mask.nii.gz").dataobj) > 0
        y = data[mask].T  # (T, V)
        y = y / y.mean(0) - 1.0  # fractional signal change
        tc = pd.read_csv(truth / sub / f"{sub}_task-rest_timecourses.tsv", sep="\t")
        x = np.column_stack([tc[list(nets) + ["physio"]].to_numpy(), np.ones(len(tc))])
        beta = np.linalg.lstsq(x, y, rcond=None)[0][: len(nets)]  # (N, V)
        g = group[mask].T  # (N, V)
        amp = (beta * g).sum(1) / (g * g).sum(1) / 0.02  # signal_percent = 2
        out.append(amp)
    return np.array(out), labels


def test_effect_measurable_from_images(planted, null):
    est, labels = _image_amplitudes(planted)
    true = labels[[f"amplitude_{n}" for n in NETS]].to_numpy()
    assert np.corrcoef(est.ravel(), true.ravel())[0, 1] > 0.9
    y = labels["responder"].to_numpy()
    t_planted = [_ttest(est[:, i], y) for i in range(2)]  # default_mode, sensorimotor
    assert min(t_planted) > 4
    est_null, _ = _image_amplitudes(null)
    t_null = [_ttest(est_null[:, i], y) for i in range(2)]
    assert max(abs(t) for t in t_null) < 3
    assert max(abs(t) for t in t_null) < min(t_planted) / 2


# ----------------------------------------------------------------------------- determinism
def test_deterministic_for_a_seed(tmp_path):
    small = dict(n_responders=1, n_nonresponders=1, n_volumes=40)
    a = generate_dataset(tmp_path / "a", SynthParams(seed=11, **small))
    b = generate_dataset(tmp_path / "b", SynthParams(seed=11, **small), n_jobs=2)
    c = generate_dataset(tmp_path / "c", SynthParams(seed=12, **small))
    ha, hb, hc = (_tree_hashes(r.bids_dir) for r in (a, b, c))
    assert ha == hb
    assert _tree_hashes(a.truth_dir) == _tree_hashes(b.truth_dir)
    assert ha.keys() == hc.keys()
    bold = "sub-01/func/sub-01_task-rest_bold.nii.gz"
    assert ha[bold] != hc[bold]


# ----------------------------------------------------------------------------- native space
def test_native_transforms_map_back_to_template(native):
    from dpnbids.templates import load_template

    tpl = load_template(SPACE, 2.0, "T1w")
    tmask = np.asarray(load_template(SPACE, 2.0, "mask").dataobj) > 0
    tdata = np.asarray(tpl.dataobj, dtype=float)
    codes, obliques = set(), []
    for i in range(1, 5):
        sub = f"sub-{i:02d}"
        t1 = nib.load(native.bids_dir / sub / "anat" / f"{sub}_T1w.nii.gz")
        a = np.loadtxt(native.truth_dir / sub / f"{sub}_from-T1w_to-template_affine.txt")
        assert not np.allclose(a, np.eye(4), atol=1e-3)
        codes.add(nib.aff2axcodes(t1.affine))
        lin = t1.affine[:3, :3] / np.sqrt((t1.affine[:3, :3] ** 2).sum(0))
        obliques.append(np.abs(np.abs(lin).max(0) - 1).max() > 1e-3)
        # template voxel -> T1w voxel through the truth transform
        v2v = np.linalg.inv(t1.affine) @ np.linalg.inv(a) @ tpl.affine
        back = ndimage.affine_transform(np.asarray(t1.dataobj, dtype=float), v2v[:3, :3],
                                        offset=v2v[:3, 3], output_shape=tpl.shape, order=1)
        r = np.corrcoef(back[tmask], tdata[tmask])[0, 1]
        assert r > 0.9, (sub, r)
        # and the identity would not do (the transform matters)
        naive = np.linalg.inv(t1.affine) @ tpl.affine
        wrong = ndimage.affine_transform(np.asarray(t1.dataobj, dtype=float), naive[:3, :3],
                                         offset=naive[:3, 3], output_shape=tpl.shape, order=1)
        assert np.corrcoef(wrong[tmask], tdata[tmask])[0, 1] < r - 0.05

        # BOLD: mean image through B then A lands on the template's T2*-like baseline
        bold = nib.load(native.bids_dir / sub / "func" / f"{sub}_task-rest_bold.nii.gz")
        assert not np.allclose(bold.affine, t1.affine)
        b = np.loadtxt(native.truth_dir / sub / f"{sub}_task-rest_from-bold_to-T1w_affine.txt")
        mean = np.asarray(bold.dataobj, dtype=float).mean(-1)
        gm = np.asarray(load_template(SPACE, 2.0, "GM").dataobj, dtype=float)
        wm = np.asarray(load_template(SPACE, 2.0, "WM").dataobj, dtype=float)
        csf = np.asarray(load_template(SPACE, 2.0, "CSF").dataobj, dtype=float)
        expected = (0.8 * gm + 0.6 * wm + csf)[tmask]
        rs = {}
        for name, m in (("truth", a @ b), ("identity", np.eye(4))):
            v2v = np.linalg.inv(bold.affine) @ np.linalg.inv(m) @ tpl.affine
            back = ndimage.affine_transform(mean, v2v[:3, :3], offset=v2v[:3, 3],
                                            output_shape=tpl.shape, order=1)
            rs[name] = np.corrcoef(back[tmask], expected)[0, 1]
        # two 4 mm interpolations blur the 2 mm tissue contrast, hence the modest bound
        assert rs["truth"] > 0.45 and rs["truth"] > rs["identity"] + 0.3, (sub, rs)
    assert codes != {("R", "A", "S")} and len(codes) > 1
    assert any(obliques) and not all(obliques)
    assert native.fmriprep_dir is None


# ----------------------------------------------------------------------------- pure pieces
def test_band_limited_signals(rng):
    freqs, coefs = band_limited_coefficients(rng, 3, 260.0, correlation=0.2)
    assert freqs.min() >= 0.01 and freqs.max() <= 0.1
    t = np.arange(0, 260.0, 0.5)
    x = evaluate_signals(freqs, coefs, t)
    assert x.shape == (3, len(t))
    spec = np.abs(np.fft.rfft(x, axis=1)) ** 2
    f = np.fft.rfftfreq(len(t), 0.5)
    outside = (f < 0.009) | (f > 0.101)
    assert spec[:, outside].sum() < 1e-8 * spec.sum()
    # continuous: evaluating at shifted times is a smooth shift, not a resample
    x2 = evaluate_signals(freqs, coefs, t + 0.5)
    np.testing.assert_allclose(x2[:, :-1], x[:, 1:], atol=1e-9)


def test_slice_timing_orders():
    np.testing.assert_allclose(slice_timing(4, 2.0, "ascending"), [0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(slice_timing(4, 2.0, "descending"), [1.5, 1.0, 0.5, 0])
    np.testing.assert_allclose(slice_timing(5, 2.5, "interleaved"), [0, 1.5, 0.5, 2.0, 1.0])
    with pytest.raises(InputError, match="slice_order"):
        slice_timing(4, 2.0, "random")


def test_motion_matrix_convention():
    c = np.array([1.0, 2.0, 3.0])
    m = motion_matrix([1.0, -2.0, 0.5, 0.0, 0.0, np.pi / 2], c)
    # the centre only translates; a point 1 mm right of it rotates (about z) to 1 mm anterior
    np.testing.assert_allclose(m @ np.r_[c, 1], np.r_[c + [1.0, -2.0, 0.5], 1], atol=1e-12)
    np.testing.assert_allclose(m @ np.r_[c + [1, 0, 0], 1], np.r_[c + [1.0, -1.0, 0.5], 1],
                               atol=1e-12)


# ----------------------------------------------------------------------------- errors and CLI
def test_refuses_non_empty_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        generate_dataset(out, SynthParams(n_responders=1, n_nonresponders=1, n_volumes=40))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "out_truth").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_volumes=10), "n_volumes"),
    (dict(space="mni"), "space"),
    (dict(effect_networks=("visual2",)), "effect_networks"),
    (dict(n_responders=0), "responder"),
    (dict(template_resolution=0.5), "template_resolution"),
])
def test_bad_params(kwargs, match):
    with pytest.raises(InputError, match=match):
        SynthParams(**kwargs).validate()


def test_cli_errors_and_version(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        synth_main(["--version"])
    assert exc.value.code == 0
    assert "dpnbids-synth" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        synth_main([str(tmp_path / "x"), "--space", "mni"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert synth_main([str(tmp_path / "x"), "--networks", "limbic"]) == 2
    err = capsys.readouterr().err
    assert "Unknown network(s) ['limbic']" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "f").write_text("")
    assert synth_main([str(tmp_path / "y"), "--n-responders", "1", "--n-nonresponders",
                       "1"]) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_writes_dataset(tmp_path, capsys):
    rc = synth_main([str(tmp_path / "ds"), "--n-responders", "1", "--n-nonresponders", "1",
                     "--n-volumes", "40", "--null", "--seed", "4", "--space", "template"])
    assert rc == 0
    assert "BIDS dataset" in capsys.readouterr().out
    desc = json.loads((tmp_path / "ds_truth" / "truth.json").read_text())
    assert desc["params"]["null"] is True and desc["params"]["seed"] == 4
    assert (tmp_path / "ds" / "derivatives" / "fmriprep" / "sub-02").is_dir()


def test_sessions_runs_and_slice_timing(tmp_path):
    """Noise- and motion-free: raw slice 0 equals the slice-time-corrected derivative,
    later slices are sampled later (SliceTiming), and ses/run entities validate."""
    params = SynthParams(n_responders=1, n_nonresponders=1, n_volumes=40, noise_level=0.0,
                         motion_mm=0.0, n_sessions=2, n_runs=2, seed=2,
                         slice_order="interleaved")
    res = generate_dataset(tmp_path / "sr", params)
    proc = run_validator(res.bids_dir)
    assert proc.returncode == 0, proc.stdout[-3000:]
    ent = "sub-01_ses-02_task-rest_run-2"
    raw = np.asarray(nib.load(res.bids_dir / "sub-01" / "ses-02" / "func"
                              / f"{ent}_bold.nii.gz").dataobj, dtype=float)
    der = np.asarray(nib.load(res.fmriprep_dir / "sub-01" / "ses-02" / "func"
                              / f"{ent}_space-{SPACE}_res-4_desc-preproc_bold.nii.gz").dataobj)
    assert (res.bids_dir / "sub-01" / "ses-01" / "anat" / "sub-01_ses-01_T1w.nii.gz").exists()
    assert (res.truth_dir / "sub-01" / f"{ent}_timecourses.tsv").exists()
    brain = der.std(-1) > 0
    err = np.abs(raw - der).mean(-1)
    offsets = np.array(json.loads((res.bids_dir / "sub-01" / "ses-02" / "func"
                                   / f"{ent}_bold.json").read_text())["SliceTiming"])
    ks = [k for k in range(brain.shape[2]) if brain[..., k].sum() > 50]
    slice_err = np.array([err[..., k][brain[..., k]].mean() for k in ks])
    # interleaved: the mismatch follows the acquisition offsets written in SliceTiming,
    # not the slice position
    assert stats.spearmanr(slice_err, offsets[ks]).statistic > 0.9
    assert stats.spearmanr(slice_err, ks).statistic < 0.5
    assert slice_err[np.argmin(offsets[ks])] < 0.2 * slice_err.max()
    # a different session/run has different time courses
    t11 = pd.read_csv(res.truth_dir / "sub-01" / "sub-01_ses-01_task-rest_run-1_timecourses.tsv",
                      sep="\t")
    t22 = pd.read_csv(res.truth_dir / "sub-01" / f"{ent}_timecourses.tsv", sep="\t")
    assert not np.allclose(t11["default_mode"], t22["default_mode"])
