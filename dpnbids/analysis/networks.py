"""Resting-state network templates and the "spatial match to template" labels.

The templates are built from network coordinates that nilearn ships offline
(``nilearn/datasets/data``); nothing is downloaded.

Atlases
-------
``"seitzman"``
    Seitzman et al. (2018, NeuroImage 206:116290), 300 ROIs in MNI space with
    network labels (``seitzman_2018_ROIs_300inVol_MNI_allInfo.txt``). That ROI
    set has no cerebellar *network* (its cerebellar ROIs carry cortical network
    labels), so the ``cerebellar`` network is taken from the 18 ``cerebellum``
    ROIs of Dosenbach et al. (2010). ROIs labelled ``unassigned`` are dropped.
``"dosenbach"``
    Dosenbach et al. (2010, Science 329:1358), 160 ROIs
    (``dosenbach_2010.csv``).

Canonical network names (lower snake_case)
------------------------------------------
=========================  ==========================  ========================
canonical                  Seitzman 2018 ``netName``   Dosenbach 2010 network
=========================  ==========================  ========================
``auditory``               Auditory                    --
``cerebellar``             (from Dosenbach)            cerebellum
``cingulo_opercular``      CinguloOpercular            cingulo-opercular
``default_mode``           DefaultMode                 default
``dorsal_attention``       DorsalAttention             --
``fronto_parietal``        FrontoParietal              fronto-parietal
``medial_temporal_lobe``   MedialTemporalLobe          --
``parieto_medial``         ParietoMedial               --
``reward``                 Reward                      --
``salience``               Salience                    --
``sensorimotor``           SomatomotorDorsal,          sensorimotor
                           SomatomotorLateral
``ventral_attention``      VentralAttention            --
``visual``                 Visual                      occipital
=========================  ==========================  ========================

Templates
---------
A network's template is the voxel-wise **maximum** over its ROIs of an
isotropic Gaussian ``exp(-d^2 / (2 sigma^2))`` centred on each ROI (``d`` the
distance in mm), so every ROI centre has a value close to 1 (exactly 1 when it
falls on a voxel centre) and overlapping blobs do not add up. Gaussians are
cut at 4 sigma.

Matching
--------
:func:`match_networks` labels each component with the template of highest
Pearson correlation (components are assumed sign-flipped so that peaks are
positive, so r and not |r| is used) and reports the Dice coefficient between
the component's supra-threshold voxels (``|z| > threshold_z`` after z-scoring
the map across voxels) and the template's voxels at or above half its maximum.
A component whose best r is below ``min_r`` is ``"unmatched"``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from dpnbids.analysis.ica import zscore_rows
from dpnbids.exceptions import DimensionError, InputError
from dpnbids.templates import nilearn_data

ATLASES = ("seitzman", "dosenbach")

SEITZMAN_TO_CANONICAL = {
    "Auditory": "auditory",
    "CinguloOpercular": "cingulo_opercular",
    "DefaultMode": "default_mode",
    "DorsalAttention": "dorsal_attention",
    "FrontoParietal": "fronto_parietal",
    "MedialTemporalLobe": "medial_temporal_lobe",
    "ParietoMedial": "parieto_medial",
    "Reward": "reward",
    "Salience": "salience",
    "SomatomotorDorsal": "sensorimotor",
    "SomatomotorLateral": "sensorimotor",
    "VentralAttention": "ventral_attention",
    "Visual": "visual",
}

DOSENBACH_TO_CANONICAL = {
    "cerebellum": "cerebellar",
    "cingulo-opercular": "cingulo_opercular",
    "default": "default_mode",
    "fronto-parietal": "fronto_parietal",
    "occipital": "visual",
    "sensorimotor": "sensorimotor",
}

_TRUNCATE_SIGMAS = 4.0


@lru_cache(maxsize=4)
def _load(atlas: str) -> pd.DataFrame:
    dos = pd.read_csv(nilearn_data("dosenbach_2010.csv"))
    dos = pd.DataFrame({"x": dos["x"].astype(float), "y": dos["y"].astype(float),
                        "z": dos["z"].astype(float),
                        "network": dos["network"].map(DOSENBACH_TO_CANONICAL)})
    if atlas == "dosenbach":
        return dos.reset_index(drop=True)
    sz = pd.read_csv(nilearn_data("seitzman_2018_ROIs_300inVol_MNI_allInfo.txt"), sep=r"\s+")
    sz = sz[sz["netName"] != "unassigned"]
    unknown = sorted(set(sz["netName"]) - set(SEITZMAN_TO_CANONICAL))
    if unknown:  # pragma: no cover - guards against a changed nilearn file
        raise InputError(f"Unknown Seitzman network labels {unknown}; update "
                         "dpnbids.analysis.networks.SEITZMAN_TO_CANONICAL.")
    sz = pd.DataFrame({"x": sz["x"].astype(float), "y": sz["y"].astype(float),
                       "z": sz["z"].astype(float),
                       "network": sz["netName"].map(SEITZMAN_TO_CANONICAL)})
    cer = dos[dos["network"] == "cerebellar"]
    return pd.concat([sz, cer], ignore_index=True)


def load_network_coordinates(atlas: str = "seitzman") -> pd.DataFrame:
    """Network ROI coordinates shipped with nilearn, with canonical network names.

    Parameters
    ----------
    atlas : {"seitzman", "dosenbach"}
        See the module docstring for the label mapping.

    Returns
    -------
    pandas.DataFrame
        Columns ``x``, ``y``, ``z`` (MNI, mm) and ``network`` (canonical name).
    """
    if atlas not in ATLASES:
        raise InputError(f"Unknown network atlas {atlas!r}; expected one of {list(ATLASES)}.")
    return _load(atlas).copy()


def _grid(target) -> tuple[np.ndarray, tuple[int, int, int]]:
    if isinstance(target, (nib.spatialimages.SpatialImage,)):
        shape = tuple(int(s) for s in target.shape[:3])
        return np.asarray(target.affine, dtype=float), shape
    if isinstance(target, (str, Path)):
        img = nib.load(str(target))
        return np.asarray(img.affine, dtype=float), tuple(int(s) for s in img.shape[:3])
    if isinstance(target, tuple) and len(target) == 2:
        affine = np.asarray(target[0], dtype=float)
        shape = tuple(int(s) for s in target[1])
        if affine.shape != (4, 4) or len(shape) != 3:
            raise DimensionError(
                f"Expected (affine 4x4, shape of 3 ints); got affine {affine.shape} and "
                f"shape {shape}.")
        return affine, shape
    raise InputError(
        f"network_templates needs a reference image, a path to one, or (affine, shape); "
        f"got {type(target).__name__}.")


def render_gaussians(coords_mm: np.ndarray, affine: np.ndarray, shape: Sequence[int],
                     sigma_mm: float) -> np.ndarray:
    """Voxel-wise maximum of isotropic Gaussians (peak 1) at ``coords_mm`` on a grid.

    Parameters
    ----------
    coords_mm : ndarray, shape (n, 3)
        World coordinates (mm) of the centres.
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of the grid.
    shape : tuple of 3 int
    sigma_mm : float

    Returns
    -------
    ndarray of float32, shape ``shape``
    """
    shape = tuple(int(s) for s in shape)
    out = np.zeros(shape, dtype=np.float32)
    if sigma_mm <= 0:
        raise InputError(f"sigma_mm must be > 0; got {sigma_mm}.")
    inv = np.linalg.inv(affine)
    vox_size = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    radius_mm = _TRUNCATE_SIGMAS * sigma_mm
    # half-width of the box in voxels along each axis (conservative for oblique grids)
    half = np.ceil(radius_mm / vox_size.min()).astype(int)
    for c in np.asarray(coords_mm, dtype=float).reshape(-1, 3):
        centre = inv[:3, :3] @ c + inv[:3, 3]
        lo = np.maximum(np.floor(centre).astype(int) - half, 0)
        hi = np.minimum(np.ceil(centre).astype(int) + half + 1, shape)
        if np.any(hi <= lo):
            continue
        ii, jj, kk = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo, hi)), indexing="ij")
        vox = np.stack([ii, jj, kk], axis=-1).astype(float)
        world = vox @ affine[:3, :3].T + affine[:3, 3]
        d2 = ((world - c) ** 2).sum(axis=-1)
        g = np.exp(-d2 / (2.0 * sigma_mm**2)).astype(np.float32)
        g[d2 > radius_mm**2] = 0.0
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        np.maximum(out[sl], g, out=out[sl])
    return out


def network_templates(target_img_or_affine_shape, *, atlas: str = "seitzman",
                      networks: Sequence[str] | None = None, sigma_mm: float = 6.0,
                      mask=None) -> tuple[nib.Nifti1Image, list[str]]:
    """Gaussian-blob network templates rendered on any grid.

    Parameters
    ----------
    target_img_or_affine_shape : nibabel image, path, or (affine, shape)
        The grid to render on (only the first three dimensions are used).
    atlas : {"seitzman", "dosenbach"}
    networks : sequence of str, optional
        Canonical names to render, in this order. Default: every network of the
        atlas, sorted alphabetically.
    sigma_mm : float
        Gaussian standard deviation in mm.
    mask : nibabel image or ndarray of bool, optional
        Voxels outside the mask are set to 0 (same grid as the target).

    Returns
    -------
    templates : nibabel.Nifti1Image
        4D float32, one volume per network, each with values in [0, 1] and a
        peak close to 1 at the ROI centres.
    names : list of str
        Network name of each volume.
    """
    affine, shape = _grid(target_img_or_affine_shape)
    coords = load_network_coordinates(atlas)
    available = sorted(coords["network"].unique())
    if networks is None:
        names = available
    else:
        names = [str(n) for n in networks]
        missing = [n for n in names if n not in available]
        if missing or not names:
            raise InputError(
                f"Unknown network(s) {missing or names} for atlas {atlas!r}; "
                f"available: {available}.")
    mask_arr = None
    if mask is not None:
        mask_arr = np.asarray(mask.dataobj if hasattr(mask, "dataobj") else mask) > 0
        if mask_arr.shape != shape:
            raise DimensionError(
                f"The mask has shape {mask_arr.shape} but the target grid is {shape}; "
                "resample the mask onto the target grid.")
    vols = np.zeros(shape + (len(names),), dtype=np.float32)
    for i, name in enumerate(names):
        xyz = coords.loc[coords["network"] == name, ["x", "y", "z"]].to_numpy()
        vol = render_gaussians(xyz, affine, shape, sigma_mm)
        if mask_arr is not None:
            vol[~mask_arr] = 0.0
        vols[..., i] = vol
    img = nib.Nifti1Image(vols, affine)
    img.header.set_xyzt_units("mm")
    return img, names


def match_networks(components, templates, names: Sequence[str], *, threshold_z: float = 2.0,
                   min_r: float = 0.2) -> pd.DataFrame:
    """Label components with their best-matching network template.

    Parameters
    ----------
    components : array-like, shape (K, V)
        Component maps over the same V voxels as the templates, sign-flipped so
        that peaks are positive.
    templates : array-like, shape (N, V)
    names : sequence of N str
    threshold_z : float
        A component voxel is "in" the component when ``|z| > threshold_z``
        after z-scoring the map across its V voxels.
    min_r : float
        Components whose best Pearson r is below this are ``"unmatched"``.

    Returns
    -------
    pandas.DataFrame
        One row per component: ``component`` (0-based), ``network`` (best
        network name or ``"unmatched"``), ``spatial_r`` (Pearson r with the best
        template, also reported when unmatched), ``dice`` (Dice of the
        thresholded component and the template's half-maximum region),
        ``matched`` (bool).
    """
    comps = np.asarray(components, dtype=float)
    tpl = np.asarray(templates, dtype=float)
    names = [str(n) for n in names]
    if comps.ndim != 2 or tpl.ndim != 2:
        raise DimensionError(
            f"components and templates must be 2D (maps x voxels); got {comps.shape} and "
            f"{tpl.shape}.")
    if comps.shape[1] != tpl.shape[1]:
        raise DimensionError(
            f"components have {comps.shape[1]} voxels but templates have {tpl.shape[1]}; "
            "mask both with the same brain mask.")
    if len(names) != tpl.shape[0]:
        raise DimensionError(f"{len(names)} names for {tpl.shape[0]} templates.")
    if tpl.shape[0] == 0:
        raise InputError("No templates given.")
    zc = zscore_rows(comps)
    zt = zscore_rows(tpl)
    r = zc @ zt.T / comps.shape[1]  # (K, N)
    best = np.argmax(r, axis=1)
    best_r = r[np.arange(len(best)), best]
    comp_on = np.abs(zc) > threshold_z
    tmax = tpl.max(axis=1, keepdims=True)
    tpl_on = (tpl >= 0.5 * tmax) & (tmax > 0)
    inter = comp_on.astype(float) @ tpl_on.T.astype(float)  # (K, N)
    denom = comp_on.sum(axis=1)[:, None] + tpl_on.sum(axis=1)[None, :]
    dice_all = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 0.0)
    dice = dice_all[np.arange(len(best)), best]
    matched = best_r >= min_r
    return pd.DataFrame({
        "component": np.arange(comps.shape[0], dtype=int),
        "network": [names[b] if m else "unmatched" for b, m in zip(best, matched)],
        "spatial_r": best_r,
        "dice": dice,
        "matched": matched,
    })
