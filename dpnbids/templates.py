"""Offline access to standard-space templates through TemplateFlow.

TemplateFlow downloads on demand, which is impossible on an air-gapped HPC
node. dpnbids therefore:

1. honours ``TEMPLATEFLOW_HOME`` when the user (or the container) already has
   templates there;
2. otherwise seeds a TemplateFlow-layout folder with ``MNI152NLin2009aSym``
   from the copy of the ICBM 2009a symmetric template that nilearn ships
   (T1w, brain mask, GM/WM/CSF probability maps at 1 mm, plus 2 mm versions
   resampled once and cached);
3. never downloads anything: a template that is not present locally is an
   :class:`~dpnbids.exceptions.InputError` that lists what *is* available.

Resolutions other than the stored ones are produced by resampling the 1 mm
image and cached as ``res-<mm>mm`` files next to the originals.
"""

from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np

from dpnbids.derivatives import atomic_write_text, write_nifti
from dpnbids.exceptions import InputError

DEFAULT_SPACE = "MNI152NLin2009aSym"
_NILEARN_SPACE = "MNI152NLin2009aSym"
_SUFFIXES = {
    "T1w": ("T1w", None, None),
    "mask": ("mask", "brain", None),
    "GM": ("probseg", None, "GM"),
    "WM": ("probseg", None, "WM"),
    "CSF": ("probseg", None, "CSF"),
}


def templateflow_home() -> Path:
    """Return the TemplateFlow home used by dpnbids (not necessarily existing yet)."""
    env = os.environ.get("TEMPLATEFLOW_HOME")
    if env:
        return Path(env)
    return Path(os.environ.get("DPNBIDS_CACHE", Path.home() / ".cache" / "dpnbids")) / "templateflow"


def _res_label(resolution: float) -> str:
    """TemplateFlow's file-name label ('01', '02', '1p5mm'), not a BIDS derivative's
    ``res-`` label (:func:`dpnbids.derivatives.res_label`): TemplateFlow zero-pads."""
    resolution = float(resolution)
    if resolution.is_integer():
        return f"{int(resolution):02d}"
    return f"{resolution:g}mm".replace(".", "p")


def template_filename(space: str, resolution: float, kind: str) -> str:
    """TemplateFlow file name for ``kind`` in {'T1w','mask','GM','WM','CSF'}."""
    if kind not in _SUFFIXES:
        raise ValueError(f"Unknown template kind {kind!r}; expected one of {sorted(_SUFFIXES)}")
    suffix, desc, label = _SUFFIXES[kind]
    parts = [f"tpl-{space}", f"res-{_res_label(resolution)}"]
    if label:
        parts.append(f"label-{label}")
    if desc:
        parts.append(f"desc-{desc}")
    return "_".join(parts) + f"_{suffix}.nii.gz"


def nilearn_data(name: str) -> Path:
    """A file of the data folder nilearn ships (the MNI template, network coordinates)."""
    from importlib.util import find_spec

    # locate nilearn's data folder without importing nilearn.datasets (slow: sklearn)
    spec = find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise InputError("nilearn is not installed; it ships the offline MNI template and "
                         "network coordinates dpnbids needs. "
                         "Install nilearn >= 0.10.")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.exists():
        raise InputError(
            f"The file {path} is missing from the installed nilearn; "
            "expected nilearn >= 0.10, which ships it offline. Reinstall nilearn.")
    return path


def _seed_nilearn_mni(home: Path) -> None:
    """Write the 1 mm MNI152NLin2009aSym files from nilearn's copy."""
    tdir = home / f"tpl-{_NILEARN_SPACE}"
    t1 = nib.load(nilearn_data("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    gm = nib.load(nilearn_data("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"))
    wm = nib.load(nilearn_data("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))
    t1d = np.asarray(t1.dataobj, dtype=np.float32)
    gmd = np.asarray(gm.dataobj, dtype=np.float32)
    wmd = np.asarray(wm.dataobj, dtype=np.float32)
    # nilearn stores probabilities scaled to 0-255 in uint8
    if gmd.max() > 1.5:
        gmd /= 255.0
    if wmd.max() > 1.5:
        wmd /= 255.0
    # Brain mask: same rule as nilearn.datasets.load_mni152_brain_mask (T1 > 0.2 of
    # its max after nilearn's rescale), then restricted to tissue so the skull
    # and scalp are excluded, and holes filled.
    from scipy import ndimage

    t1n = t1d / t1d.max()
    tissue = (gmd + wmd) > 0.1
    head = t1n > 0.2
    mask = ndimage.binary_closing(tissue & head, iterations=2)
    mask = ndimage.binary_fill_holes(mask)
    # CSF: inside the brain mask, dark on T1w and not GM/WM.
    csfd = np.clip(mask.astype(np.float32) - gmd - wmd, 0, 1) * (t1n < 0.45)
    csfd = ndimage.gaussian_filter(csfd, 0.5)
    header = t1.header.copy()
    header.set_data_dtype(np.float32)
    files = {
        "T1w": t1d,
        "mask": mask.astype(np.uint8),
        "GM": gmd,
        "WM": wmd,
        "CSF": csfd.astype(np.float32),
    }
    for kind, data in files.items():
        img = nib.Nifti1Image(data, t1.affine)
        img.set_data_dtype(np.uint8 if kind == "mask" else np.float32)
        img.header.set_xyzt_units("mm")
        write_nifti(img, tdir / template_filename(_NILEARN_SPACE, 1, kind))
    desc = tdir / "template_description.json"
    if not desc.exists():
        atomic_write_text(desc,
            '{"Identifier": "MNI152NLin2009aSym", "Name": "ICBM 2009a Nonlinear Symmetric",'
            ' "Authors": ["Fonov V", "Evans AC", "Collins DL"],'
            ' "ReferencesAndLinks": ["doi:10.1016/j.neuroimage.2010.07.033"],'
            ' "res": {"01": {"origin": [-98, -134, -72], "shape": [197, 233, 189], "zooms": [1, 1, 1]}},'
            ' "Note": "Seeded offline by dpnbids from the copy shipped with nilearn."}'
        )


def _resample_to_resolution(src: Path, dst: Path, resolution: float, kind: str) -> None:
    from nilearn.image import resample_img

    img = nib.load(src)
    zooms = np.array(img.header.get_zooms()[:3], dtype=float)
    shape = np.array(img.shape[:3])
    extent = zooms * shape
    new_shape = np.ceil(extent / resolution).astype(int)
    affine = img.affine.copy()
    affine[:3, :3] = np.diag([resolution] * 3)
    interp = "nearest" if kind == "mask" else "continuous"
    out = resample_img(
        img,
        target_affine=affine,
        target_shape=tuple(int(s) for s in new_shape),
        interpolation=interp,
        force_resample=True,
        copy_header=True,
    )
    data = np.asarray(out.dataobj)
    if kind == "mask":
        data = (data > 0.5).astype(np.uint8)
    else:
        data = data.astype(np.float32)
    new = nib.Nifti1Image(data, out.affine)
    new.header.set_xyzt_units("mm")
    write_nifti(new, dst)


def _usable(path: Path) -> bool:
    """A real image file: TemplateFlow's offline skeleton holds zero-byte placeholders."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _writable_template_dir(tdir: Path) -> Path:
    """``tdir`` if we may write there, else a per-user cache (read-only TEMPLATEFLOW_HOME,
    e.g. a shared site installation or a container's image layer)."""
    probe = tdir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if os.access(probe, os.W_OK):
        return tdir
    for base in (Path(os.environ.get("DPNBIDS_CACHE", Path.home() / ".cache" / "dpnbids")),
                 Path(tempfile.gettempdir()) / f"dpnbids-{os.getuid()}"):
        cand = base / "templateflow" / tdir.name
        try:
            cand.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(cand, os.W_OK):
            return cand
    raise InputError(f"Cannot write resampled templates: {tdir} is read-only and no writable "
                     "cache was found. Set DPNBIDS_CACHE to a writable folder.")


def available_spaces() -> list[str]:
    """Template identifiers present locally (after seeding the default)."""
    home = templateflow_home()
    spaces = {DEFAULT_SPACE}
    if home.is_dir():
        spaces.update(p.name[4:] for p in home.glob("tpl-*") if p.is_dir())
    return sorted(spaces)


def get_template(space: str = DEFAULT_SPACE, resolution: float = 2.0, kind: str = "T1w") -> Path:
    """Path to a template image, seeding or resampling offline when needed.

    Parameters
    ----------
    space : str
        TemplateFlow identifier, e.g. ``MNI152NLin2009aSym``.
    resolution : float
        Isotropic voxel size in mm.
    kind : {'T1w', 'mask', 'GM', 'WM', 'CSF'}
        Which image.

    Raises
    ------
    InputError
        When the space is neither the built-in default nor present under
        ``TEMPLATEFLOW_HOME``.
    """
    if not re.fullmatch(r"[A-Za-z0-9]+", space or ""):
        raise InputError(f"Invalid template space {space!r}: expected a TemplateFlow identifier "
                         f"such as {DEFAULT_SPACE}.")
    if resolution <= 0:
        raise InputError(f"Invalid output resolution {resolution} mm: expected a positive number such as 2.")
    home = templateflow_home()
    tdir = home / f"tpl-{space}"
    target = tdir / template_filename(space, resolution, kind)
    if _usable(target):
        return target
    cache = _writable_template_dir(tdir)
    cached = cache / template_filename(space, resolution, kind)
    if _usable(cached):
        return cached
    # TemplateFlow's own names for the probseg/mask can vary (e.g. desc-brain_mask vs
    # label-brain_mask); accept the common alternatives.
    alt = _find_alternative(tdir, space, resolution, kind)
    if alt is not None:
        return alt
    one_mm = tdir / template_filename(space, 1, kind)
    if not _usable(one_mm):
        alt1 = _find_alternative(tdir, space, 1, kind)
        if alt1 is not None:
            one_mm = alt1
        elif space == _NILEARN_SPACE:
            one_mm = cache / template_filename(space, 1, kind)
            if not _usable(one_mm):
                _seed_nilearn_mni(cache.parent)
        else:
            raise InputError(
                f"Template {space} ({kind}) is not available offline under TEMPLATEFLOW_HOME={home}. "
                f"Available spaces: {', '.join(available_spaces())}. "
                "Either use `output_space` MNI152NLin2009aSym (always available), or pre-fetch the "
                "template with `python -c \"import templateflow.api as t; t.get('" + space + "')\"` on a "
                "machine with internet and point TEMPLATEFLOW_HOME at that folder."
            )
    if float(resolution) == 1.0:
        return one_mm
    _resample_to_resolution(one_mm, cached, float(resolution), kind)
    return cached


def _find_alternative(tdir: Path, space: str, resolution: float, kind: str) -> Path | None:
    if not tdir.is_dir():
        return None
    res = _res_label(resolution)
    patterns = {
        "T1w": [f"tpl-{space}_res-{res}_T1w.nii.gz"],
        "mask": [f"tpl-{space}_res-{res}_desc-brain_mask.nii.gz", f"tpl-{space}_res-{res}_label-brain_mask.nii.gz"],
        "GM": [f"tpl-{space}_res-{res}_label-GM_probseg.nii.gz"],
        "WM": [f"tpl-{space}_res-{res}_label-WM_probseg.nii.gz"],
        "CSF": [f"tpl-{space}_res-{res}_label-CSF_probseg.nii.gz"],
    }[kind]
    for pat in patterns:
        hits = sorted(h for h in tdir.glob(pat) if _usable(h))
        if hits:
            return hits[0]
    return None


def load_template(space: str = DEFAULT_SPACE, resolution: float = 2.0, kind: str = "T1w") -> nib.Nifti1Image:
    """A template image held in memory (cached per TemplateFlow home). See :func:`get_template`.

    The voxels are read once: a cached image never points at a file that has since been
    replaced or removed (a per-run TEMPLATEFLOW_HOME, a cleaned cache)."""
    return _load_template(str(templateflow_home()), space, float(resolution), kind)


@lru_cache(maxsize=32)
def _load_template(home: str, space: str, resolution: float, kind: str) -> nib.Nifti1Image:
    img = nib.load(get_template(space, resolution, kind))
    return nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)


def seed_templateflow(home: Path | None = None, resolutions: tuple[float, ...] = (1.0, 2.0)) -> Path:
    """Populate ``home`` (default :func:`templateflow_home`) for offline use; used by the Dockerfile."""
    if home is not None:
        os.environ["TEMPLATEFLOW_HOME"] = str(home)
    for res in resolutions:
        for kind in _SUFFIXES:
            get_template(DEFAULT_SPACE, res, kind)
    return templateflow_home()
