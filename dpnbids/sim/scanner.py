"""The simulated scanner of :mod:`dpnbids.sim.generator`: geometry, signals, confounds.

Rigid and affine transforms, the template the model lives on, slice timing,
band-limited network time courses, head motion and the fMRIPrep-style
confounds table of a run. Pure numpy/scipy apart from reading the template.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from dpnbids.exceptions import InputError
from dpnbids.sim.params import _SLICE_ORDERS, SPACE


def rotation_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """``Rx(rx) @ Ry(ry) @ Rz(rz)`` (radians), the convention of the motion model."""
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rxm = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rym = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rzm = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rxm @ rym @ rzm


def motion_matrix(params: Sequence[float], centre: Sequence[float]) -> np.ndarray:
    """4x4 ``M`` with ``M x = R (x - c) + c + t`` for fMRIPrep-ordered params."""
    tx, ty, tz, rx, ry, rz = params
    m = np.eye(4)
    r = rotation_matrix(rx, ry, rz)
    c = np.asarray(centre, dtype=float)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.array([tx, ty, tz])
    return m


def slice_timing(n_slices: int, tr: float, order: str = "ascending") -> np.ndarray:
    """Acquisition offset (s) of each slice for a sequential or interleaved order."""
    if order == "ascending":
        acq = np.arange(n_slices)
    elif order == "descending":
        acq = np.arange(n_slices)[::-1]
    elif order == "interleaved":
        seq = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
        acq = np.empty(n_slices, dtype=int)
        acq[seq] = np.arange(n_slices)
    else:
        raise InputError(f"slice_order must be one of {_SLICE_ORDERS}; got {order!r}.")
    return np.round(acq * tr / n_slices, 4)


def band_limited_coefficients(rng, n: int, duration: float, band=(0.01, 0.1),
                              correlation: float = 0.0):
    """Fourier frequencies and coefficients of ``n`` band-limited signals.

    Returns ``freqs`` (F,) and ``coefs`` (n, 2F) for ``cos`` then ``sin`` terms;
    signals share a common component so that pairwise correlations are
    ``correlation`` in expectation.
    """
    k = np.arange(int(np.ceil(band[0] * duration)), int(np.floor(band[1] * duration)) + 1)
    k = k[k > 0]
    freqs = k / duration
    common = rng.standard_normal(2 * len(freqs))
    own = rng.standard_normal((n, 2 * len(freqs)))
    coefs = np.sqrt(1 - correlation) * own + np.sqrt(correlation) * common
    return freqs, coefs


def evaluate_signals(freqs, coefs, times) -> np.ndarray:
    """Evaluate the band-limited signals at ``times`` (any shape): (n, *times.shape)."""
    t = np.asarray(times, dtype=float)
    ph = 2 * np.pi * np.multiply.outer(t, freqs)  # (..., F)
    basis = np.concatenate([np.cos(ph), np.sin(ph)], axis=-1)  # (..., 2F)
    return np.moveaxis(basis @ coefs.T, -1, 0)


class Template:
    """Template images on the model grid (and the T1w grid)."""

    def __init__(self, resolution: float, t1w_resolution: float):
        from dpnbids.templates import load_template

        mask_img = load_template(SPACE, resolution, "mask")
        self.affine = np.asarray(mask_img.affine, dtype=float)
        self.shape = tuple(mask_img.shape[:3])
        self.mask = np.asarray(mask_img.dataobj) > 0
        gm = np.asarray(load_template(SPACE, resolution, "GM").dataobj, dtype=np.float32)
        wm = np.asarray(load_template(SPACE, resolution, "WM").dataobj, dtype=np.float32)
        csf = np.asarray(load_template(SPACE, resolution, "CSF").dataobj, dtype=np.float32)
        self.gm, self.wm, self.csf = gm, wm, csf
        support = ndimage.binary_dilation(self.mask, iterations=1)
        self.support = support
        self.baseline = (1000.0 * (0.8 * gm + 0.6 * wm + 1.0 * csf) * support).astype(np.float32)
        self.baseline[support & (self.baseline < 200)] = 200.0
        self.physio_weight = (csf + 0.5 * wm + 0.2 * gm).astype(np.float32) * support
        t1 = load_template(SPACE, resolution, "T1w")
        self.t1 = np.asarray(t1.dataobj, dtype=np.float32)
        t1hi = load_template(SPACE, t1w_resolution, "T1w")
        self.t1_hi = np.asarray(t1hi.dataobj, dtype=np.float32)
        self.t1_hi_affine = np.asarray(t1hi.affine, dtype=float)
        self.t1_hi_mask = np.asarray(load_template(SPACE, t1w_resolution, "mask").dataobj) > 0


@lru_cache(maxsize=2)
def template_model(resolution: float, t1w_resolution: float) -> Template:
    return Template(resolution, t1w_resolution)


def bounding_corners(shape, affine, mask) -> np.ndarray:
    """World coordinates of the bounding-box corners of ``mask``."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])
                        for c in (lo[2], hi[2])], dtype=float)
    return corners @ affine[:3, :3].T + affine[:3, 3]


def grid_around(world_pts: np.ndarray, voxel: float, orient: np.ndarray, margin: float):
    """Grid (affine, shape) with direction cosines ``orient`` covering the points."""
    lin = orient * voxel
    inv = np.linalg.inv(lin)
    vox = world_pts @ inv.T
    lo = np.floor(vox.min(0) - margin / voxel)
    hi = np.ceil(vox.max(0) + margin / voxel)
    shape = tuple(int(s) for s in (hi - lo + 1))
    affine = np.eye(4)
    affine[:3, :3] = lin
    affine[:3, 3] = lin @ lo
    return affine, shape


def orientation(kind: int, oblique_deg: float) -> np.ndarray:
    """Direction cosines: 0 RAS, 1 LAS, 2 sagittal PIR-like; then an oblique tilt."""
    if kind == 1:
        base = np.diag([-1.0, 1.0, 1.0])
    elif kind == 2:
        base = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    else:
        base = np.eye(3)
    return rotation_matrix(np.deg2rad(oblique_deg), 0.0, 0.0) @ base


def random_affine(rng, rot_deg: float, trans_mm: float, scale: float = 0.0,
                   shear: float = 0.0) -> np.ndarray:
    ang = np.deg2rad(rng.uniform(-rot_deg, rot_deg, 3))
    m = np.eye(4)
    lin = rotation_matrix(*ang)
    if scale or shear:
        s = np.diag(1 + rng.uniform(-scale, scale, 3))
        sh = np.eye(3)
        sh[0, 1], sh[0, 2], sh[1, 2] = rng.uniform(-shear, shear, 3)
        lin = lin @ s @ sh
    m[:3, :3] = lin
    m[:3, 3] = rng.uniform(-trans_mm, trans_mm, 3)
    return m


def sample(volume: np.ndarray, vox2vox: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """Sample ``volume`` at ``vox2vox @ [i, j, k, 1]`` for every voxel of ``shape``."""
    return ndimage.affine_transform(volume, vox2vox[:3, :3], offset=vox2vox[:3, 3],
                                    output_shape=tuple(shape), order=order, mode="constant",
                                    cval=0.0, prefilter=False)


def motion_params(rng, n: int, motion_mm: float) -> np.ndarray:
    walk = np.cumsum(rng.standard_normal((n, 6)), axis=0)
    walk = ndimage.gaussian_filter1d(walk, 2.0, axis=0, mode="nearest")
    walk -= walk[0]
    out = np.zeros_like(walk)
    if motion_mm > 0:
        level = motion_mm * rng.uniform(0.5, 1.5)
        for cols, scale in ((slice(0, 3), level), (slice(3, 6), level / 50.0)):
            peak = np.abs(walk[:, cols]).max()
            out[:, cols] = walk[:, cols] / peak * scale if peak > 0 else 0.0
    return out


def fmriprep_confounds(data: np.ndarray, motion: np.ndarray, tpl: Template) -> tuple[pd.DataFrame, dict]:
    """fMRIPrep-named confounds from template-space data (X, Y, Z, T)."""
    t = data.shape[-1]
    mask = tpl.mask
    ts = data[mask].T.astype(np.float64)  # (T, V)
    cols = {}
    names = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    for i, n in enumerate(names):
        cols[n] = motion[:, i]
        d = np.r_[np.nan, np.diff(motion[:, i])]
        cols[n + "_derivative1"] = d
    dm = np.abs(np.diff(motion, axis=0))
    fd = dm[:, :3].sum(1) + 50.0 * dm[:, 3:].sum(1)
    cols["framewise_displacement"] = np.r_[np.nan, fd]
    diff = np.diff(ts, axis=0)
    dvars = np.sqrt((diff**2).mean(1))
    q75, q25 = np.percentile(ts, [75, 25], axis=0)
    robust_sd = (q75 - q25) / 1.349
    expected = np.sqrt(2) * robust_sd.mean()
    cols["dvars"] = np.r_[np.nan, dvars]
    cols["std_dvars"] = np.r_[np.nan, dvars / expected if expected > 0 else dvars]
    cols["global_signal"] = ts.mean(1)
    # as fMRIPrep: thresholded tissue masks, eroded to keep grey-matter signal out
    wm = ndimage.binary_erosion(mask & (tpl.wm > 0.9))
    csf = ndimage.binary_erosion(mask & (tpl.csf > 0.5))
    if wm.sum() < 10:
        wm = mask & (tpl.wm >= np.percentile(tpl.wm[mask], 90))
    if csf.sum() < 10:
        csf = mask & (tpl.csf >= np.percentile(tpl.csf[mask], 95))
    cols["white_matter"] = data[wm].mean(0)
    cols["csf"] = data[csf].mean(0)
    noise = data[wm | csf].T.astype(np.float64)
    x = np.vstack([np.ones(t), np.linspace(-1, 1, t)]).T
    noise = noise - x @ np.linalg.lstsq(x, noise, rcond=None)[0]
    sd = noise.std(0)
    noise = noise[:, sd > 0] / sd[sd > 0]
    u, s, _ = np.linalg.svd(noise, full_matrices=False)
    var = s**2 / (s**2).sum()
    meta = {}
    for i in range(5):
        name = f"a_comp_cor_{i:02d}"
        cols[name] = u[:, i]
        meta[name] = {"Method": "aCompCor", "Mask": "combined", "Retained": True,
                      "SingularValue": float(s[i]), "VarianceExplained": float(var[i]),
                      "CumulativeVarianceExplained": float(var[: i + 1].sum())}
    df = pd.DataFrame(cols)
    for n in names:
        meta[n] = {"Description": "Simulated head-motion parameter (truth), relative to "
                   "the first volume", "Units": "mm" if n.startswith("trans") else "rad"}
    meta["framewise_displacement"] = {"Description": "Power et al. (2012), 50 mm radius",
                                      "Units": "mm"}
    return df, meta
