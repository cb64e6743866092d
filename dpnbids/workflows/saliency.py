"""Saliency derivatives of the group level and of ``participant --model`` predictions.

The attribution maths is :mod:`dpnbids.learn.saliency`; this module makes one
:class:`~dpnbids.learn.saliency.SaliencyAccumulator` per input set for the outer CV,
maps the accumulated CNN-grid maps back onto the analysis grid (the group components'
affine and shape) and writes, through the derivatives writer:

* ``group/<prefix>_desc-saliency<SET>_components.nii.gz`` (+ ``.json``): 4D, one volume
  per input channel (component), mean |attribution| over held-out subjects and folds;
* ``group/<prefix>_desc-saliency<SET>_map.nii.gz`` (+ ``.json``): the 3D sum over channels;
* ``group/saliency_networks.tsv`` (+ ``.json``): components ranked by share of attribution,
  for the CNN and for the linear SVM's Haufe pattern, with the spread over folds.

``<prefix>`` is the group components' ``task-<t>_space-<T>_res-<r>``.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from dpnbids.derivatives import sibling

LOGGER = logging.getLogger(__name__)

BASELINE_TEXT = ("the training fold's mean input map: the mean over the fold's outer-training "
                 "subjects of the scaled CNN inputs (never zeros: after per-channel z-scoring "
                 "a zero map is an input no subject has)")
AVERAGING_TEXT = ("mean |attribution| over all held-out (subject, fold) pairs; a component "
                  "that a fold did not use (SSC selection) contributes 0 for that fold's "
                  "subjects, so a rarely selected component is down-weighted accordingly")
SMOOTHING_TEXT = ("each held-out subject's signed attribution map smoothed on the CNN grid "
                  "with a Gaussian of FWHM SmoothingFWHM (mm), channel by channel, before "
                  "the absolute value (--saliency-fwhm)")
METHOD_TEXT = {"gradients": "gradient x input (Shrikumar et al. 2016)",
               "integrated-gradients": "integrated gradients (Sundararajan et al. 2017), "
                                       "midpoint Riemann sum",
               "occlusion": "occlusion with a cubic 3D patch replaced by the baseline "
                            "(Zeiler & Fergus 2014)"}


def set_label(input_set: str) -> str:
    """``desc-`` label of an input set: 'SSC-leaky' -> 'saliencySSCleaky'."""
    return "saliency" + re.sub(r"[^A-Za-z0-9]", "", str(input_set))


def make_accumulators(config, channels: dict) -> dict:
    """One accumulator per input set (``{name: number of channels}``); empty with
    ``--saliency none``."""
    from dpnbids.learn.saliency import SaliencyAccumulator

    method = config.cnn.saliency
    if method == "none":
        return {}
    # RSP channels are BOLD volumes, not components: no network ranking, so no Haufe pattern
    from dpnbids.learn.model import cnn_voxel_size

    voxel = cnn_voxel_size(config.cnn.cnn_voxel_size)
    return {name: SaliencyAccumulator(method, int(n), haufe=not name.startswith("RSP"),
                                      fwhm_mm=config.cnn.saliency_fwhm, voxel_mm=voxel)
            for name, n in channels.items()}


def saliency_paths(comps_file, input_set: str) -> dict:
    """The components, map and sidecar paths of one input set beside ``comps_file``."""
    comps = sibling(comps_file, desc=set_label(input_set))
    smap = sibling(comps, suffix="map")
    return {"components": comps, "components_json": sibling(comps, extension=".json"),
            "map": smap, "map_json": sibling(smap, extension=".json")}


def write_group_saliency(config, writer, res, accumulators: dict, grid_affine) -> dict:
    """Write the maps and the network table; returns ``{"sets": {name: paths},
    "networks": DataFrame}`` for the report (empty when nothing was attributed)."""
    from dpnbids.learn.saliency import grid_to_grid, network_ranking

    out = {"sets": {}, "networks": pd.DataFrame()}
    if grid_affine is None:  # no map-based input set: the CNN grid of the RSP set
        from dpnbids.learn.model import cnn_grid, cnn_voxel_size

        grid_affine = cnn_grid(cnn_voxel_size(config.cnn.cnn_voxel_size))[1]
    comps_img = nib.load(str(res.comps_file))
    affine, shape = comps_img.affine, comps_img.shape[:3]
    mask = np.asarray(res.mask, bool)
    tables = []
    for name, acc in accumulators.items():
        if acc.sum_abs_ is None:
            continue
        on_grid = grid_to_grid(acc.mean_abs_, grid_affine, affine, shape) * mask[..., None]
        on_grid = np.clip(on_grid, 0, None)  # |attribution|; interpolation keeps it >= 0
        paths = saliency_paths(res.comps_file, name)
        is_rsp = name.startswith("RSP")
        meta = {
            "Description": f"Mean |attribution| of the {name} CNN over held-out subjects "
                           "and outer folds",
            "Method": config.cnn.saliency, "MethodDescription": METHOD_TEXT[acc.method],
            "Target": acc.target, "Baseline": BASELINE_TEXT
            if acc.method != "gradients" else "none (gradient x input)",
            "IntegratedGradientsSteps": acc.steps if acc.method == "integrated-gradients"
            else None,
            "OcclusionPatchVoxels": acc.patch if acc.method == "occlusion" else None,
            "Averaging": AVERAGING_TEXT, "SmoothingFWHM": acc.fwhm_mm,
            "Smoothing": SMOOTHING_TEXT if acc.fwhm_mm else "none",
            "HeldOutEvaluations": acc.n_evaluations_,
            "Folds": acc.folds_,
            "Volumes": "one per BOLD volume of the RSP input" if is_rsp
            else "one per group ICA component (volume k = component k)",
            "Sources": [Path(res.comps_file).name],
            "SpatialReference": res.space,
            "CNNGridAffine": np.asarray(grid_affine).tolist(),
            "Resampling": "CNN grid -> analysis grid, linear interpolation through world "
                          "coordinates; 0 outside the group mask"}
        meta = {k: v for k, v in meta.items() if v is not None}
        writer.write_nifti(nib.Nifti1Image(on_grid.astype(np.float32), affine),
                           paths["components"])
        writer.write_json(meta, paths["components_json"])
        writer.write_nifti(nib.Nifti1Image(on_grid.sum(-1).astype(np.float32), affine),
                           paths["map"])
        writer.write_json({**meta, "Description": meta["Description"] + ", summed over "
                           "channels", "Volumes": "one 3D map"}, paths["map_json"])
        out["sets"][name] = paths
        if not is_rsp:
            for model, shares in acc.shares_.items():
                if len(shares):
                    tables.append(network_ranking(np.stack(shares), res.components_table,
                                                  input_set=name, model=model))
    if tables:
        out["networks"] = pd.concat(tables, ignore_index=True)
        target = res.group_dir / "saliency_networks.tsv"
        writer.write_tsv(out["networks"], target)
        writer.write_json(NETWORKS_SIDECAR, target.with_suffix(".json"))
    return out


NETWORKS_SIDECAR = {
    "input_set": {"Description": "CNN input set"},
    "model": {"Description": "cnn: the CNN's attributions (--saliency method); svm-haufe: "
                             "the linear-SVM baseline's Haufe et al. (2014) activation "
                             "pattern A = Cov(X) w on the same folds and features"},
    "component": {"Description": "group ICA component (0-based)"},
    "network": {"Description": "network label of the component (components table)"},
    "share_mean": {"Description": "mean over outer folds of the component's share (0 in a "
                                  "fold that did not select it). cnn: share of the held-out "
                                  "subjects' mean |channel contribution|, a subject's "
                                  "attributions summed over the component's voxels (with "
                                  "integrated gradients, the component's part of "
                                  "logit(x) - logit(baseline)); svm-haufe: share of the "
                                  "pattern's total |value|"},
    "share_sd": {"Description": "SD over outer folds of that share (n/a with one fold)"},
    "n_folds_used": {"Description": "folds in which the component had any attribution"},
    "rank": {"Description": "1 = largest mean share, within input_set and model"},
}


def bundle_baseline(x, channels, scaling) -> np.ndarray:
    """The IG baseline a bundle stores: the mean scaled training input (X, Y, Z, C);
    ``scaling``: the model's :class:`~dpnbids.learn.scaling.ChannelScaler`."""
    x = np.asarray(x, np.float32)
    if channels is not None:
        x = x[..., np.asarray(channels, dtype=int)]
    return scaling.transform(x).mean(axis=0)


def write_subject_saliency(bundle, writer, source, maps_img, method, confounds=None) -> dict:
    """Per-subject attribution of a ``--model`` prediction beside the prediction.

    Integrated gradients (or the chosen method) with the bundle's stored training mean as
    the baseline, mapped onto the subject maps' grid. Signed: positive voxels push this
    patient's prediction towards response. A bundle written before the baseline was
    stored gets none (IG and occlusion need it): a warning says so and no map is written.
    """
    from dpnbids.learn.bundle import scaled_input
    from dpnbids.learn.saliency import attribute, grid_to_grid

    if method == "none":
        return {}
    if bundle.baseline is None and method != "gradients":
        LOGGER.warning("model %s stores no training mean map (written by an older dpnbids): "
                       "no %s saliency map for this prediction; retrain the model to get one",
                       bundle.path, method)
        return {}
    from dpnbids.derivatives import split_bids_name

    img = nib.load(str(maps_img))
    xs = scaled_input(bundle, img, confounds)
    attr = attribute(method, bundle.model, xs, baseline=bundle.baseline)[0]
    on_grid = grid_to_grid(attr, bundle.grid_affine, img.affine, img.shape[:3])
    mask = np.asarray(nib.load(str(bundle.mask_file)).dataobj) > 0.5
    on_grid *= mask[..., None]
    channels = bundle.selected_components or list(range(on_grid.shape[-1]))
    # the stage-2 maps' space, cohort and resolution: the map is on their grid
    grid = {k: v for k, v in split_bids_name(maps_img)[0].items()
            if k in ("space", "cohort", "res")}
    comps = writer.path(source=source, suffix="components", datatype="func",
                        desc="saliency", **grid)
    smap = sibling(comps, suffix="map")
    meta = {"Description": "Signed attribution of this prediction to each voxel and "
                           "component (positive: towards response)",
            "Method": method, "MethodDescription": METHOD_TEXT[method], "Target": "logit",
            "Baseline": "the training subjects' mean input map stored in the model",
            "Components": [int(c) for c in channels], "ModelDirectory": str(bundle.path)}
    writer.write_nifti(nib.Nifti1Image(on_grid.astype(np.float32), img.affine), comps)
    writer.write_json(meta, sibling(comps, extension=".json"))
    writer.write_nifti(nib.Nifti1Image(on_grid.sum(-1).astype(np.float32), img.affine), smap)
    writer.write_json({**meta, "Description": meta["Description"] + ", summed over "
                       "components"}, sibling(smap, extension=".json"))
    return {"components": comps, "map": smap}
