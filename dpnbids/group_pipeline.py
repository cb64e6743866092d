"""File-level glue of the group level: finding participant outputs, loading
them as (time x voxel) arrays, group ICA, dual regression of one run,
feature arrays for the CNN and applying a trained model to a new patient.

The maths is in :mod:`dpnbids.ica`, :mod:`dpnbids.dual_regression`,
:mod:`dpnbids.stats`, :mod:`dpnbids.networks`, :mod:`dpnbids.model`,
:mod:`dpnbids.cv` and :mod:`dpnbids.metrics`.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from dpnbids.exceptions import DimensionError, InputError
from dpnbids.nifti_io import save_nifti

LOGGER = logging.getLogger("dpnbids.group")


@dataclass
class RunFiles:
    subject: str
    denoised: Path
    mask: Path
    session: str | None = None
    run: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        if self.run:
            parts.append(f"run-{self.run}")
        return "_".join(parts)


def find_participant_outputs(output_dir, subjects, *, task, space, res) -> list[RunFiles]:
    """Denoised series + masks written by the participant level, per run."""
    from dpnbids.workflows.outputs import split_bids_name

    output_dir = Path(output_dir)
    runs, missing = [], []
    for sub in subjects:
        pattern = f"sub-{sub}/**/func/sub-{sub}_*task-{task}_*space-{space}_res-{res}_desc-denoised_bold.nii.gz"
        found = sorted(output_dir.glob(pattern))
        if not found:
            missing.append(sub)
            continue
        for den in found:
            ents, _, _ = split_bids_name(den)
            mask = Path(str(den).replace("desc-denoised_bold", "desc-brain_mask"))
            if not mask.exists():
                raise InputError(f"{mask} is missing next to {den.name}; rerun the participant "
                                 f"level for sub-{sub}.")
            runs.append(RunFiles(sub, den, mask, ents.get("ses"), ents.get("run")))
    if missing:
        raise InputError(
            f"no denoised BOLD (space-{space}, res-{res}, task-{task}) in {output_dir} for "
            f"{', '.join('sub-' + s for s in missing)}; run the participant level first "
            "(with the same --output-space, --output-resolution and --task-id).")
    return runs


def check_same_grid(runs: list[RunFiles]) -> tuple[tuple, np.ndarray]:
    """All runs must share one grid; name the ones that differ."""
    ref = nib.load(str(runs[0].denoised))
    shape, affine = ref.shape[:3], ref.affine
    bad = []
    for r in runs[1:]:
        img = nib.load(str(r.denoised))
        if img.shape[:3] != shape or not np.allclose(img.affine, affine, atol=1e-3):
            bad.append(f"{r.key} (shape {img.shape[:3]}, voxel "
                       f"{np.round(nib.affines.voxel_sizes(img.affine), 2).tolist()})")
    if bad:
        raise DimensionError(
            f"participant outputs are on different grids: {runs[0].key} has shape {shape} and "
            f"voxel {np.round(nib.affines.voxel_sizes(affine), 2).tolist()} but "
            + "; ".join(bad) + ". Rerun those participants with the same --output-space and "
            "--output-resolution.")
    return shape, affine


def group_mask(runs: list[RunFiles], *, coverage: float = 0.9, space=None, resolution=None):
    """Voxels inside the brain mask of at least ``coverage`` of the runs (and the template)."""
    acc = None
    for r in runs:
        m = nib.load(str(r.mask)).get_fdata() > 0.5
        acc = m.astype(np.int32) if acc is None else acc + m
    mask = acc >= max(1, int(np.ceil(coverage * len(runs))))
    if space is not None:
        try:
            from dpnbids.templates import load_template

            t = load_template(space, resolution, "mask")
            if t.shape == mask.shape:
                mask &= np.asarray(t.dataobj) > 0.5
        except InputError:
            pass
    if mask.sum() < 100:
        raise InputError(f"the group brain mask has only {int(mask.sum())} voxels; the "
                         "participant masks barely overlap. Check the participant reports.")
    return mask


def load_run_matrix(path, mask: np.ndarray, *, normalise=True) -> np.ndarray:
    """(T, V) float32 in-mask data of one run; variance-normalised per voxel if asked."""
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)[mask].T
    if normalise:
        from dpnbids.ica import variance_normalise

        data = variance_normalise(data).astype(np.float32, copy=False)
    return np.ascontiguousarray(data)


def maps_to_img(maps: np.ndarray, mask: np.ndarray, affine) -> nib.Nifti1Image:
    """(K, V) in-mask maps -> 4D image."""
    vol = np.zeros(mask.shape + (maps.shape[0],), dtype=np.float32)
    vol[mask] = maps.T
    return nib.Nifti1Image(vol, affine)


def img_to_maps(img, mask: np.ndarray) -> np.ndarray:
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[..., None]
    if data.shape[:3] != mask.shape:
        raise DimensionError(f"maps of shape {data.shape[:3]} do not match the mask grid "
                             f"{mask.shape}; resample them to the same space and resolution.")
    return data[mask].T


def group_mask_for(group_maps_file) -> Path | None:
    """The group mask written beside group maps (our group folder or a model bundle)."""
    maps = Path(str(group_maps_file))
    if maps.name.endswith("_desc-ica_components.nii.gz"):
        cand = maps.with_name(maps.name.replace("_components.nii.gz", "_mask.nii.gz"))
    elif maps.name == "group_maps.nii.gz":
        cand = maps.with_name("group_mask.nii.gz")
    else:
        return None
    return cand if cand.exists() else None


def dual_regress_file(bold_file, group_maps_file, mask_file, out_dir=".") -> dict:
    """Dual regression of one run against 4D group maps, within ``mask_file``."""
    from dpnbids.dual_regression import dual_regression

    out_dir = Path(out_dir)
    maps_img = nib.load(str(group_maps_file))
    bold = nib.load(str(bold_file))
    if maps_img.shape[:3] != bold.shape[:3] or not np.allclose(maps_img.affine, bold.affine,
                                                                atol=1e-3):
        raise DimensionError(
            f"group maps {Path(group_maps_file).name} (grid {maps_img.shape[:3]}) and "
            f"{Path(bold_file).name} (grid {bold.shape[:3]}) are not on the same grid; run the "
            "participant level with the --output-space/--output-resolution of the maps.")
    mask = nib.load(str(mask_file)).get_fdata() > 0.5
    gmask_path = group_mask_for(group_maps_file)
    if gmask_path is not None:
        gmask = np.asarray(nib.load(str(gmask_path)).dataobj)
        if gmask.shape != mask.shape:
            raise DimensionError(f"group mask {gmask_path.name} (grid {gmask.shape}) does not "
                                 f"match {Path(bold_file).name} (grid {mask.shape}).")
        mask &= gmask > 0.5
    # as FSL's dual_regression: the data are not variance-normalised (that would erase
    # the amplitude the classifier needs); they are in percent signal change already
    data = load_run_matrix(bold_file, mask, normalise=False)
    group = img_to_maps(maps_img, mask)
    result = dual_regression(data, group, des_norm=True)
    cols = [f"component_{k:02d}" for k in range(group.shape[0])]
    tc_file = out_dir / "stage1_timecourses.tsv"
    pd.DataFrame(result.timecourses, columns=cols).to_csv(tc_file, sep="\t", index=False)
    pe_file = out_dir / "stage2_pe.nii.gz"
    z_file = out_dir / "stage2_z.nii.gz"
    save_nifti(maps_to_img(result.maps, mask, bold.affine), str(pe_file))
    save_nifti(maps_to_img(result.zmaps, mask, bold.affine), str(z_file))
    return {"timecourses": str(tc_file), "maps_pe": str(pe_file), "maps_z": str(z_file)}


def predict_subject(model_dir, maps_pe, maps_z, output_dir, source) -> str:
    """Probability of response of one run from its stage-2 maps with a saved bundle."""
    from dpnbids.bundle import load_bundle, predict
    from dpnbids.workflows.outputs import DerivativesWriter

    bundle = load_bundle(model_dir)
    img = nib.load(str(maps_pe if bundle.feature == "pe" else maps_z))
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
    writer.write_json({"ModelDirectory": str(model_dir), "Versions": bundle.versions,
                       "CrossValidatedPerformance": bundle.cv_metrics,
                       "Threshold": 0.5}, Path(str(target)[:-4] + ".json"))
    return str(target)
