"""Group masks, the group-level analysis grid, and (time x voxel) <-> image conversions.

Runs are any objects with ``denoised`` and ``mask`` paths (e.g.
:class:`dpnbids.workflows.inputs.RunFiles`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from dpnbids.derivatives import sibling, write_nifti
from dpnbids.exceptions import DimensionError, InputError

LOGGER = logging.getLogger(__name__)


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


def analysis_grid(runs: list, resolution=None) -> AnalysisGrid:
    """Choose the group's analysis grid from the runs' headers (no image data is read).

    When every run shares one isotropic grid (and ``resolution``, if given,
    is its voxel size) that grid is used as it is. Otherwise (fMRIPrep's
    native, often anisotropic, voxel size; subjects on different grids) all
    runs are resampled once onto one axis-aligned isotropic grid covering every
    run's field of view, at ``resolution`` mm or else the coarsest input voxel
    size (so no run is upsampled beyond what it holds).
    """
    from dpnbids.derivatives import res_label

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
            raise InputError(f"`output_resolution` res-{resolution}: the group level needs "
                             "the analysis voxel size in mm (e.g. `output_resolution` 2), "
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
    why = (f"`output_resolution` {mm:g} mm" if want is not None else
           f"the coarsest input voxel size, {mm:g} mm")
    return AnalysisGrid(shape, affine, (mm, mm, mm), res_label(mm), True,
                        f"input grids: {described}; every run was resampled once (trilinear; "
                        f"masks at 0.5) onto a common isotropic grid of "
                        f"{_grid_text(shape, (mm, mm, mm))}, {why}")


def resample_runs(runs: list, grid: AnalysisGrid, work_dir) -> list:
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
        den = out_dir / sibling(r.denoised, extension=".nii").name
        mask = out_dir / sibling(r.mask, extension=".nii").name
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
            write_nifti(nib.Nifti1Image(b_data, grid.affine), den)
            write_nifti(nib.Nifti1Image(m_data, grid.affine), mask)
        out.append(dataclasses.replace(r, denoised=den, mask=mask))
    return out


def check_same_grid(runs: list) -> tuple[tuple, np.ndarray]:
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
            + "; ".join(bad) + ". Rerun those participants with the same `output_space` and "
            "`output_resolution`.")
    return shape, affine


def group_mask(runs: list, *, coverage: float = 0.9, space=None, resolution=None):
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


def _load_image(path) -> nib.spatialimages.SpatialImage:
    """``nib.load``, except that a gzipped NIfTI is decompressed in one call (with ISA-L):
    nibabel's streamed gzip reader makes ~70,000 small reads for a 110-volume 4 mm run,
    and the group ICA spent more time there than in MIGP and FastICA together."""
    path = str(path)
    if path.endswith(".nii.gz"):
        try:  # ISA-L (a dependency) decompresses ~2-3x faster than zlib
            from isal.igzip import decompress
        except ImportError:  # pragma: no cover - isal is in the lock file
            from gzip import decompress
        with open(path, "rb") as fh:
            return nib.Nifti1Image.from_bytes(decompress(fh.read()))
    return nib.load(path)


def _in_mask_float32(img, mask: np.ndarray):
    """(T, V) in-mask float32 data of an unscaled float32 4D NIfTI held in memory, gathered
    straight from its bytes (the file's Fortran order is a C-order (T, z, y, x) array), or
    None when the image is not that simple case."""
    hdr = img.header
    slope, inter = hdr.get_slope_inter()
    raw = getattr(img.dataobj, "file_like", None)
    if (len(img.shape) != 4 or img.shape[:3] != mask.shape or hdr.get_data_dtype() != "<f4"
            or slope not in (None, 1.0) or inter not in (None, 0.0)
            or not hasattr(raw, "getbuffer")):
        return None
    nx, ny, nz, nt = img.shape
    offset = int(getattr(img.dataobj, "offset", -1))
    if offset < 0:
        return None
    arr = np.frombuffer(raw.getbuffer(), dtype="<f4", count=nx * ny * nz * nt, offset=offset)
    xs, ys, zs = np.nonzero(mask)
    cols = (zs * ny + ys) * nx + xs
    return arr.reshape(nt, nx * ny * nz)[:, cols]


def load_run_matrix(path, mask: np.ndarray, *, normalise=True) -> np.ndarray:
    """(T, V) float32 in-mask data of one run (a file or an image); variance-normalised
    per voxel if asked."""
    img = path if hasattr(path, "dataobj") else _load_image(path)
    data = _in_mask_float32(img, mask) if not hasattr(path, "dataobj") else None
    if data is None:
        data = np.asarray(img.dataobj, dtype=np.float32)[mask].T
    if normalise:
        from dpnbids.analysis.ica import variance_normalise

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
        cand = sibling(maps, suffix="mask")
    elif maps.name == "group_maps.nii.gz":
        cand = maps.with_name("group_mask.nii.gz")
    else:
        return None
    return cand if cand.exists() else None
