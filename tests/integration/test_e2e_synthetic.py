"""End to end through the CLI on the synthetic generator's data.

One small template-space cohort (fMRIPrep-style derivatives) is generated
once per module; participant then group levels run through the installed ``dpnbids`` CLI.
Assertions: outputs pass bids-validator-deno, a planted effect is found
(ASC AUC >= 0.85), the final model scores new patients, and a mismatched model is refused.
Same seed -> identical predictions is checked where it is strongest, not here: a resumed group
run against a clean one (tests/acceptance/test_e2e_reproducibility.py) and SLURM against
MultiProc (tests/acceptance/test_e2e_slurm.py). The null cohort (default flags,
110-volume runs) is in tests/acceptance/test_e2e_clinical_length.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


from conftest import run_cli as main

pytestmark = [pytest.mark.slow]

#: Small but honest: 4 mm grid, the default (estimated) number of components; CV/epochs
#: trimmed for CI time.
FAST = ["--output-resolution", "4",
        "--skip-bids-validation", "--nprocs", "2", "--omp-nthreads", "1"]
#: CI trains for at most 25 epochs (the CNN's own defaults otherwise: Adam epsilon 1e-3,
#: early stopping on the inner-validation loss).
CV_FAST = ["--folds", "4", "--epochs", "25", "--patience", "6", "--min-epochs", "10",
           "--n-bootstrap", "200", "--input-sets", "ASC", "SSC"]


def _synth(root: Path, *, null: bool, n_per_class=(16, 16), seed=1, n_volumes=80,
           effect_size=3.0):
    """A template-space cohort. The planted effect is large (Cohen's d = 3 on the amplitude
    of two networks) because CI trains the CNN for at most 25 epochs on 24 subjects."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    params = SynthParams(n_responders=n_per_class[0], n_nonresponders=n_per_class[1],
                         seed=seed, null=null, space="template", n_volumes=n_volumes,
                         template_resolution=4.0, effect_size=effect_size)
    return generate_dataset(root, params)


def _participant(synth, out: Path, work: Path, *extra):
    code = main([str(synth.bids_dir), str(out), "participant", *FAST, "--fmriprep-dir",
                 str(synth.fmriprep_dir), "-w", str(work), *extra])
    assert code == 0


def _group(synth, out: Path, work: Path, *extra):
    return main([str(synth.bids_dir), str(out), "group", *FAST, *CV_FAST, "--fmriprep-dir",
                 str(synth.fmriprep_dir), "-w", str(work), *extra])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    synth = _synth(root / "bids", null=False)
    out = root / "out"
    _participant(synth, out, root / "work")
    # the paper's leaky SSC beside ours; the ICA order stays estimated (--paper-faithful
    # alone would fix the paper's 30, more than these 80-volume runs can hold)
    assert _group(synth, out, root / "work", "--paper-faithful", "--n-components",
                  "auto") == 0
    return synth, out, root


def _auc(out: Path, input_set: str, model: str = "cnn") -> float:
    from sklearn.metrics import roc_auc_score

    pred = pd.read_csv(out / "group" / "predictions.tsv", sep="\t")
    sel = pred[(pred["input_set"] == input_set) & (pred["model"] == model)]
    assert len(sel) > 0, f"no predictions for {input_set}/{model}"
    return roc_auc_score(sel["true_label"], sel["probability"])


def test_participant_outputs_validate(planted):
    from conftest import run_validator

    _, out, _ = planted
    proc = run_validator(out)
    assert proc.returncode == 0, proc.stdout[-4000:]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert list((out / "logs").glob("config-participant-*.toml"))
    assert list((out / "logs").glob("config-group-*.toml"))
    assert list((out / "logs").glob("pip-freeze-*.txt"))
    assert (out / "sub-01.html").exists() and (out / "group.html").exists()


def _fold_mean_auc(out: Path, input_set: str, model: str = "cnn") -> float:
    from sklearn.metrics import roc_auc_score

    pred = pd.read_csv(out / "group" / "predictions.tsv", sep="\t")
    sel = pred[(pred["input_set"] == input_set) & (pred["model"] == model)]
    return float(np.mean([roc_auc_score(f["true_label"], f["probability"])
                          for _, f in sel.groupby(["repeat", "fold"])]))


def test_planted_effect_recovered(planted):
    """ASC AUC >= 0.85 as the mean over outer folds (how nested CV is summarised, and the
    table's ``auc_fold_mean_sd`` row); the AUC of the pooled predictions is lower because
    each fold's network is calibrated differently, so it gets a looser floor."""
    _, out, _ = planted
    fold_mean, pooled = _fold_mean_auc(out, "ASC"), _auc(out, "ASC")
    print(f"planted ASC AUC: fold mean {fold_mean:.3f}, pooled {pooled:.3f}")
    assert fold_mean >= 0.85
    assert pooled >= 0.7
    table = pd.read_csv(out / "group" / "table2.tsv", sep="\t", index_col=0)
    assert {"ASC", "SSC"} <= set(table.columns)
    assert any("leaky" in c.lower() for c in table.columns)
    manifests = list((out / "group" / "cv").glob("manifest_*.json"))
    assert len(manifests) >= 8
    for path in manifests:
        m = json.loads(path.read_text())
        test = set(m["test_ids"])
        assert not test & set(m["train_ids"]) and not test & set(m["val_ids"])


def test_group_ica_labels_planted_networks(planted):
    synth, out, _ = planted
    comps = pd.read_csv(next((out / "group").glob("*_desc-ica_components.tsv")), sep="\t")
    truth = json.loads((Path(synth.truth_dir) / "truth.json").read_text())
    planted_networks = set(truth["params"]["networks"])
    found = set(comps.loc[comps["matched"].astype(bool), "network"])
    assert planted_networks <= found, (planted_networks, found)
    # the planted effect (d = 3 on these networks) shows up in the component statistics,
    # and the networks without an effect do not
    effect = set(truth["params"]["effect_networks"])
    matched = comps[comps["matched"].astype(bool)]
    for network, rows in matched.groupby("network"):
        best_p = rows["p"].min()
        if network in effect:
            assert best_p < 0.01, (network, best_p)
        else:
            assert best_p > 0.01, (network, best_p)


def test_model_predicts_new_patients_and_rejects_mismatch(planted, tmp_path):
    synth, out, root = planted
    model = out / "group" / "model"
    assert (model / "model.keras").exists() and (model / "bundle.json").exists()
    new_out = tmp_path / "new"
    code = main([str(synth.bids_dir), str(new_out), "participant", *FAST, "--fmriprep-dir",
                 str(synth.fmriprep_dir), "-w", str(tmp_path / "w"), "--participant-label",
                 "01", "--model", str(model)])
    assert code == 0
    pred = list((new_out / "sub-01").glob("**/*_prediction.tsv"))
    assert len(pred) == 1
    row = pd.read_csv(pred[0], sep="\t").iloc[0]
    assert 0.0 <= row["probability_response"] <= 1.0
    # the prediction's saliency map (default --saliency), on the stage-2 maps' grid
    assert len(list(pred[0].parent.glob("*_space-*_res-*_desc-saliency_map.nii.gz"))) == 1
    from conftest import run_validator

    proc = run_validator(new_out)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "probability" in (new_out / "sub-01.html").read_text().lower()
    # a model trained on another grid is refused before anything is written
    other = tmp_path / "model_2mm"
    shutil.copytree(model, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["resolution"] = 2.0
    (other / "bundle.json").write_text(json.dumps(meta))
    bad_out = tmp_path / "bad"
    code = main([str(synth.bids_dir), str(bad_out), "participant", *FAST, "--fmriprep-dir",
                 str(synth.fmriprep_dir), "--participant-label", "01", "--model", str(other)])
    assert code == 2 and not bad_out.exists()
    assert "does not match" in main.last_stderr


def test_killed_group_rerun_leaves_previous_results_intact(planted, tmp_path):
    """A group rerun killed mid-way (SIGKILL) changes nothing in group/ or group.html; the
    next run removes its staging folder."""
    import hashlib
    import os
    import signal
    import subprocess
    import sys
    import time

    from dpnbids.learn.bundle import load_bundle
    from dpnbids.group.level import STAGING_PREFIX, open_group_staging

    synth, out, root = planted
    dest = tmp_path / "out"
    shutil.copytree(out, dest)

    def digest():
        files = sorted(p for p in (dest / "group").rglob("*") if p.is_file())
        files.append(dest / "group.html")
        return {str(p.relative_to(dest)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in files}

    before = digest()
    exe = str(Path(sys.executable).with_name("dpnbids"))
    proc = subprocess.Popen([exe, str(synth.bids_dir), str(dest), "group", *FAST, *CV_FAST,
                             "--fmriprep-dir", str(synth.fmriprep_dir), "-w",
                             str(tmp_path / "w"), "--random-seed", "3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((dest / "group").glob("../" + STAGING_PREFIX
                                                                     + "*/group/*ica_comp*")):
        time.sleep(0.5)
    assert proc.poll() is None, "the group run ended before it could be killed"
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert digest() == before
    assert load_bundle(dest / "group" / "model").n_components > 0
    stale = list(dest.glob(STAGING_PREFIX + "*"))
    assert stale  # left by the killed process ...
    fresh = open_group_staging(dest)  # ... and removed by the next run
    assert not [p for p in stale if p.exists()] and fresh.exists()


def test_saliency_maps_on_the_group_grid_rank_the_planted_networks(planted):
    """--saliency (default: integrated gradients): per input set, 4D and summed maps on the
    group components' grid and affine, and the planted networks in the top third of
    saliency_networks.tsv (CNN and the SVM's Haufe pattern): all of them. BIDS validity of the whole
    output: test_participant_outputs_validate."""
    import nibabel as nib

    synth, out, _ = planted
    group = out / "group"
    comps = nib.load(str(next(group.glob("*_desc-ica_components.nii.gz"))))
    for name in ("ASC", "SSC", "SSCleaky"):
        maps = nib.load(str(next(group.glob(f"*_desc-saliency{name}_components.nii.gz"))))
        summed = nib.load(str(next(group.glob(f"*_desc-saliency{name}_map.nii.gz"))))
        np.testing.assert_array_equal(maps.affine, comps.affine)
        np.testing.assert_array_equal(summed.affine, comps.affine)
        assert maps.shape == comps.shape and summed.shape == comps.shape[:3]
        meta = json.loads(next(group.glob(f"*_desc-saliency{name}_components.json"))
                          .read_text())
        assert meta["Method"] == "integrated-gradients" and len(meta["Folds"]) == 4
    truth = json.loads((Path(synth.truth_dir) / "truth.json").read_text())
    effect = set(truth["params"]["effect_networks"])
    table = pd.read_csv(group / "saliency_networks.tsv", sep="\t")
    for model, rows in table[table["input_set"] == "ASC"].groupby("model"):
        # the CNN: every planted network in the top third. The linear SVM's Haufe shares are
        # flatter (0.14-0.20 over 6 components here, against the CNN's 0.07-0.35): with the
        # pooled model order's extra, unmatched component it is held to the top half.
        part = 3 if model == "cnn" else 2
        top = rows[rows["rank"] <= np.ceil(len(rows) / part)]
        print(model, rows[["component", "network", "share_mean", "rank"]].to_string())
        assert effect <= set(top["network"]), (model, effect)  # every planted network
    # concentration at the planted regions (within 8 mm of the effect networks' MNI
    # coordinates) over the rest of the group mask. Issue #15's target (2x) is measured
    # with default flags by benchmarks/bench_default_classifier.py (README "Saliency");
    # this small 4-fold, 25-epoch cohort asserts that the planted components concentrate
    # more than every other component, and that the sum is concentrated at all.
    from dpnbids.analysis.networks import load_network_coordinates

    coords = load_network_coordinates()
    pts = coords.loc[coords["network"].isin(effect), ["x", "y", "z"]].to_numpy()
    mask = np.asarray(nib.load(str(next(group.glob("*_desc-ica_mask.nii.gz")))).dataobj) > 0
    maps = nib.load(str(next(group.glob("*_desc-saliencyASC_components.nii.gz"))))
    data = np.asarray(maps.dataobj)
    ijk = np.indices(data.shape[:3]).reshape(3, -1)
    world = (maps.affine[:3, :3] @ ijk + maps.affine[:3, 3:4]).T
    dist = np.min(np.linalg.norm(world[:, None] - pts[None], axis=-1), axis=1)
    near = (dist.reshape(data.shape[:3]) <= 8.0) & mask
    rest = ~near & mask
    ratio = [float(data[..., k][near].mean() / data[..., k][rest].mean())
             for k in range(data.shape[-1])]
    summed = float(data.sum(-1)[near].mean() / data.sum(-1)[rest].mean())
    comps_table = pd.read_csv(next(group.glob("*_desc-ica_components.tsv")), sep="\t")
    planted = comps_table["network"].isin(effect).to_numpy()
    print(f"ASC attribution near the planted regions / rest: sum {summed:.2f}, per "
          f"component {dict(zip(comps_table['network'], np.round(ratio, 2)))}")
    assert summed > 1.2
    assert min(np.array(ratio)[planted]) > max(np.array(ratio)[~planted])
    timings = json.loads((group / "timings.json").read_text())
    assert timings["ASC"]["saliency_s"] <= 0.25 * (timings["ASC"]["total_s"]
                                                   - timings["ASC"]["saliency_s"])
    assert "Saliency" in (out / "group.html").read_text()
