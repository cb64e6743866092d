"""The final-model bundle: everything needed to score a new patient.

A bundle folder holds ``model.keras``, the group ICA maps and mask it was
trained against, and ``bundle.json`` (space, resolution, CNN grid, scaling,
selected components, input set, configuration, software versions and the
cross-validated performance).  It is written into a temporary folder and
renamed into place, so a killed run never leaves half a model.

``checksums.sha256`` (``sha256sum`` format) covers every other file of the
bundle. :func:`load_bundle` validates a bundle completely before it is used:
the checksums, the schema of ``bundle.json`` (keys and types), the shapes and
dtypes of the arrays and images, and that ``model.keras`` is a complete
archive. A damaged bundle is refused with :class:`BundleError`, naming the
file. A bundle without a checksums file (written by an older dpnbids) is still
accepted, with a warning, after the same content checks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpnbids.derivatives import replace_dir
from dpnbids.exceptions import BundleError, InputError, ModelMismatchError
from dpnbids.learn.scaling import ChannelScaler

LOGGER = logging.getLogger(__name__)

BUNDLE_VERSION = 1
CHECKSUMS = "checksums.sha256"
#: The files of a bundle, besides the checksums file.
BUNDLE_FILES = ("bundle.json", "model.keras", "group_maps.nii.gz", "group_mask.nii.gz",
                "scaling_support.npy")
#: Optional: the mean scaled training input, the saliency baseline (absent in older bundles).
BASELINE_FILE = "ig_baseline.npy"
#: Optional: the --covariates / --harmonize fits of the final model (bundle.json's
#: ``deconfounding`` describes them).
DECONFOUND_FILE = "deconfound.npz"


@dataclass
class Bundle:
    """A final model and everything needed to score a new patient with it.

    :func:`load_bundle` returns one read from a folder (``path``; ``group_maps_file`` and
    ``mask_file`` are the folder's files, the Keras model is loaded on first use);
    :meth:`save` writes one to a folder (``network``: the Keras model to save;
    ``group_maps_file`` and ``mask_file``: the images to copy in). ``scaling``: the input
    scaling; ``calibration``: the Platt scaling and operating threshold fitted on the
    final model's validation subjects (:class:`dpnbids.learn.train.FinalModel`);
    ``baseline`` (X, Y, Z, C), optional: the mean scaled training input, the saliency
    baseline of predictions; ``deconfounding``: the fitted
    :class:`dpnbids.learn.confounds.FoldDeconfounder`, or None; ``versions``: the software
    that trained the model (:func:`software_versions`).
    """

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
    scaling: ChannelScaler
    cv_metrics: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)
    baseline: np.ndarray | None = None
    deconfounding: object = None
    path: Path | None = None
    network: object = field(default=None, repr=False)

    @property
    def model(self):
        if self.network is None:
            import keras

            model_file = self.path / "model.keras"
            try:
                self.network = keras.saving.load_model(str(model_file), compile=False)
            except Exception as exc:  # noqa: BLE001 - keras raises many kinds for a bad file
                raise BundleError(
                    f"{model_file} could not be loaded as a Keras model ({type(exc).__name__}: "
                    f"{str(exc)[:300]}). The model file is damaged or was written by an "
                    "incompatible Keras; copy the model folder again or retrain it.") from None
        return self.network

    def save(self, out_dir) -> Path:
        """Write the bundle folder atomically (read back by :func:`load_bundle`); returns
        its path. ``versions``, when empty, are this process's (:func:`software_versions`)."""
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
        try:
            self.model.save(str(tmp / "model.keras"))
            shutil.copyfile(self.group_maps_file, tmp / "group_maps.nii.gz")
            shutil.copyfile(self.mask_file, tmp / "group_mask.nii.gz")
            np.save(tmp / "scaling_support.npy", self.scaling.support)
            if self.baseline is not None:
                np.save(tmp / BASELINE_FILE, np.asarray(self.baseline, dtype=np.float32))
            state = None if self.deconfounding is None else self.deconfounding.state()
            if state is not None:
                np.savez_compressed(tmp / DECONFOUND_FILE, **state[1])
            meta = json.loads(json.dumps(self._meta(state), default=str))  # as load reads it
            meta["binding"] = _bind(tmp, meta)
            (tmp / "bundle.json").write_text(json.dumps(meta, indent=2))
            _write_checksums(tmp)
            for p in tmp.iterdir():
                os.chmod(p, 0o644)
            os.chmod(tmp, 0o755)
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out_dir

    def _meta(self, deconfounding_state) -> dict:
        """bundle.json's content, without the binding digests."""
        return {"bundle_version": BUNDLE_VERSION, "input_set": self.input_set,
                "feature": self.feature, "space": self.space,
                "resolution": float(self.resolution), "n_components": int(self.n_components),
                "voxel_size": float(self.voxel_size),
                "grid_shape": [int(v) for v in self.grid_shape],
                "grid_affine": np.asarray(self.grid_affine, float).tolist(),
                "selected_components": self.selected_components,
                "scaling": self.scaling.to_json(), "cv_metrics": self.cv_metrics,
                "versions": self.versions or software_versions(), "config": self.config,
                "history": self.history or {}, "calibration": self.calibration or {},
                **({"deconfounding": deconfounding_state[0]}
                   if deconfounding_state is not None else {})}


def software_versions(dpnbids_version: str = "") -> dict:
    """The versions a bundle records: dpnbids's (given), Keras's, its backend and NumPy's."""
    import keras

    return {"dpnbids": dpnbids_version, "keras": keras.__version__,
            "keras_backend": keras.backend.backend(), "numpy": np.__version__}


#: A member that :meth:`Bundle.save` adds to model.keras: the digest of the parts the weights
#: were trained with (Keras ignores members it does not know).
BINDING_MEMBER = "dpnbids_binding.json"
#: The Keras archive member that holds the weights.
WEIGHTS_MEMBER = "model.weights.h5"
#: bundle.json keys that a prediction depends on besides the files.
_BOUND_KEYS = ("input_set", "feature", "n_components", "selected_components", "scaling",
               "calibration", "grid_shape", "grid_affine", "voxel_size")


def _parts_digest(folder: Path, meta: dict) -> str:
    """One digest of the group maps, mask, scaling support and the bound bundle.json keys."""
    digest = hashlib.sha256()
    for name in ("group_maps.nii.gz", "group_mask.nii.gz", "scaling_support.npy"):
        digest.update(f"{name}:{_sha256(folder / name)}\n".encode())
    bound = {k: meta.get(k) for k in _BOUND_KEYS}
    digest.update(json.dumps(bound, sort_keys=True).encode())
    return digest.hexdigest()


def _weights_digest(model_file: Path) -> str:
    with zipfile.ZipFile(model_file) as archive:
        return hashlib.sha256(archive.read(WEIGHTS_MEMBER)).hexdigest()


def _bind(folder: Path, meta: dict) -> dict:
    """Tie the weights to the maps, scaling and calibration: each side records the other."""
    parts = _parts_digest(folder, meta)
    with zipfile.ZipFile(folder / "model.keras", "a") as archive:
        archive.writestr(BINDING_MEMBER, json.dumps({"parts_sha256": parts}))
    return {"parts_sha256": parts, "weights_sha256": _weights_digest(folder / "model.keras"),
            "Description": "sha256 of the group maps, mask, scaling support and the scaling, "
                           "calibration and input keys of this file (parts_sha256, also "
                           f"stored in model.keras as {BINDING_MEMBER}), and of the "
                           f"weights ({WEIGHTS_MEMBER} inside model.keras)"}


def _check_binding(path: Path, meta: dict) -> None:
    """Refuse weights that do not belong to the maps, scaling and calibration beside them.

    Independent of checksums.sha256 (which a copy may lack or have regenerated)."""
    model_file = path / "model.keras"
    try:
        with zipfile.ZipFile(model_file) as archive:
            names = set(archive.namelist())
            embedded = json.loads(archive.read(BINDING_MEMBER)) \
                if BINDING_MEMBER in names else None
            weights = hashlib.sha256(archive.read(WEIGHTS_MEMBER)).hexdigest() \
                if WEIGHTS_MEMBER in names else None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _damaged(model_file, f"could not be read ({type(exc).__name__}: {exc})") from None
    if weights is None:
        raise _damaged(model_file, f"is not a Keras model archive (it has no {WEIGHTS_MEMBER})")
    binding = meta.get("binding")
    if binding is None and embedded is None:
        LOGGER.warning("%s was written by an older dpnbids without a binding digest: that its "
                       "weights belong to its maps, scaling and calibration cannot be "
                       "checked", path)
        return
    parts = _parts_digest(path, meta)
    if not isinstance(binding, dict) or binding.get("weights_sha256") != weights:
        raise BundleError(
            f"{model_file} holds weights that bundle.json of {path} does not record (its "
            "binding digest differs): the model file comes from another group run, or "
            "bundle.json does. Its predictions would use the wrong maps, scaling or "
            "calibration; copy the whole model folder of one group run (OUTPUT_DIR/group/model).")
    if binding.get("parts_sha256") != parts or not isinstance(embedded, dict) \
            or embedded.get("parts_sha256") != parts:
        raise BundleError(
            f"the group maps, mask, scaling or calibration in {path} are not those its "
            "weights were trained with (binding digest mismatch): a file was replaced by one "
            "from another group run. Copy the whole model folder of one group run "
            "(OUTPUT_DIR/group/model).")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksums(folder: Path) -> Path:
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS)
    target = folder / CHECKSUMS
    target.write_text("".join(f"{_sha256(folder / n)}  {n}\n" for n in names))
    return target


def _damaged(path: Path, what: str) -> BundleError:
    return BundleError(f"model file {path} {what}. The model folder is damaged or was edited; "
                       "copy it again from the group run (OUTPUT_DIR/group/model) or retrain.")


def _verify_checksums(path: Path) -> bool:
    """Check every file against checksums.sha256; False when the bundle has none."""
    sums = path / CHECKSUMS
    if not sums.exists():
        LOGGER.warning("%s has no %s (written by an older dpnbids): its files cannot be "
                       "verified against the checksums of the group run; checking their "
                       "contents only", path, CHECKSUMS)
        return False
    expected = {}
    for number, line in enumerate(sums.read_text(errors="replace").splitlines(), start=1):
        digest, sep, name = line.strip().partition("  ")
        if not line.strip():
            continue
        if not sep or len(digest) != 64 or not name or "/" in name:
            raise _damaged(sums, f"has a malformed line {number} ({line[:80]!r}; expected "
                                 "'<sha256>  <file name>')")
        expected[name] = digest.lower()
    for name in BUNDLE_FILES:
        if name not in expected:
            raise _damaged(sums, f"has no checksum for {name}")
    for name, digest in expected.items():
        file = path / name
        if not file.is_file():
            raise _damaged(file, "is listed in checksums.sha256 but does not exist")
        if _sha256(file) != digest:
            raise _damaged(file, "does not match its checksum in checksums.sha256 "
                                 f"(size now {file.stat().st_size} bytes)")
    return True


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and np.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _validate_meta(meta, file: Path) -> None:
    """Keys and types of bundle.json; raise BundleError naming the first problem."""
    def bad(key, expected):
        got = meta.get(key, None) if isinstance(meta, dict) else meta
        raise _damaged(file, f"has {key}={got!r} ({type(got).__name__}); expected {expected}")

    if not isinstance(meta, dict):
        raise _damaged(file, f"holds a {type(meta).__name__}; expected a JSON object")
    required = ("bundle_version", "input_set", "feature", "space", "resolution",
                "n_components", "voxel_size", "grid_shape", "grid_affine", "scaling")
    missing = [k for k in required if k not in meta]
    if missing:
        raise _damaged(file, f"lacks the key(s) {', '.join(missing)}")
    if not _is_int(meta["bundle_version"]):
        bad("bundle_version", "an integer")
    if meta["bundle_version"] != BUNDLE_VERSION:
        raise ModelMismatchError(f"{file.parent}: bundle version {meta['bundle_version']} is "
                                 f"not supported (expected {BUNDLE_VERSION}); retrain the "
                                 "model.")
    if meta["input_set"] not in ("ASC", "SSC"):
        bad("input_set", "'ASC' or 'SSC'")
    for key in ("feature", "space"):
        if not isinstance(meta[key], str) or not meta[key]:
            bad(key, "a non-empty string")
    for key in ("resolution", "voxel_size"):
        if not _is_number(meta[key]) or meta[key] <= 0:
            bad(key, "a positive number")
    if not _is_int(meta["n_components"]) or meta["n_components"] < 1:
        bad("n_components", "a positive integer")
    shape = meta["grid_shape"]
    if not (isinstance(shape, list) and len(shape) == 3
            and all(_is_int(v) and v > 0 for v in shape)):
        bad("grid_shape", "a list of 3 positive integers")
    affine = meta["grid_affine"]
    if not (isinstance(affine, list) and len(affine) == 4
            and all(isinstance(r, list) and len(r) == 4 and all(_is_number(v) for v in r)
                    for r in affine)):
        bad("grid_affine", "a 4x4 list of numbers")
    n = meta["n_components"]
    selected = meta.get("selected_components")
    if selected is not None and not (
            isinstance(selected, list) and selected
            and all(_is_int(c) and 0 <= c < n for c in selected)):
        bad("selected_components", f"null or a non-empty list of component indices 0..{n - 1}")
    scaling = meta["scaling"]
    if not isinstance(scaling, dict):
        bad("scaling", "an object with 'mean' and 'sd' lists")
    channels = len(selected) if selected is not None else n
    for key in ("mean", "sd"):
        values = scaling.get(key)
        if not (isinstance(values, list) and len(values) == channels
                and all(_is_number(v) for v in values)):
            raise _damaged(file, f"has scaling.{key}={values!r}; expected a list of "
                                 f"{channels} numbers (one per CNN input channel)")
    if any(v <= 0 for v in scaling["sd"]):
        raise _damaged(file, f"has scaling.sd={scaling['sd']!r}; expected positive numbers")
    for key in ("cv_metrics", "versions", "config", "history", "calibration"):
        if key in meta and not isinstance(meta[key], dict):
            bad(key, "an object")
    cal = meta.get("calibration") or {}
    if cal and not (_is_number(cal.get("slope")) and cal["slope"] > 0
                    and _is_number(cal.get("intercept"))
                    and _is_number(cal.get("threshold")) and 0 < cal["threshold"] < 1):
        raise _damaged(file, f"has calibration={cal!r}; expected a positive 'slope', an "
                             "'intercept' and a 'threshold' between 0 and 1")


def _validate_arrays(path: Path, meta: dict, *, verified: bool) -> np.ndarray:
    """Shapes and dtypes of the .npy file and the images; returns the scaling support.

    Without verified checksums the images are read in full and the Keras archive
    is tested member by member, so that a truncated file is still detected.
    """
    import nibabel as nib

    file = path / "scaling_support.npy"
    try:
        support = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _damaged(file, f"could not be read as a .npy array ({type(exc).__name__}: "
                             f"{exc})") from None
    if support.dtype != np.bool_ or support.shape != tuple(meta["grid_shape"]):
        raise _damaged(file, f"holds a {support.dtype} array of shape {support.shape}; expected "
                             f"bool of shape {tuple(meta['grid_shape'])} (the CNN grid)")
    shapes = {}
    for name, ndim in (("group_maps.nii.gz", 4), ("group_mask.nii.gz", 3)):
        file = path / name
        try:
            img = nib.load(str(file))
            # without checksums, read the whole file: that detects a truncated one
            shape = img.shape if verified else np.asanyarray(img.dataobj).shape
        except Exception as exc:  # noqa: BLE001 - nibabel, gzip and zlib raise many kinds
            raise _damaged(file, f"could not be read as a NIfTI image ({type(exc).__name__}: "
                                 f"{str(exc)[:200]})") from None
        if len(shape) != ndim:
            raise _damaged(file, f"is {len(shape)}D with shape {shape}; expected {ndim}D")
        shapes[name] = tuple(shape)
    maps, mask = shapes["group_maps.nii.gz"], shapes["group_mask.nii.gz"]
    if maps[3] != meta["n_components"]:
        raise _damaged(path / "group_maps.nii.gz",
                       f"holds {maps[3]} maps but bundle.json says n_components="
                       f"{meta['n_components']}")
    if maps[:3] != mask:
        raise _damaged(path / "group_mask.nii.gz",
                       f"has shape {mask} but the group maps are on a {maps[:3]} grid")
    file = path / "model.keras"
    try:
        with zipfile.ZipFile(file) as archive:
            broken = None if verified else archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _damaged(file, f"is not a complete Keras archive ({type(exc).__name__}: "
                             f"{exc})") from None
    if broken is not None:
        raise _damaged(file, f"is a damaged Keras archive (member {broken} fails its CRC)")
    return support


def load_bundle(path) -> Bundle:
    """Read and validate a bundle folder (the model itself is loaded lazily).

    Raises
    ------
    InputError
        The folder is not a bundle (files missing).
    BundleError
        A file is damaged: checksum mismatch, ``bundle.json`` not valid JSON or
        missing keys or holding wrong types, an array or image of the wrong
        shape or dtype, a truncated ``.npy``, image or ``model.keras``.
    ModelMismatchError
        An unsupported bundle version.
    """
    path = Path(path)
    missing = [n for n in BUNDLE_FILES if not (path / n).is_file()]
    if missing:
        raise InputError(f"{path} is not a dpnbids model folder: missing {', '.join(missing)}. "
                         "Pass the OUTPUT_DIR/group/model folder written by the group level.")
    verified = _verify_checksums(path)
    file = path / "bundle.json"
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _damaged(file, f"is not valid JSON ({exc})") from None
    _validate_meta(meta, file)
    scaling = ChannelScaler.from_json(meta["scaling"],
                                      _validate_arrays(path, meta, verified=verified))
    _check_binding(path, meta)
    return Bundle(path=path, group_maps_file=path / "group_maps.nii.gz",
                  mask_file=path / "group_mask.nii.gz", input_set=meta["input_set"],
                  feature=meta["feature"], space=meta["space"],
                  resolution=float(meta["resolution"]), n_components=int(meta["n_components"]),
                  voxel_size=float(meta["voxel_size"]), grid_shape=tuple(meta["grid_shape"]),
                  grid_affine=np.asarray(meta["grid_affine"]),
                  selected_components=meta.get("selected_components"), scaling=scaling,
                  cv_metrics=meta.get("cv_metrics", {}), versions=meta.get("versions", {}),
                  config=meta.get("config", {}), calibration=meta.get("calibration") or {},
                  history=meta.get("history") or {},
                  baseline=_load_baseline(path, meta),
                  deconfounding=_load_deconfounding(path, meta))


def _load_deconfounding(path: Path, meta: dict):
    """The stored --covariates / --harmonize fits, or None for a bundle without them."""
    info = meta.get("deconfounding")
    if not info:
        return None
    from dpnbids.learn.confounds import FoldDeconfounder

    file = path / DECONFOUND_FILE
    try:
        with np.load(file, allow_pickle=False) as arrays:
            return FoldDeconfounder.from_state(info, dict(arrays))
    except (OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise _damaged(file, f"could not be read as the model's covariate/harmonisation "
                             f"fits ({type(exc).__name__}: {exc})") from None


def _load_baseline(path: Path, meta: dict):
    """The stored saliency baseline, or None for a bundle written without one."""
    file = path / BASELINE_FILE
    if not file.is_file():
        return None
    try:
        base = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _damaged(file, f"could not be read as a .npy array ({type(exc).__name__}: "
                             f"{exc})") from None
    n_channels = len(meta["scaling"]["mean"])
    want = tuple(meta["grid_shape"]) + (n_channels,)
    if base.shape != want or base.dtype != np.float32:
        raise _damaged(file, f"holds a {base.dtype} array of shape {base.shape}; expected "
                             f"float32 of shape {want} (CNN grid x model channels)")
    return base


def check_compatible(bundle: Bundle, *, space=None, resolution=None, n_components=None,
                     grid_shape=None) -> None:
    """Raise ModelMismatchError naming the first field that differs."""
    checks = [("space (`output_space`)", space, bundle.space),
              ("resolution (`output_resolution`)", None if resolution is None
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


def predict(bundle: Bundle, maps_img, *, return_input=False, confounds=None,
            report=None) -> np.ndarray:
    """Probability of response from a subject's 4D stage-2 maps image (K volumes).

    A model trained with --covariates / --harmonize needs ``confounds``: a one-row
    :func:`dpnbids.learn.confounds.confound_table` of the subject. A site the model never
    saw is standardised with the pooled training estimates (docs/confounds.md) and listed
    in ``report["sites_unseen_in_training"]`` when ``report`` (a dict) is given."""
    import nibabel as nib

    from dpnbids.learn.model import resample_maps_to_grid

    img = nib.load(str(maps_img)) if not hasattr(maps_img, "dataobj") else maps_img
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim != 4 or data.shape[-1] != bundle.n_components:
        raise ModelMismatchError(f"the subject maps have {data.shape[-1] if data.ndim == 4 else 1}"
                                 f" components but the model expects {bundle.n_components}")
    mask = np.asarray(nib.load(str(bundle.mask_file)).dataobj) > 0.5
    if mask.shape != data.shape[:3]:
        raise ModelMismatchError(f"the subject maps grid {data.shape[:3]} differs from the "
                                 f"model's {mask.shape}; use the model's `output_resolution`")
    x, _ = resample_maps_to_grid(np.moveaxis(data, -1, 0)[None], img.affine, bundle.voxel_size,
                                 mask=mask)
    check_compatible(bundle, grid_shape=x.shape[1:4])
    if bundle.selected_components is not None:
        x = x[..., np.asarray(bundle.selected_components, dtype=int)]
    if bundle.deconfounding is not None:
        x = _deconfound_input(bundle, x, confounds, report)
    xs = bundle.scaling.transform(x)
    if return_input:
        return xs
    return np.asarray(bundle.model.predict(xs, verbose=0), dtype=float).ravel()


def decide(bundle: Bundle, raw_probability) -> dict:
    """Calibrated probability and decision of a raw network output with the bundle's
    calibration and threshold. A bundle saved before calibration existed gives the raw
    output and the 0.5 cut, and says so."""
    from dpnbids.learn.calibration import Platt, logit

    raw = float(np.asarray(raw_probability, dtype=float).ravel()[0])
    cal = bundle.calibration
    if not cal:
        return {"raw_score": raw, "probability": raw, "threshold": 0.5,
                "threshold_rule": "fixed:0.5", "calibrated": False,
                "responder": raw >= 0.5}
    prob = float(Platt.from_dict(cal)(logit([raw]))[0])
    threshold = float(cal["threshold"])
    return {"raw_score": raw, "probability": prob, "threshold": threshold,
            "threshold_rule": str(cal.get("threshold_rule", "")), "calibrated": True,
            "responder": prob >= threshold}


def _deconfound_input(bundle: Bundle, x, confounds, report):
    """The stored covariate/harmonisation fits applied to one subject's input."""
    fit = bundle.deconfounding
    needed = list(fit.covariates) + ([fit.harmonize] if fit.harmonize else [])
    if confounds is None or any(c not in confounds for c in needed):
        raise InputError(f"model {bundle.path} was trained with "
                         f"{fit.method()}; predicting needs the patient's "
                         f"{', '.join(needed)} (participants.tsv columns; mean_fd from the "
                         "participant level's confounds table).")
    x, unseen = fit.transform(x, table=confounds)
    if unseen:
        LOGGER.warning("site(s) %s not among the model's training sites %s: no site "
                       "correction (pooled estimates, docs/confounds.md)", unseen,
                       list(fit.channels_[0].combat.sites))
    if report is not None:
        report["sites_unseen_in_training"] = list(unseen)
    return x


def scaled_input(bundle: Bundle, maps_img, confounds=None) -> np.ndarray:
    """The model's input for a subject's 4D stage-2 maps: (1, X, Y, Z, C), scaled."""
    return predict(bundle, maps_img, return_input=True, confounds=confounds)
