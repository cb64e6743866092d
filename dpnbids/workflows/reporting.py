"""Glue between workflow results and :mod:`dpnbids.reports` (HTML at OUTPUT_DIR top)."""
from __future__ import annotations

import logging
from pathlib import Path

LOGGER = logging.getLogger(__name__)


def write_subject_report(subject, output_dir, runs, anat, space, resolution) -> str:
    """Render ``OUTPUT_DIR/sub-<subject>.html`` from the run summaries."""
    from dpnbids.reports.subject import render_subject_report
    from dpnbids.templates import get_template
    from dpnbids.derivatives import sibling, split_bids_name

    from dpnbids.derivatives import DerivativesWriter

    output_dir = Path(output_dir)
    # the template is only the background of the built-in normalisation figure; fMRIPrep
    # input (no anat summary) needs none, so no template has to be available offline
    template = str(get_template(space, resolution, "T1w")) if anat else None
    writer = DerivativesWriter(output_dir)
    run_dicts = []
    for summary in runs:
        ents, _, _ = split_bids_name(summary["bold_file"])
        geometry = summary.get("geometry") or {}
        prep = summary.get("prep") or {}
        confounds = str(writer.path(source=summary["denoised"], suffix="timeseries",
                                    extension=".tsv", drop=("space", "cohort", "res"),
                                    desc="confounds"))
        preproc = sibling(summary["denoised"], desc="preproc")
        warnings = list(geometry.get("warnings", [])) + list((anat or {}).get("warnings", []))
        run_dicts.append({
            "entities": ents,
            "t1w_std": (anat or {}).get("t1w_std"),
            "template": template,
            "bold_ref": geometry.get("boldref"),
            "t1w": geometry.get("t1w_brain"),
            # the work directory's uncompressed series when there is one (memory-mapped,
            # no decompression); otherwise the derivative
            "bold_std": _first_existing(geometry.get("bold_std"), preproc,
                                        summary["denoised"]),
            "mask_std": summary.get("mask"),
            "confounds_tsv": confounds if Path(confounds).exists() else None,
            "tr": prep.get("tr"),
            "motion_summary": summary.get("motion") or {},
            "skipped_steps": list(prep.get("skipped", [])),
            "warnings": warnings,
            "coreg_costs": geometry.get("coreg_costs"),
            "prediction": _read_prediction(summary.get("prediction")),
            "dice_std_mask": (anat or {}).get("dice_std_mask"),
            "n_dummy": prep.get("n_dummy"),
            "fd_threshold": _fd_threshold(summary["denoised"]),
        })
    from dpnbids.derivatives import atomic_write_text

    out_file = output_dir / f"sub-{subject}.html"
    atomic_write_text(out_file, render_subject_report(subject=subject, sessions_runs=run_dicts))
    return str(out_file)


def _fd_threshold(denoised):
    """The --fd-thresh the run was censored with (its JSON sidecar), None when off."""
    import json

    from dpnbids.derivatives import sibling

    sidecar = sibling(denoised, extension=".json")
    try:
        value = json.loads(Path(sidecar).read_text()).get("FramewiseDisplacementThreshold")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _first_existing(*paths):
    for path in paths:
        if path and Path(str(path)).exists():
            return str(path)
    return str(paths[-1])


def _read_prediction(path):
    import pandas as pd

    if not path or not Path(path).exists():
        return None
    return pd.read_csv(path, sep="\t").iloc[0].to_dict()
