"""The final-model bundle: everything needed to score a new patient.

A bundle folder holds ``model.keras``, the group ICA maps and mask it was
trained against, and ``bundle.json`` (space, resolution, CNN grid, scaling,
selected components, input set, configuration, software versions and the
cross-validated performance).  It is written into a temporary folder and
renamed into place, so a killed run never leaves half a model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpnbids.exceptions import InputError, ModelMismatchError

BUNDLE_VERSION = 1


@dataclass
class Bundle:
    path: Path
    group_maps_file: Path
    mask_file: Path
    input_set: str
    feature: str
    space: str
    resolution: float
    n_components: int
    voxel_size: float
    grid_shape: tuple
    grid_affine: np.ndarray
    selected_components: list | None
    scaling: dict
    cv_metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    _model: object = None

    @property
    def model(self):
        if self._model is None:
            import keras

            self._model = keras.saving.load_model(str(self.path / "model.keras"), compile=False)
        return self._model


def _versions(dpnbids_version: str) -> dict:
    import keras

    return {"dpnbids": dpnbids_version, "keras": keras.__version__,
            "keras_backend": keras.backend.backend(), "numpy": np.__version__}


def save_bundle(out_dir, model, *, group_maps_file, mask_file, selected_components, grid_affine,
                grid_shape, scaling, input_set, feature, config, cv_metrics, space, resolution,
                n_components, voxel_size, history=None, dpnbids_version="") -> Path:
    """Write a bundle folder atomically; returns its path."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save(str(tmp / "model.keras"))
        shutil.copyfile(group_maps_file, tmp / "group_maps.nii.gz")
        shutil.copyfile(mask_file, tmp / "group_mask.nii.gz")
        np.save(tmp / "scaling_support.npy", np.asarray(scaling["support"], dtype=bool))
        meta = {"bundle_version": BUNDLE_VERSION, "input_set": input_set, "feature": feature,
                "space": space, "resolution": float(resolution),
                "n_components": int(n_components), "voxel_size": float(voxel_size),
                "grid_shape": [int(v) for v in grid_shape],
                "grid_affine": np.asarray(grid_affine, float).tolist(),
                "selected_components": selected_components,
                "scaling": {"mean": [float(v) for v in scaling["mean"]],
                            "sd": [float(v) for v in scaling["sd"]],
                            "method": "per-channel z-score over training brain voxels"},
                "cv_metrics": cv_metrics, "versions": _versions(dpnbids_version),
                "config": config, "history": history or {}}
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_bundle(path) -> Bundle:
    """Read a bundle folder (the model itself is loaded lazily)."""
    path = Path(path)
    needed = ["bundle.json", "model.keras", "group_maps.nii.gz", "group_mask.nii.gz",
              "scaling_support.npy"]
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        raise InputError(f"{path} is not a dpnbids model folder: missing {', '.join(missing)}. "
                         "Pass the OUTPUT_DIR/group/model folder written by the group level.")
    try:
        meta = json.loads((path / "bundle.json").read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path / 'bundle.json'} is not valid JSON ({exc})") from None
    if meta.get("bundle_version") != BUNDLE_VERSION:
        raise ModelMismatchError(f"{path}: bundle version {meta.get('bundle_version')} is not "
                                 f"supported (expected {BUNDLE_VERSION}); retrain the model.")
    scaling = dict(meta["scaling"])
    scaling["support"] = np.load(path / "scaling_support.npy")
    return Bundle(path=path, group_maps_file=path / "group_maps.nii.gz",
                  mask_file=path / "group_mask.nii.gz", input_set=meta["input_set"],
                  feature=meta["feature"], space=meta["space"],
                  resolution=float(meta["resolution"]), n_components=int(meta["n_components"]),
                  voxel_size=float(meta["voxel_size"]), grid_shape=tuple(meta["grid_shape"]),
                  grid_affine=np.asarray(meta["grid_affine"]),
                  selected_components=meta.get("selected_components"), scaling=scaling,
                  cv_metrics=meta.get("cv_metrics", {}), versions=meta.get("versions", {}),
                  config=meta.get("config", {}))


def check_compatible(bundle: Bundle, *, space=None, resolution=None, n_components=None,
                     grid_shape=None) -> None:
    """Raise ModelMismatchError naming the first field that differs."""
    checks = [("space (--output-space)", space, bundle.space),
              ("resolution (--output-resolution)", None if resolution is None
               else float(resolution), bundle.resolution),
              ("number of components", n_components, bundle.n_components),
              ("CNN grid shape", None if grid_shape is None else tuple(grid_shape),
               tuple(bundle.grid_shape))]
    for name, given, expected in checks:
        if given is not None and given != expected:
            raise ModelMismatchError(
                f"model {bundle.path} does not match the data: {name} is {expected!r} in the "
                f"model but {given!r} here. Rerun with the model's settings, or train a new "
                "model on data like these.")


def predict(bundle: Bundle, maps_img) -> np.ndarray:
    """Probability of response from a subject's 4D stage-2 maps image (K volumes)."""
    import nibabel as nib

    from dpnbids.model import resample_maps_to_grid

    img = nib.load(str(maps_img)) if not hasattr(maps_img, "dataobj") else maps_img
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 4 or data.shape[-1] != bundle.n_components:
        raise ModelMismatchError(f"the subject maps have {data.shape[-1] if data.ndim == 4 else 1}"
                                 f" components but the model expects {bundle.n_components}")
    mask = np.asarray(nib.load(str(bundle.mask_file)).dataobj) > 0.5
    if mask.shape != data.shape[:3]:
        raise ModelMismatchError(f"the subject maps grid {data.shape[:3]} differs from the "
                                 f"model's {mask.shape}; use the model's --output-resolution")
    x, _ = resample_maps_to_grid(np.moveaxis(data, -1, 0)[None], img.affine, bundle.voxel_size,
                                 mask=mask)
    check_compatible(bundle, grid_shape=x.shape[1:4])
    if bundle.selected_components is not None:
        x = x[..., np.asarray(bundle.selected_components, dtype=int)]
    from dpnbids.cv import apply_scaler

    xs = apply_scaler(x, bundle.scaling)
    return np.asarray(bundle.model.predict(xs, verbose=0), dtype=float).ravel()
