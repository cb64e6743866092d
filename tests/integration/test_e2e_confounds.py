"""End to end through the CLI: the confound-only baselines, their warning, and
--covariates mean_fd --harmonize site inside the folds (a small null cohort of the
synthetic generator, with a participants.tsv ``site`` column that follows the label)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli as main

pytestmark = [pytest.mark.slow]

FAST = ["--output-resolution", "4", "--skip-bids-validation", "--nprocs", "2",
        "--omp-nthreads", "1"]
GROUP = ["--folds", "3", "--epochs", "2", "--min-epochs", "0", "--patience", "1",
         "--n-bootstrap", "50", "--n-permutations-baselines", "50", "--input-sets", "ASC",
         "--saliency", "none", "--n-components", "4", "--pca-dim", "8"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Participant-level outputs of a 12-subject null cohort; site A holds 5 responders
    and 1 non-responder, site B the reverse; two centres hold 3 of each class."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    tmp = tmp_path_factory.mktemp("confounds")
    synth = generate_dataset(tmp / "bids", SynthParams(
        n_responders=6, n_nonresponders=6, seed=5, null=True, space="template",
        n_volumes=60, template_resolution=4.0))
    participants = pd.read_csv(synth.bids_dir / "participants.tsv", sep="\t")
    # every responder at site A, every non-responder at site B but one of each swapped
    site = participants["responder"].map({1: "A", 0: "B"}).to_numpy()
    site[0], site[-1] = site[-1], site[0]
    participants["site"] = site
    rank = participants.groupby("responder").cumcount()
    participants["centre"] = np.where(rank % 2 == 0, "north", "south")
    participants.to_csv(synth.bids_dir / "participants.tsv", sep="\t", index=False)
    out, work = tmp / "out", tmp / "work"
    common = [*FAST, "--fmriprep-dir", str(synth.fmriprep_dir), "-w", str(work)]
    assert main([synth.bids_dir, out, "participant", *common]) == 0
    return synth, out, common


def test_confound_baselines_warn_and_the_flags_run_inside_the_folds(cohort):
    synth, out, common = cohort
    assert main([synth.bids_dir, out, "group", *common, *GROUP, "--covariates", "mean_fd",
                 "--harmonize", "site"]) == 0

    metrics = pd.read_csv(out / "group" / "metrics.tsv", sep="\t")
    confounds = metrics[metrics["input_set"] == "confounds"].set_index("model")
    assert {"site", "mean_fd", "age", "sex"} <= set(confounds.index)
    assert confounds.loc["site", "auc"] >= 0.7
    table2 = pd.read_csv(out / "group" / "table2.tsv", sep="\t", index_col=0)
    assert "confounds site" in table2.columns
    html = (out / "group.html").read_text()
    assert "site alone predicts the label" in html and "--harmonize site" in html
    assert "Head motion and other confounds per class" in html
    for manifest in (out / "group" / "cv").glob("manifest_set-ASC_*.json"):
        record = json.loads(manifest.read_text())
        fit = record["deconfounding"]
        assert fit["harmonize"] == "site" and fit["covariates"] == ["mean_fd"]
        assert not set(fit["fitted_on"]) & set(record["test_ids"])


def test_leave_centre_out(cohort, tmp_path):
    import shutil

    synth, out, common = cohort
    dest = tmp_path / "out"
    shutil.copytree(out, dest, ignore=shutil.ignore_patterns("group", "group.html"))
    assert main([synth.bids_dir, dest, "group", *common, *GROUP, "--cv-scheme",
                 "leave-group-out", "--cv-group", "centre"]) == 0
    assert json.loads((dest / "group" / "cv" / "splits.json").read_text())["scheme"] == \
        "leave-group-out"
    splits = pd.read_csv(dest / "group" / "cv" / "splits.tsv", sep="\t")
    participants = pd.read_csv(synth.bids_dir / "participants.tsv", sep="\t")
    centre = dict(zip(participants["participant_id"], participants["centre"]))
    tests = splits[splits["role"] == "test"]
    assert sorted(tests["fold"].unique()) == [0, 1]
    for _, fold in tests.groupby("fold"):
        assert len({centre[p] for p in fold["participant_id"]}) == 1
    assert sorted(tests["participant_id"]) == sorted(participants["participant_id"])
