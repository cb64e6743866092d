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
import os
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
    #: raw-like name (sub/ses/task/acq/run entities + ``_bold``) in the run's ``func``
    #: folder: the source of the run's group-level derivative names
    source: str | None = None

    @property
    def key(self) -> str:
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        if self.run:
            parts.append(f"run-{self.run}")
        return "_".join(parts)


_SPACE_KEYS = ("space", "cohort", "res", "desc")


def _space_of(ents: dict) -> str:
    return ents.get("space", "") + (f":cohort-{ents['cohort']}" if ents.get("cohort") else "")


def find_participant_outputs(output_dir, subjects, *, task, space, resolution=None
                             ) -> list[RunFiles]:
    """Denoised series + masks written by the participant level, per run.

    ``space`` is ``--output-space`` (``NAME[:cohort-X][:res-Y]``). Runs of any
    resolution in that space are found (fMRIPrep input keeps each run's own
    grid); when one run exists at several resolutions the one matching
    ``resolution`` (a res label or mm) is taken, else the finest.
    """
    from dpnbids.preproc.fmriprep import parse_space
    from dpnbids.workflows.outputs import build_name, res_label, split_bids_name

    template, mods = parse_space(space)
    want_res = mods.get("res")
    if want_res is None and resolution is not None:
        want_res = resolution if isinstance(resolution, str) else res_label(resolution)
    output_dir = Path(output_dir)
    runs, missing = [], []
    for sub in subjects:
        pattern = (f"sub-{sub}/**/func/sub-{sub}_*task-{task}_*space-{template}_"
                   "*desc-denoised_bold.nii.gz")
        by_run: dict[tuple, list] = {}
        for den in sorted(output_dir.glob(pattern)):
            ents, _, _ = split_bids_name(den)
            if ents.get("space") != template or (
                    mods.get("cohort") and ents.get("cohort") != mods["cohort"]):
                continue
            key = tuple((k, v) for k, v in ents.items() if k not in _SPACE_KEYS)
            by_run.setdefault(key, []).append((den, ents))
        if not by_run:
            missing.append(sub)
            continue
        for key, cands in by_run.items():
            den, ents = _pick_run_resolution(cands, want_res)
            mask = den.with_name(den.name.replace("desc-denoised_bold", "desc-brain_mask"))
            if not mask.exists():
                raise InputError(f"{mask} is missing next to {den.name}; rerun the participant "
                                 f"level for sub-{sub}.")
            source = den.parent / build_name(dict(key), "bold", ".nii.gz")
            runs.append(RunFiles(sub, den, mask, ents.get("ses"), ents.get("run"),
                                 extra={"entities": ents}, source=str(source)))
    if missing:
        raise InputError(
            f"no denoised BOLD (space-{template}, task-{task}) in {output_dir} for "
            f"{', '.join('sub-' + s for s in missing)}; run the participant level first "
            "(with the same --output-space and --task-id).")
    spaces = sorted({_space_of(r.extra["entities"]) for r in runs})
    if len(spaces) > 1:
        raise InputError(f"participant outputs in {output_dir} are in several cohorts of "
                         f"{template} ({spaces}); choose one with --output-space, e.g. "
                         f"--output-space {spaces[0]}.")
    return runs


def _pick_run_resolution(cands, want_res):
    """One (path, entities) of a run found at several resolutions."""
    if len(cands) == 1:
        return cands[0]
    if want_res is not None:
        for den, ents in cands:
            if ents.get("res") == str(want_res):
                return den, ents
    zooms = {den: float(np.prod(nib.load(str(den)).header.get_zooms()[:3])) for den, _ in cands}
    return min(cands, key=lambda c: (zooms[c[0]], c[0].name))


@dataclass(frozen=True)
class AnalysisGrid:
    """The one grid every run is analysed on at the group level."""

    shape: tuple
    affine: np.ndarray
    voxel_mm: tuple
    res: str
    resampled: bool
    reason: str

    def as_dict(self) -> dict:
        return {"Shape": [int(n) for n in self.shape],
                "VoxelSize": [float(v) for v in self.voxel_mm],
                "Affine": np.asarray(self.affine, dtype=float).round(6).tolist(),
                "ResLabel": self.res, "Resampled": bool(self.resampled),
                "Reason": self.reason}


def _grid_text(shape, zooms) -> str:
    return "x".join(str(int(n)) for n in shape) + " at " + "x".join(f"{z:g}" for z in zooms) + " mm"


def analysis_grid(runs: list[RunFiles], resolution=None) -> AnalysisGrid:
    """Choose the group's analysis grid from the runs' headers (no image data is read).

    When every run shares one isotropic grid (and ``resolution``, if given,
    is its voxel size) that grid is used as it is. Otherwise (fMRIPrep's
    native, often anisotropic, voxel size; subjects on different grids) all
    runs are resampled once onto one axis-aligned isotropic grid covering every
    run's field of view, at ``resolution`` mm or else the coarsest input voxel
    size (so no run is upsampled beyond what it holds).
    """
    from dpnbids.workflows.outputs import res_label

    headers = [nib.load(str(r.denoised)) for r in runs]
    grids = {}
    for r, img in zip(runs, headers):
        zooms = tuple(round(float(z), 4) for z in nib.affines.voxel_sizes(img.affine))
        grids.setdefault((img.shape[:3], tuple(np.round(img.affine, 3).ravel())), []).append(
            (r, img, zooms))
    want = None
    if resolution is not None:
        try:
            want = float(resolution)
        except ValueError:
            raise InputError(f"--output-resolution res-{resolution}: the group level needs "
                             "the analysis voxel size in mm (e.g. --output-resolution 2), "
                             "or none to take the data's.") from None
    first = next(iter(grids.values()))[0]
    zooms0 = first[2]
    iso = max(zooms0) - min(zooms0) < 0.01
    if len(grids) == 1 and iso and (want is None or abs(zooms0[0] - want) < 0.01):
        label = first[0].extra.get("entities", {}).get("res") or res_label(zooms0[0])
        return AnalysisGrid(tuple(first[1].shape[:3]), first[1].affine, zooms0, label, False,
                            f"every run is on the same isotropic grid "
                            f"({_grid_text(first[1].shape[:3], zooms0)}); used as it is")
    coarsest = max(max(z) for _, _, z in (g[0] for g in grids.values()))
    for members in grids.values():
        coarsest = max(coarsest, max(members[0][2]))
    mm = want if want is not None else coarsest
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for members in grids.values():
        img = members[0][1]
        corners = np.array([[i, j, k] for i in (-0.5, img.shape[0] - 0.5)
                            for j in (-0.5, img.shape[1] - 0.5)
                            for k in (-0.5, img.shape[2] - 0.5)])
        world = nib.affines.apply_affine(img.affine, corners)
        lo, hi = np.minimum(lo, world.min(axis=0)), np.maximum(hi, world.max(axis=0))
    shape = tuple(int(n) for n in np.ceil((hi - lo) / mm - 1e-6).astype(int))
    affine = np.diag([mm, mm, mm, 1.0])
    affine[:3, 3] = lo + mm / 2.0
    described = "; ".join(f"{len(m)} run(s) on {_grid_text(m[0][1].shape[:3], m[0][2])}"
                          for m in grids.values())
    why = (f"--output-resolution {mm:g} mm" if want is not None else
           f"the coarsest input voxel size, {mm:g} mm")
    return AnalysisGrid(shape, affine, (mm, mm, mm), res_label(mm), True,
                        f"input grids: {described}; every run was resampled once (trilinear; "
                        f"masks at 0.5) onto a common isotropic grid of "
                        f"{_grid_text(shape, (mm, mm, mm))}, {why}")


def resample_runs(runs: list[RunFiles], grid: AnalysisGrid, work_dir) -> list[RunFiles]:
    """Runs on ``grid``: the inputs when no resampling is needed, else resampled copies
    (uncompressed, in ``work_dir/analysis_grid``; reused by a rerun)."""
    import dataclasses

    from nilearn.image import resample_img

    if not grid.resampled:
        return runs
    out_dir = Path(work_dir) / "analysis_grid" / f"res-{grid.res}"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for r in runs:
        den = out_dir / r.denoised.name.replace(".nii.gz", ".nii")
        mask = out_dir / r.mask.name.replace(".nii.gz", ".nii")
        fresh = all(p.exists() and p.stat().st_mtime >= r.denoised.stat().st_mtime
                    for p in (den, mask))
        if not fresh:
            LOGGER.info("resampling %s onto the analysis grid", r.key)
            kw = dict(target_affine=grid.affine, target_shape=grid.shape, force_resample=True,
                      copy_header=True, interpolation="linear")
            m = resample_img(nib.load(str(r.mask)), **kw)
            m_data = (np.asarray(m.dataobj) > 0.5).astype(np.uint8)
            b = resample_img(nib.load(str(r.denoised)), **kw)
            b_data = np.asarray(b.dataobj, dtype=np.float32) * m_data[..., None]
            tmp = den.with_name(den.name + ".tmp.nii")
            save_nifti(nib.Nifti1Image(b_data, grid.affine), str(tmp))
            os.replace(tmp, den)
            tmp = mask.with_name(mask.name + ".tmp.nii")
            save_nifti(nib.Nifti1Image(m_data, grid.affine), str(tmp))
            os.replace(tmp, mask)
        out.append(dataclasses.replace(r, denoised=den, mask=mask))
    return out


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


def run_dof_from_outputs(run: RunFiles, config):
    """:class:`~dpnbids.preproc.dof.RunDof` of a participant-level output, from its
    confounds TSV and the denoised series' JSON sidecar (no image is read)."""
    from dpnbids.preproc.confounds import read_confounds
    from dpnbids.preproc.dof import run_dof
    from dpnbids.preproc.signal import censor_mask
    from dpnbids.workflows.outputs import DerivativesWriter

    sidecar = Path(str(run.denoised).replace(".nii.gz", ".json"))
    meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    writer = DerivativesWriter(config.execution.output_dir)
    conf = writer.path(source=run.source, suffix="timeseries", extension=".tsv",
                       desc="confounds")
    if not conf.exists() or "RepetitionTime" not in meta:
        raise InputError(f"{conf.name} or the RepetitionTime of {sidecar.name} is missing; "
                         f"rerun the participant level for sub-{run.subject}.")
    strategy = meta.get("DenoiseStrategy", config.preproc.denoise_strategy)
    band = meta.get("BandPass", [config.preproc.high_pass, config.preproc.low_pass])
    confounds, _ = read_confounds(conf, strategy=strategy)
    censored = censor_mask(confounds, meta.get("FramewiseDisplacementThreshold"))
    return run_dof(confounds, float(meta["RepetitionTime"]), strategy=strategy,
                   high_pass=band[0], low_pass=band[1], censored=censored)


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
            ref = nib.load(str(runs[0].mask))
            if t.shape == mask.shape and np.allclose(t.affine, ref.affine, atol=1e-3):
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
    mask_img = nib.load(str(mask_file))
    if maps_img.shape[:3] != bold.shape[:3] or not np.allclose(maps_img.affine, bold.affine,
                                                                atol=1e-3):
        # a new patient's fMRIPrep run on its own grid (e.g. 3x3x4 mm, no res-): put it on
        # the maps' analysis grid, as the group level did for the training cohort
        from nilearn.image import resample_to_img

        LOGGER.info("%s: resampling onto the grid of %s", Path(bold_file).name,
                    Path(group_maps_file).name)
        ref = nib.Nifti1Image(np.zeros(maps_img.shape[:3], np.uint8), maps_img.affine)
        kw = dict(interpolation="linear", force_resample=True, copy_header=True)
        mask_img = resample_to_img(mask_img, ref, **kw)
        bold = resample_to_img(bold, ref, **kw)
    mask = np.asarray(mask_img.dataobj) > 0.5
    gmask_path = group_mask_for(group_maps_file)
    if gmask_path is not None:
        gmask = np.asarray(nib.load(str(gmask_path)).dataobj)
        if gmask.shape != mask.shape:
            raise DimensionError(f"group mask {gmask_path.name} (grid {gmask.shape}) does not "
                                 f"match {Path(bold_file).name} (grid {mask.shape}).")
        mask &= gmask > 0.5
    # as FSL's dual_regression: the data are not variance-normalised (that would erase
    # the amplitude the classifier needs); they are in percent signal change already
    data = np.ascontiguousarray(np.asarray(bold.dataobj, dtype=np.float32)[mask].T)
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
