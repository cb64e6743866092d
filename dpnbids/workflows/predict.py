"""Applying a trained model bundle to a new patient's stage-2 maps (``participant --model``)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from dpnbids.derivatives import DerivativesWriter


def predict_subject(model_dir, maps_pe, maps_z, output_dir, source,
                    saliency="integrated-gradients") -> str:
    """Probability of response of one run from its stage-2 maps with a saved bundle, and
    (unless ``saliency`` is 'none') its saliency map beside the prediction."""
    from dpnbids.learn.bundle import load_bundle, predict

    bundle = load_bundle(model_dir)
    maps_file = maps_pe if bundle.feature == "pe" else maps_z
    img = nib.load(str(maps_file))
    prob = float(np.asarray(predict(bundle, img)).ravel()[0])
    writer = DerivativesWriter(output_dir)
    target = writer.path(source=source, suffix="prediction", extension=".tsv",
                         datatype="func", desc="dpnbids")
    frame = pd.DataFrame([{"participant_id": f"sub-{target.name.split('_')[0][4:]}",
                           "probability_response": prob,
                           "predicted_label": "responder" if prob >= 0.5 else "non-responder",
                           "model_input_set": bundle.input_set,
                           "model_version": bundle.versions.get("dpnbids", "?"),
                           "cv_auc": bundle.cv_metrics.get("auc", float("nan"))}])
    writer.write_tsv(frame, target)
    from dpnbids.workflows.saliency import write_subject_saliency

    write_subject_saliency(bundle, writer, source, maps_file, saliency)
    writer.write_json({"ModelDirectory": str(model_dir), "Versions": bundle.versions,
                       "CrossValidatedPerformance": bundle.cv_metrics,
                       "Threshold": 0.5}, Path(str(target)[:-4] + ".json"))
    return str(target)
