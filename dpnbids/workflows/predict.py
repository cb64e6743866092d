"""Applying a trained model bundle to a new patient's stage-2 maps (``participant --model``)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import pandas as pd

from dpnbids.derivatives import DerivativesWriter


def predict_subject(model_dir, maps_pe, maps_z, output_dir, source,
                    saliency="integrated-gradients", bids_dir=None) -> str:
    """Calibrated probability of response of one run, and the decision at the model's
    in-fold threshold, with the cross-validated sensitivity and specificity behind it; and
    (unless ``saliency`` is 'none') its saliency map beside the prediction. A model trained
    with --covariates / --harmonize reads the patient's values from ``bids_dir``'s
    participants.tsv and the run's confounds table."""
    from dpnbids.learn.bundle import decide, load_bundle, predict

    bundle = load_bundle(model_dir)
    maps_file = maps_pe if bundle.feature == "pe" else maps_z
    img = nib.load(str(maps_file))
    writer = DerivativesWriter(output_dir)
    target = writer.path(source=source, suffix="prediction", extension=".tsv",
                         datatype="func", desc="dpnbids")
    confounds, report = None, {}
    if bundle.deconfounding is not None and bids_dir is not None:
        from dpnbids.workflows.confounds import patient_confounds

        fit = bundle.deconfounding
        confounds = patient_confounds(bids_dir, output_dir, source,
                                      target.name.split("_")[0][4:],
                                      list(fit.covariates) + [c for c in [fit.harmonize] if c])
    decision = decide(bundle, predict(bundle, img, confounds=confounds, report=report))
    cv = bundle.cv_metrics
    frame = pd.DataFrame([{"participant_id": f"sub-{target.name.split('_')[0][4:]}",
                           "probability_response": decision["probability"],
                           "raw_score": decision["raw_score"],
                           "threshold": decision["threshold"],
                           "predicted_label": "responder" if decision["responder"]
                           else "non-responder",
                           "cv_sensitivity": cv.get("sensitivity", float("nan")),
                           "cv_specificity": cv.get("specificity", float("nan")),
                           "cv_auc": cv.get("auc", float("nan")),
                           "model_input_set": bundle.input_set,
                           "model_version": bundle.versions.get("dpnbids", "?")}])
    writer.write_tsv(frame, target)
    from dpnbids.workflows.saliency import write_subject_saliency

    write_subject_saliency(bundle, writer, source, maps_file, saliency, confounds)
    writer.write_json({"ModelDirectory": str(model_dir), "Versions": bundle.versions,
                       "CrossValidatedPerformance": cv,
                       "Calibration": bundle.calibration or "none (model saved before "
                                                            "calibration; raw output)",
                       "Threshold": decision["threshold"],
                       "ThresholdRule": decision["threshold_rule"],
                       **({"Deconfounding": {
                           "Method": bundle.deconfounding.method(),
                           "SitesUnseenInTraining": report.get("sites_unseen_in_training", []),
                           "UnseenSiteHandling": "no site correction: standardised with the "
                                                 "pooled training estimates"}}
                          if bundle.deconfounding is not None else {}),
                       "Decision": "responder if probability_response >= Threshold; "
                                   "cv_sensitivity and cv_specificity are the model's "
                                   "cross-validated rates at its in-fold thresholds"},
                      Path(str(target)[:-4] + ".json"))
    return str(target)
