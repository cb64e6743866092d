"""fMRIPrep 23.x-shaped derivatives (and their raw BIDS dataset) for tests.

:func:`make_fmriprep_dataset` writes what fMRIPrep 23.2 leaves in its output
folder, with its names, grids, dtypes and table conventions, not those of
dpnbids' own writer:

``root/bids``
    A raw BIDS dataset the validator accepts: ``participants.tsv`` with a
    ``responder`` column (``n/a`` for unlabelled subjects), ``T1w`` and
    ``task-rest_bold`` (int16, 3 x 3 x 4 mm) with their sidecars.
``root/fmriprep``
    ``dataset_description.json`` (``GeneratedBy`` fMRIPrep 23.2.1), ``logs/``,
    ``sub-XX.html``, ``sub-XX/figures/``, the FreeSurfer look-up tables, the
    anatomical derivatives and, per run, the confounds TSV/JSON, the boldrefs,
    the transforms and, per output space, ``boldref``, ``desc-brain_mask`` and
    ``desc-preproc_bold`` (float32, zero outside the brain) with its JSON.

Layouts (output spaces; several may be written for one subject, and each
subject may have its own list so a cohort can mix grids):

``"res2"``
    ``space-MNI152NLin2009cAsym_res-2``: TemplateFlow's 97 x 115 x 97 grid at
    2 mm, origin (-96, -132, -78).
``"native"``
    ``space-MNI152NLin2009cAsym`` without ``res``: the BOLD's own 3 x 3 x 4 mm
    voxels over the template's field of view (65 x 77 x 49).
``"nlin6"``
    ``space-MNI152NLin6Asym_res-2``: FSL's 91 x 109 x 91 grid (x flipped).
``"cohort"``
    ``space-MNIPediatricAsym_cohort-1_res-2`` on a smaller 2 mm grid.
``"T1w"``
    ``space-T1w``: the subject's anatomical grid.

The signal is cheap but not trivial: an ellipsoidal brain with grey matter,
white matter and ventricles; a few networks of Gaussian blobs at
:func:`dpnbids.analysis.networks.load_network_coordinates` coordinates with
band-limited time courses (0.01-0.08 Hz); a responder effect on the
amplitude of ``effect_network``; non-steady-state volumes; motion spikes
that scale the whole brain on the high-FD volumes; a linear drift and noise.
Brain coordinates are taken as MNI millimetres on every grid (also
``space-T1w``), so one world-space model serves all layouts.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from dpnbids.analysis.networks import load_network_coordinates, render_gaussians
from dpnbids.nifti_io import save_nifti

FMRIPREP_VERSION = "23.2.1"
TEMPLATE = "MNI152NLin2009cAsym"
BOLD_ZOOMS = (3.0, 3.0, 4.0)

#: TemplateFlow's MNI152NLin2009cAsym res-2 grid (97 x 115 x 97).
RES2_AFFINE = np.array([[2.0, 0, 0, -96], [0, 2.0, 0, -132], [0, 0, 2.0, -78], [0, 0, 0, 1]])
RES2_SHAPE = (97, 115, 97)
#: FSL's MNI152NLin6Asym 2 mm grid (91 x 109 x 91).
NLIN6_AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])
NLIN6_SHAPE = (91, 109, 91)
#: MNI152NLin2009cAsym res-1 (the anatomical grid of an output space without ``res``).
RES1_AFFINE = np.array([[1.0, 0, 0, -96], [0, 1.0, 0, -132], [0, 0, 1.0, -78], [0, 0, 0, 1]])
RES1_SHAPE = (193, 229, 193)
#: The subject's (small) anatomical grid, 3 mm.
T1W_AFFINE = np.array([[3.0, 0, 0, -93], [0, 3.0, 0, -129], [0, 0, 3.0, -72], [0, 0, 0, 1]])
T1W_SHAPE = (63, 75, 62)
#: A plausible pediatric template grid, 2 mm.
COHORT_AFFINE = np.array([[2.0, 0, 0, -84], [0, 2.0, 0, -120], [0, 0, 2.0, -66], [0, 0, 0, 1]])
COHORT_SHAPE = (85, 101, 86)

#: Centre and semi-axes (mm) of the ellipsoidal brain in MNI space.
BRAIN_CENTRE = (0.0, -17.0, 12.0)
BRAIN_AXES = (68.0, 86.0, 68.0)
NETWORKS = ("default_mode", "visual", "sensorimotor", "fronto_parietal")


def native_grid(zooms=BOLD_ZOOMS) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape at ``zooms`` covering the res-2 template's world box.

    The box spans the centres of the first and last res-2 voxels
    (x -96..96, y -132..96, z -78..114 mm); the grid starts at the same
    corner and takes as many voxels as cover it: 65 x 77 x 49 at 3 x 3 x 4 mm.
    """
    zooms = np.asarray(zooms, dtype=float)
    extent = (np.asarray(RES2_SHAPE) - 1) * 2.0
    shape = tuple(int(n) for n in np.ceil(extent / zooms - 1e-9).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(zooms)
    affine[:3, 3] = RES2_AFFINE[:3, 3]
    return affine, shape


def layout_spec(layout: str) -> dict:
    """Entities and grid of one output-space layout (see the module docstring)."""
    if layout == "res2":
        return dict(space=TEMPLATE, cohort=None, res="2", affine=RES2_AFFINE, shape=RES2_SHAPE,
                    anat_affine=RES2_AFFINE, anat_shape=RES2_SHAPE)
    if layout == "native":
        affine, shape = native_grid()
        return dict(space=TEMPLATE, cohort=None, res=None, affine=affine, shape=shape,
                    anat_affine=RES1_AFFINE, anat_shape=RES1_SHAPE)
    if layout == "nlin6":
        return dict(space="MNI152NLin6Asym", cohort=None, res="2", affine=NLIN6_AFFINE,
                    shape=NLIN6_SHAPE, anat_affine=NLIN6_AFFINE, anat_shape=NLIN6_SHAPE)
    if layout == "cohort":
        return dict(space="MNIPediatricAsym", cohort="1", res="2", affine=COHORT_AFFINE,
                    shape=COHORT_SHAPE, anat_affine=COHORT_AFFINE, anat_shape=COHORT_SHAPE)
    if layout == "T1w":
        return dict(space="T1w", cohort=None, res=None, affine=T1W_AFFINE, shape=T1W_SHAPE,
                    anat_affine=None, anat_shape=None)
    raise ValueError(f"Unknown fMRIPrep fixture layout {layout!r}; expected one of "
                     "'res2', 'native', 'nlin6', 'cohort', 'T1w'.")


def space_entities(layout: str) -> str:
    """``space-<S>[_cohort-<c>][_res-<r>]`` of a layout, as fMRIPrep names its files."""
    spec = layout_spec(layout)
    out = f"space-{spec['space']}"
    if spec["cohort"]:
        out += f"_cohort-{spec['cohort']}"
    if spec["res"]:
        out += f"_res-{spec['res']}"
    return out


# ----------------------------------------------------------------- anatomy on a grid
def _axes_world(affine, shape):
    """World coordinate of each voxel index along each axis (diagonal affines)."""
    affine = np.asarray(affine, dtype=float)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))):
        raise ValueError("fixture grids have diagonal affines")
    return [affine[a, a] * np.arange(n) + affine[a, 3] for a, n in enumerate(shape)]


def _ellipsoid(affine, shape, centre, axes) -> np.ndarray:
    x, y, z = _axes_world(affine, shape)
    r2 = (((x - centre[0]) / axes[0]) ** 2)[:, None, None] \
        + (((y - centre[1]) / axes[1]) ** 2)[None, :, None] \
        + (((z - centre[2]) / axes[2]) ** 2)[None, None, :]
    return r2 <= 1.0


def tissues(affine, shape) -> dict[str, np.ndarray]:
    """Boolean ``brain``, ``GM``, ``WM`` and ``CSF`` masks of the ellipsoid model."""
    brain = _ellipsoid(affine, shape, BRAIN_CENTRE, BRAIN_AXES)
    wm = _ellipsoid(affine, shape, BRAIN_CENTRE, tuple(0.72 * a for a in BRAIN_AXES))
    csf = np.zeros(brain.shape, bool)
    for x in (-11.0, 11.0):
        csf |= _ellipsoid(affine, shape, (x, -8.0, 14.0), (7.0, 24.0, 10.0))
    wm &= ~csf
    gm = brain & ~wm & ~csf
    return {"brain": brain, "GM": gm, "WM": wm, "CSF": csf}


# ----------------------------------------------------------------- time courses
def band_limited(rng, n_volumes: int, tr: float, n: int, band=(0.01, 0.08)) -> np.ndarray:
    """``n`` unit-variance time courses with power only in ``band`` (Hz), shape (T, n)."""
    freqs = np.fft.rfftfreq(n_volumes, d=tr)
    spec = rng.standard_normal((freqs.size, n)) + 1j * rng.standard_normal((freqs.size, n))
    spec[(freqs < band[0]) | (freqs > band[1])] = 0
    if not np.any((freqs >= band[0]) & (freqs <= band[1])):
        spec[min(1, freqs.size - 1)] = 1.0
    tc = np.fft.irfft(spec, n=n_volumes, axis=0)
    tc -= tc.mean(axis=0)
    sd = tc.std(axis=0)
    return tc / np.where(sd > 0, sd, 1.0)


def _motion(rng, n_volumes, n_spikes):
    """Motion parameters (mm, rad) with ``n_spikes`` jumps; returns (params, spike frames)."""
    walk = np.cumsum(rng.normal(0, 0.012, (n_volumes, 6)), axis=0)
    walk[:, 3:] *= 0.02  # rotations in rad: 0.012 * 0.02 * 50 mm = 0.012 mm per step
    candidates = np.arange(4, n_volumes - 2)
    n_spikes = min(n_spikes, candidates.size)
    frames = np.sort(rng.choice(candidates, n_spikes, replace=False)) if n_spikes else \
        np.array([], int)
    for f in frames:
        jump = rng.choice([-1, 1], 6) * rng.uniform(0.3, 0.6, 6)
        jump[3:] *= 0.01
        walk[f:] += jump  # a sudden displacement that stays (FD spike at f)
    return walk, frames


def _fd(params):
    d = np.abs(np.diff(params, axis=0))
    fd = d[:, :3].sum(axis=1) + 50.0 * d[:, 3:].sum(axis=1)
    return np.concatenate([[np.nan], fd])


def _cosines(n_volumes, tr, cutoff=128.0):
    """fMRIPrep's ``cosine00``.. (nipype's DCT drift basis, without the constant)."""
    order = int(np.floor(2 * n_volumes * tr / cutoff))
    t = np.arange(n_volumes)
    cols = [np.sqrt(2.0 / n_volumes) * np.cos(np.pi / n_volumes * (t + 0.5) * k)
            for k in range(1, order)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_volumes, 0))


def _components(rng, n_volumes, n):
    q, _ = np.linalg.qr(rng.standard_normal((n_volumes, max(n, 1))))
    return q[:, :n]


# ----------------------------------------------------------------- subject model
class _Subject:
    """Everything that is shared by the spaces of one subject's run."""

    def __init__(self, label, responder, *, n_volumes, tr, rng, networks, effect_network,
                 effect_size, n_nonsteady, n_spikes, noise_sd):
        self.label = label
        self.responder = responder
        self.n_volumes = n_volumes
        self.tr = tr
        self.rng = rng
        self.networks = list(networks)
        self.tcs = band_limited(rng, n_volumes, tr, len(self.networks))
        amps = np.full(len(self.networks), 2.0)  # percent signal change
        if effect_network in self.networks and responder in (1, "1"):
            amps[self.networks.index(effect_network)] *= 1.0 + effect_size
        self.amps = amps
        self.n_nonsteady = int(n_nonsteady)
        self.motion, self.spike_frames = _motion(rng, n_volumes, n_spikes)
        self.noise_sd = noise_sd
        self.drift = np.linspace(-0.5, 0.5, n_volumes)  # percent

    def bold(self, affine, shape, coords, *, seed) -> tuple[np.ndarray, dict]:
        """(float32 4D BOLD, tissue masks) on one grid."""
        tis = tissues(affine, shape)
        # built as a C-ordered (t, z, y, x) array whose transpose is the Fortran-ordered
        # (x, y, z, t) series nibabel writes without copying; voxels in that order
        idx = np.flatnonzero(tis["brain"].T.ravel())
        baseline = np.zeros(shape, np.float32)
        baseline[tis["GM"]] = 700.0
        baseline[tis["WM"]] = 560.0
        baseline[tis["CSF"]] = 900.0
        vox = baseline.T.ravel()[idx]
        series = np.zeros((self.n_volumes, idx.size), np.float32)
        for k, name in enumerate(self.networks):
            blobs = render_gaussians(coords[name], affine, shape, sigma_mm=6.0).T.ravel()[idx]
            series += self.tcs[:, k].astype(np.float32)[:, None] * (self.amps[k] * blobs)[None]
        series += self.drift.astype(np.float32)[:, None]
        series *= np.float32(0.01)
        series += np.float32(1.0)
        scale = np.ones(self.n_volumes, np.float32)
        scale[:self.n_nonsteady] = np.array([1.6, 1.35, 1.15, 1.07])[:self.n_nonsteady]
        for f in self.spike_frames:
            scale[f] *= 1.04  # the brain jumps in intensity on a motion spike
        series *= scale[:, None]
        series *= vox[None, :]
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(series.shape, dtype=np.float32)
        noise *= np.float32(self.noise_sd)
        series += noise
        del noise
        data_t = np.zeros((self.n_volumes,) + tuple(shape)[::-1], np.float32)
        data_t.reshape(self.n_volumes, -1)[:, idx] = series
        return data_t.T, tis

    def confounds(self, data, tis, n_comp) -> tuple[pd.DataFrame, dict]:
        """fMRIPrep 23 confounds table and JSON from a (native-grid) series."""
        T = self.n_volumes
        cols: dict[str, np.ndarray] = {}

        def mean_in(mask):
            return data[mask].mean(axis=0).astype(float) if mask.any() else np.zeros(T)

        def expand(name, x):
            d = np.concatenate([[np.nan], np.diff(x)])
            cols[name] = x
            cols[f"{name}_derivative1"] = d
            cols[f"{name}_power2"] = x ** 2
            cols[f"{name}_derivative1_power2"] = d ** 2

        expand("global_signal", mean_in(tis["brain"]))
        expand("csf", mean_in(tis["CSF"]))
        expand("white_matter", mean_in(tis["WM"]))
        cols["csf_wm"] = mean_in(tis["CSF"] | tis["WM"])
        cols["tcompcor"] = mean_in(tis["GM"]) * 0.9
        inside = data[tis["brain"]].astype(np.float64)
        inside *= 1000.0 / np.median(inside.mean(axis=1))
        dv = np.sqrt(np.mean(np.diff(inside, axis=1) ** 2, axis=0))
        dvars = np.concatenate([[np.nan], dv])
        std_dvars = dvars / np.nanmedian(dvars[1 + self.n_nonsteady:] if
                                         T > 2 + self.n_nonsteady else dvars)
        cols["std_dvars"] = std_dvars
        cols["dvars"] = dvars
        fd = _fd(self.motion)
        cols["framewise_displacement"] = fd
        rmsd = np.concatenate([[np.nan], np.sqrt(np.mean(np.diff(self.motion[:, :3], axis=0)
                                                         ** 2, axis=1))])
        cols["rmsd"] = rmsd
        meta = {}
        for prefix, mask_name, method in (("t_comp_cor", None, "tCompCor"),
                                          ("c_comp_cor", "CSF", "aCompCor"),
                                          ("w_comp_cor", "WM", "aCompCor"),
                                          ("a_comp_cor", "combined", "aCompCor")):
            n = n_comp[prefix]
            comps = _components(self.rng, T, n)
            sv = np.sort(self.rng.uniform(5, 60, n + 3))[::-1]
            var = sv ** 2 / np.sum(sv ** 2)
            cum = np.cumsum(var)
            for i in range(n):
                cols[f"{prefix}_{i:02d}"] = comps[:, i]
                entry = {"CumulativeVarianceExplained": float(cum[i]), "Method": method,
                         "Retained": True, "SingularValue": float(sv[i]),
                         "VarianceExplained": float(var[i])}
                if mask_name:
                    entry["Mask"] = mask_name
                meta[f"{prefix}_{i:02d}"] = entry
            for j in range(3):  # fMRIPrep also lists the dropped components
                entry = {"CumulativeVarianceExplained": float(cum[n + j]), "Method": method,
                         "Retained": False, "SingularValue": float(sv[n + j]),
                         "VarianceExplained": float(var[n + j])}
                if mask_name:
                    entry["Mask"] = mask_name
                meta[f"dropped_{len([k for k in meta if k.startswith('dropped_')])}"] = entry
        cos = _cosines(T, self.tr)
        for i in range(cos.shape[1]):
            cols[f"cosine{i:02d}"] = cos[:, i]
        for i in range(self.n_nonsteady):
            spike = np.zeros(T)
            spike[i] = 1.0
            cols[f"non_steady_state_outlier{i:02d}"] = spike
        for k, name in enumerate(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")):
            expand(name, self.motion[:, k])
        flagged = np.flatnonzero((np.nan_to_num(fd) > 0.5) | (np.nan_to_num(std_dvars) > 1.5))
        for i, f in enumerate(flagged):
            spike = np.zeros(T)
            spike[f] = 1.0
            cols[f"motion_outlier{i:02d}"] = spike
        return pd.DataFrame(cols), meta


# ----------------------------------------------------------------- writing helpers
def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _nii(path: Path, data, affine, dtype, *, tr=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data).astype(dtype, copy=False), np.asarray(affine), None)
    img.set_data_dtype(dtype)
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    if tr is not None:
        img.header.set_xyzt_units("mm", "sec")
        zooms = img.header.get_zooms()
        img.header.set_zooms(zooms[:3] + (float(tr),))
    else:
        img.header.set_xyzt_units("mm")
    save_nifti(img, path)
    return path


def _anat_images(affine, shape) -> dict[str, tuple[np.ndarray, type]]:
    tis = tissues(affine, shape)
    t1 = np.zeros(shape, np.float32)
    t1[tis["GM"]] = 60.0
    t1[tis["WM"]] = 100.0
    t1[tis["CSF"]] = 25.0
    dseg = np.zeros(shape, np.uint8)
    dseg[tis["GM"]] = 1
    dseg[tis["WM"]] = 2
    dseg[tis["CSF"]] = 3
    return {"t1": (t1, np.float32), "mask": (tis["brain"].astype(np.uint8), np.uint8),
            "dseg": (dseg, np.uint8),
            **{lab: (tis[lab].astype(np.float32), np.float32) for lab in ("GM", "WM", "CSF")}}


_LUT_ASEG = "index\tname\n0\tUnknown\n2\tLeft-Cerebral-White-Matter\n3\tLeft-Cerebral-Cortex\n" \
            "4\tLeft-Lateral-Ventricle\n41\tRight-Cerebral-White-Matter\n" \
            "42\tRight-Cerebral-Cortex\n43\tRight-Lateral-Ventricle\n"
_LUT_APARC = _LUT_ASEG + "1001\tctx-lh-bankssts\n1002\tctx-lh-caudalanteriorcingulate\n" \
                         "2001\tctx-rh-bankssts\n2002\tctx-rh-caudalanteriorcingulate\n"


def _dataset_description(raw: Path) -> dict:
    return {
        "Name": "fMRIPrep - fMRI PREProcessing workflow",
        "BIDSVersion": "1.8.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "fMRIPrep", "Version": FMRIPREP_VERSION,
            "CodeURL": f"https://github.com/nipreps/fmriprep/archive/{FMRIPREP_VERSION}.tar.gz"}],
        "HowToAcknowledge": "Please cite our paper (https://doi.org/10.1038/s41592-018-0235-4), "
                            "and include the generated citation boilerplate within the Methods "
                            "section of the text.",
        "License": "This work is licensed under CC0",
        "DatasetLinks": {"raw": str(raw), "templateflow": "/home/fmriprep/.cache/templateflow"},
    }


# ----------------------------------------------------------------- the dataset
def make_fmriprep_dataset(root, *, subjects: dict | None = None, n_volumes: int = 110,
                          tr: float = 2.0, layouts=("res2", "native"), seed: int = 0,
                          unlabelled: str | None = None, n_runs: int = 1,
                          networks=NETWORKS, effect_network: str = "default_mode",
                          effect_size: float = 0.6, n_nonsteady=None, n_spikes=None,
                          n_compcor=None, noise_sd: float = 8.0,
                          drop_columns=()) -> dict:
    """Write a raw BIDS dataset and fMRIPrep 23.2-shaped derivatives under ``root``.

    Parameters
    ----------
    root : path
        ``root/bids`` and ``root/fmriprep`` are written.
    subjects : dict, optional
        Label (``"01"``) -> responder (1/0). Default: two of each.
    n_volumes, tr : int, float
    layouts : sequence of str, or dict label -> sequence of str
        Output spaces (module docstring); a dict gives each subject its own.
    seed : int
        One seed; every subject draws from it.
    unlabelled : str, optional
        Label of one more subject whose ``responder`` is ``n/a``.
    n_runs : int
        Runs per subject (``run-<n>`` entities when more than one).
    networks, effect_network, effect_size
        Networks rendered; the responders' amplitude of ``effect_network`` is
        multiplied by ``1 + effect_size``.
    n_nonsteady, n_spikes : int, optional
        Non-steady-state volumes (0-3) and motion spikes per run; default
        drawn per subject (0-3 and 1-4).
    n_compcor : dict, optional
        Prefix (``"a_comp_cor"``, ``"c_comp_cor"``, ``"w_comp_cor"``,
        ``"t_comp_cor"``) -> number of components; default drawn in 5-40; never
        more than half the volumes.
    noise_sd : float
        Thermal noise (intensity units; the grey-matter baseline is 700).
    drop_columns : sequence of str
        Confound columns left out (e.g. derivatives, to test their recomputation).

    Returns
    -------
    dict
        ``bids``, ``fmriprep`` (paths), ``tr``, ``n_volumes``, ``networks``,
        ``effect_network`` and ``subjects``: label -> dict with ``responder``,
        ``layouts``, ``n_nonsteady``, ``spike_frames``, ``runs`` (a list of
        dicts: ``confounds`` path, ``bold`` (layout -> path), ``mask``
        (layout -> path), ``raw_bold``).
    """
    root = Path(root)
    raw, deriv = root / "bids", root / "fmriprep"
    if subjects is None:
        subjects = {"01": 1, "02": 0, "03": 1, "04": 0}
    all_subjects = dict(subjects)
    if unlabelled is not None:
        all_subjects[unlabelled] = None
    coords_df = load_network_coordinates("seitzman")
    coords = {n: coords_df.loc[coords_df.network == n, ["x", "y", "z"]].to_numpy(float)
              for n in networks}
    nat_affine, nat_shape = native_grid()
    child_seeds = np.random.SeedSequence(seed).spawn(len(all_subjects))

    # ---- raw BIDS
    _json(raw / "dataset_description.json", {
        "Name": "dpnbids fMRIPrep fixture", "BIDSVersion": "1.8.0", "DatasetType": "raw",
        "License": "CC0", "Authors": ["dpnbids tests"]})
    (raw / "README").write_text("Synthetic raw data behind an fMRIPrep 23.2-shaped "
                                "derivatives fixture (dpnbids tests).\n")
    rows = ["participant_id\tresponder"]
    for label, resp in all_subjects.items():
        rows.append(f"sub-{label}\t{'n/a' if resp is None else int(resp)}")
    (raw / "participants.tsv").write_text("\n".join(rows) + "\n")
    _json(raw / "participants.json", {
        "responder": {"Description": "response to IV lidocaine",
                      "Levels": {"1": "responder", "0": "non-responder"}}})

    # ---- fMRIPrep top level
    _json(deriv / "dataset_description.json", _dataset_description(raw))
    (deriv / "logs").mkdir(parents=True, exist_ok=True)
    (deriv / "logs" / "CITATION.md").write_text(
        f"Results included in this manuscript come from preprocessing performed using "
        f"*fMRIPrep* {FMRIPREP_VERSION}.\n")
    (deriv / "desc-aseg_dseg.tsv").write_text(_LUT_ASEG)
    (deriv / "desc-aparcaseg_dseg.tsv").write_text(_LUT_APARC)

    anat_cache: dict[str, dict] = {}
    info_subjects = {}
    for (label, resp), sseed in zip(all_subjects.items(), child_seeds):
        rng = np.random.default_rng(sseed)
        sub_layouts = tuple(layouts.get(label, ("res2",)) if isinstance(layouts, dict)
                            else layouts)
        for lay in sub_layouts:
            layout_spec(lay)  # fail early on unknown names
        nns = int(rng.integers(0, 4)) if n_nonsteady is None else int(n_nonsteady)
        nsp = int(rng.integers(1, 5)) if n_spikes is None else int(n_spikes)
        ncc = {p: int(rng.integers(5, 41)) for p in ("t_comp_cor", "c_comp_cor",
                                                      "w_comp_cor", "a_comp_cor")}
        if n_compcor:
            ncc.update(n_compcor)
        ncc = {p: min(n, max(n_volumes // 2, 1)) for p, n in ncc.items()}  # <= half the run
        sub = f"sub-{label}"

        # raw anat + fMRIPrep anat
        t1_imgs = _anat_images(T1W_AFFINE, T1W_SHAPE)
        _nii(raw / sub / "anat" / f"{sub}_T1w.nii.gz", np.round(t1_imgs["t1"][0] * 10),
             T1W_AFFINE, np.int16)
        fa = deriv / sub / "anat"
        _nii(fa / f"{sub}_desc-preproc_T1w.nii.gz", *t1_imgs["t1"][:1], T1W_AFFINE, np.float32)
        _json(fa / f"{sub}_desc-preproc_T1w.json", {
            "SkullStripped": False, "Sources": [f"bids:raw:{sub}/anat/{sub}_T1w.nii.gz"]})
        _nii(fa / f"{sub}_desc-brain_mask.nii.gz", t1_imgs["mask"][0], T1W_AFFINE, np.uint8)
        _json(fa / f"{sub}_desc-brain_mask.json", {
            "Type": "Brain", "RawSources": [f"bids:raw:{sub}/anat/{sub}_T1w.nii.gz"]})
        _nii(fa / f"{sub}_dseg.nii.gz", t1_imgs["dseg"][0], T1W_AFFINE, np.uint8)
        for lab in ("GM", "WM", "CSF"):
            _nii(fa / f"{sub}_label-{lab}_probseg.nii.gz", t1_imgs[lab][0], T1W_AFFINE,
                 np.float32)
        templates_done = set()
        for lay in sub_layouts:
            spec = layout_spec(lay)
            if spec["space"] == "T1w":
                continue
            if spec["space"] not in templates_done:
                templates_done.add(spec["space"])
                for a, b in (("T1w", spec["space"]), (spec["space"], "T1w")):
                    (fa / f"{sub}_from-{a}_to-{b}_mode-image_xfm.h5").write_bytes(
                        b"\x89HDF\r\n\x1a\n" + b"\0" * 56)
            ent = space_entities(lay)
            if ent not in anat_cache:
                anat_cache[ent] = _anat_images(spec["anat_affine"], spec["anat_shape"])
            imgs = anat_cache[ent]
            _nii(fa / f"{sub}_{ent}_desc-preproc_T1w.nii.gz", imgs["t1"][0],
                 spec["anat_affine"], np.float32)
            _nii(fa / f"{sub}_{ent}_desc-brain_mask.nii.gz", imgs["mask"][0],
                 spec["anat_affine"], np.uint8)
            if spec["res"]:  # fMRIPrep writes dseg/probseg for each template space
                _nii(fa / f"{sub}_{ent}_dseg.nii.gz", imgs["dseg"][0], spec["anat_affine"],
                     np.uint8)
                for lab in ("GM", "WM", "CSF"):
                    _nii(fa / f"{sub}_{ent}_label-{lab}_probseg.nii.gz", imgs[lab][0],
                         spec["anat_affine"], np.float32)

        # figures and report
        fig = deriv / sub / "figures"
        fig.mkdir(parents=True, exist_ok=True)
        (fig / f"{sub}_desc-summary_T1w.html").write_text("<div>summary</div>\n")
        (fig / f"{sub}_dseg.svg").write_text(
            '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>\n')
        (deriv / f"{sub}.html").write_text(f"<html><body><h1>{sub}</h1></body></html>\n")

        runs = []
        spike_frames = []
        for run in range(1, n_runs + 1):
            model = _Subject(label, resp, n_volumes=n_volumes, tr=tr, rng=rng,
                             networks=networks, effect_network=effect_network,
                             effect_size=effect_size, n_nonsteady=nns, n_spikes=nsp,
                             noise_sd=noise_sd)
            spike_frames.append([int(f) for f in model.spike_frames])
            stem = f"{sub}_task-rest" + (f"_run-{run}" if n_runs > 1 else "")
            # native-grid series: raw BOLD, confounds, and the "native" layout
            nat, nat_tis = model.bold(nat_affine, nat_shape, coords,
                                      seed=int(rng.integers(2**31)))
            raw_bold = _nii(raw / sub / "func" / f"{stem}_bold.nii.gz", np.round(nat),
                            nat_affine, np.int16, tr=tr)
            _json(raw / sub / "func" / f"{stem}_bold.json", {
                "RepetitionTime": tr, "TaskName": "rest",
                "SliceTiming": [float(t) for t in
                                np.arange(nat_shape[2]) * (tr / nat_shape[2])]})
            table, meta = model.confounds(nat, nat_tis, ncc)
            table = table.drop(columns=[c for c in drop_columns if c in table.columns])
            meta = {k: v for k, v in meta.items() if k not in drop_columns}
            ff = deriv / sub / "func"
            ff.mkdir(parents=True, exist_ok=True)
            conf = ff / f"{stem}_desc-confounds_timeseries.tsv"
            table.to_csv(conf, sep="\t", na_rep="n/a", index=False)
            _json(conf.with_suffix(".json"), meta)
            ref = nat[..., nns:].mean(axis=3) if n_volumes > nns else nat.mean(axis=3)
            for desc in ("coreg", "hmc"):
                _nii(ff / f"{stem}_desc-{desc}_boldref.nii.gz", ref, nat_affine, np.float32)
            (ff / f"{stem}_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt").write_text(
                "#Insight Transform File V1.0\n#Transform 0\n"
                "Transform: MatrixOffsetTransformBase_double_3_3\n"
                "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0\nFixedParameters: 0 0 0\n")
            hmc = "".join(
                f"#Transform {i}\nTransform: MatrixOffsetTransformBase_double_3_3\n"
                f"Parameters: 1 0 0 0 1 0 0 0 1 {m[0]:.6f} {m[1]:.6f} {m[2]:.6f}\n"
                "FixedParameters: 0 0 0\n" for i, m in enumerate(model.motion))
            (ff / f"{stem}_from-orig_to-boldref_mode-image_desc-hmc_xfm.txt").write_text(
                "#Insight Transform File V1.0\n" + hmc)
            bolds, masks = {}, {}
            for lay in sub_layouts:
                spec = layout_spec(lay)
                if lay == "native":
                    data, tis = nat, nat_tis
                else:
                    data, tis = model.bold(spec["affine"], spec["shape"], coords,
                                           seed=int(rng.integers(2**31)))
                ent = space_entities(lay)
                _nii(ff / f"{stem}_{ent}_boldref.nii.gz",
                     data[..., nns:].mean(axis=3) if n_volumes > nns else data.mean(axis=3),
                     spec["affine"], np.float32)
                masks[lay] = _nii(ff / f"{stem}_{ent}_desc-brain_mask.nii.gz",
                                  tis["brain"].astype(np.uint8), spec["affine"], np.uint8)
                _json(ff / f"{stem}_{ent}_desc-brain_mask.json", {
                    "Type": "Brain",
                    "RawSources": [f"bids:raw:{sub}/func/{stem}_bold.nii.gz"]})
                bolds[lay] = _nii(ff / f"{stem}_{ent}_desc-preproc_bold.nii.gz", data,
                                  spec["affine"], np.float32, tr=tr)
                _json(ff / f"{stem}_{ent}_desc-preproc_bold.json", {
                    "RepetitionTime": tr, "TaskName": "rest", "SkullStripped": False,
                    "SliceTimingCorrected": True, "StartTime": round(tr / 2 - tr / nat_shape[2]
                                                                    / 2, 6),
                    "Sources": [f"bids:raw:{sub}/func/{stem}_bold.nii.gz",
                                f"bids::{sub}/func/{stem}_desc-hmc_boldref.nii.gz",
                                f"bids::{sub}/func/{stem}_desc-coreg_boldref.nii.gz",
                                f"bids::{sub}/func/"
                                f"{stem}_from-orig_to-boldref_mode-image_desc-hmc_xfm.txt",
                                f"bids::{sub}/func/"
                                f"{stem}_from-boldref_to-T1w_mode-image_desc-coreg_xfm.txt"]})
                del data
            runs.append({"confounds": conf, "bold": bolds, "mask": masks,
                         "raw_bold": raw_bold, "n_motion_outliers": int(sum(
                             c.startswith("motion_outlier") for c in table.columns))})
        info_subjects[label] = {"responder": resp, "layouts": sub_layouts, "n_nonsteady": nns,
                                "spike_frames": spike_frames, "n_compcor": ncc, "runs": runs}
    return {"bids": raw, "fmriprep": deriv, "tr": tr, "n_volumes": n_volumes,
            "networks": list(networks), "effect_network": effect_network,
            "subjects": info_subjects}
