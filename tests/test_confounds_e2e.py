"""End to end through the CLI: the confound-only baselines, their warning, and
--covariates mean_fd --harmonize site inside the folds (a small null cohort of the
synthetic generator, with a participants.tsv ``site`` column that follows the label)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import run_cli as main

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAST = ["--output-resolution", "4", "--skip-bids-validation", "--nprocs", "2",
        "--omp-nthreads", "1"]
GROUP = ["--folds", "3", "--epochs", "2", "--min-epochs", "0", "--patience", "1",
         "--n-bootstrap", "50", "--n-permutations-baselines", "50", "--input-sets", "ASC",
         "--saliency", "none", "--n-components", "4", "--pca-dim", "8"]


def test_confound_baselines_warn_and_the_flags_run_inside_the_folds(tmp_path):
    from dpnbids.sim.generator import SynthParams, generate_dataset

    synth = generate_dataset(tmp_path / "bids", SynthParams(
        n_responders=6, n_nonresponders=6, seed=5, null=True, space="template",
        n_volumes=60, template_resolution=4.0))
    participants = pd.read_csv(synth.bids_dir / "participants.tsv", sep="\t")
    # every responder at site A, every non-responder at site B but one of each swapped
    site = participants["responder"].map({1: "A", 0: "B"}).to_numpy()
    site[0], site[-1] = site[-1], site[0]
    participants["site"] = site
    participants.to_csv(synth.bids_dir / "participants.tsv", sep="\t", index=False)
    out, work = tmp_path / "out", tmp_path / "work"
    common = [*FAST, "--fmriprep-dir", str(synth.fmriprep_dir), "-w", str(work)]
    assert main([synth.bids_dir, out, "participant", *common]) == 0
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
