"""Discovery of fMRIPrep derivatives (``--fmriprep-dir``).

File names are parsed with pybids' entity parser
(:func:`bids.layout.parse_file_entities` with the ``bids`` and
``derivatives`` configurations), without indexing the whole dataset.

Resolution matching
-------------------
fMRIPrep's ``res-`` label is a *template resolution index* (``res-2`` is
2 mm for MNI152NLin2009cAsym, but an index can mean another voxel size in
another template), while dpnbids writes ``res-<mm>`` (``2``, ``1p5``). So:

1. a file whose ``res`` label equals the requested one (a string label is
   used as given; a number in mm is written as dpnbids does: 2.0 -> ``2``,
   1.5 -> ``1p5``) is taken first, *if* its header voxel size equals the
   requested millimetres (when a number was given);
2. otherwise, the file (with any or no ``res`` label) whose header voxel
   size equals the requested millimetres (within 0.01 mm, isotropic) is
   taken;
3. with no resolution requested (the default), the resolution is the data's:
   the one ``desc-preproc_bold`` of the space is taken, with or without a
   ``res-`` label (fMRIPrep's default ``--output-spaces MNI152NLin2009cAsym``
   writes the BOLD at its own, often anisotropic, voxel size with no
   ``res-``); when several exist the finest is taken and the choice is logged.

Spaces are given as fMRIPrep spells them on its command line:
``NAME[:cohort-<label>][:res-<label>]`` (e.g. ``MNI152NLin2009cAsym:res-2``,
``MNIPediatricAsym:cohort-1``); see :func:`parse_space`. A ``res-`` given in
the space is matched as a label, exactly as ``--output-resolution`` with a
label would be.
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from dpnbids.derivatives import res_label
from dpnbids.exceptions import DimensionError, InputError

__all__ = ["find_fmriprep_inputs", "available_spaces", "parse_space"]

LOGGER = logging.getLogger(__name__)

_RUN_KEYS = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction",
             "direction", "run", "echo")
_ENTITY_SHORT = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq",
                 "ceagent": "ce", "reconstruction": "rec", "direction": "dir", "run": "run",
                 "echo": "echo", "space": "space", "cohort": "cohort", "res": "res"}
_ORDER = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction",
          "direction", "run", "echo", "space", "cohort", "res")
_COHORT_RE = re.compile(r"_cohort-([a-zA-Z0-9]+)(?=_)")
_SPACE_RE = re.compile(r"^([A-Za-z0-9]+)((?::(?:cohort|res)-[A-Za-z0-9]+)*)$")


def parse_space(spec: str) -> tuple[str, dict]:
    """Split fMRIPrep's space syntax into (template, {"cohort": .., "res": ..}).

    >>> parse_space("MNIPediatricAsym:cohort-1:res-2")
    ('MNIPediatricAsym', {'cohort': '1', 'res': '2'})
    >>> parse_space("MNI152NLin2009cAsym")
    ('MNI152NLin2009cAsym', {})
    """
    match = _SPACE_RE.match(str(spec or ""))
    if not match:
        raise InputError(
            f"`output_space` {spec!r} is not a space name. Expected a TemplateFlow "
            "identifier, optionally with fMRIPrep's modifiers, e.g. MNI152NLin2009cAsym, "
            "MNI152NLin2009cAsym:res-2 or MNIPediatricAsym:cohort-1.")
    mods = {}
    for part in match.group(2).split(":")[1:]:
        key, value = part.split("-", 1)
        mods[key] = value
    return match.group(1), mods
_VOXEL_TOL_MM = 0.01


def _parse(path: Path) -> dict:
    from bids.layout import parse_file_entities

    ents = parse_file_entities(str(path), config=["bids", "derivatives"])
    if "run" in ents and ents["run"] is not None:
        ents["run"] = int(ents["run"])
    cohort = _COHORT_RE.search(Path(path).name)  # a TemplateFlow entity pybids does not know
    ents["cohort"] = cohort.group(1) if cohort else None
    return ents


def _res_label(resolution) -> str | None:
    if resolution is None:
        return None
    if isinstance(resolution, str):
        return resolution[4:] if resolution.startswith("res-") else resolution
    return res_label(resolution)


def _voxel_mm(path: Path) -> tuple[float, ...]:
    try:
        zooms = nib.load(str(path)).header.get_zooms()[:3]
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{path} could not be read as a NIfTI image ({type(exc).__name__}: "
                         f"{exc}). Expected the image fMRIPrep wrote; restore it from the "
                         "fMRIPrep output or rerun fMRIPrep.") from None
    return tuple(round(float(z), 4) for z in zooms)


def _matches_mm(zooms, resolution) -> bool:
    return all(abs(z - float(resolution)) <= _VOXEL_TOL_MM for z in zooms)


def _name(ents: dict, desc: str, suffix: str, ext: str, *, with_space=True) -> str:
    parts = []
    for key in _ORDER:
        if key in ("space", "res") and not with_space:
            continue
        value = ents.get(key)
        if value is None:
            continue
        if key == "run":
            value = f"{int(value)}"
        parts.append(f"{_ENTITY_SHORT[key]}-{value}")
    return "_".join(parts + [f"desc-{desc}", suffix]) + ext


def _as_list(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple, set)):
        return [str(v) for v in value]
    return [str(value)]


def _check_dataset(root: Path) -> None:
    if not root.is_dir():
        raise InputError(f"`fmriprep_dir` {root} does not exist or is not a directory. "
                         "Expected the fMRIPrep output folder (the one holding "
                         "dataset_description.json and sub-*/ folders).")
    desc = root / "dataset_description.json"
    if not desc.exists():
        nested = [p.parent for p in (root / "fmriprep" / "dataset_description.json",)
                  if p.exists()]
        hint = (f" It contains {nested[0]}, which looks like the fMRIPrep folder: pass that."
                if nested else "")
        raise InputError(
            f"`fmriprep_dir` {root} is not an fMRIPrep derivatives dataset: it has no "
            f"dataset_description.json.{hint} Expected the folder fMRIPrep wrote "
            "(with dataset_description.json naming fMRIPrep in GeneratedBy).")
    try:
        info = json.loads(desc.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{desc} is not valid JSON ({exc}); fix or regenerate it.") from exc
    names = [str(g.get("Name", "")) for g in info.get("GeneratedBy", []) if isinstance(g, dict)]
    names.append(str(info.get("PipelineDescription", {}).get("Name", "")))
    names.append(str(info.get("Name", "")))  # e.g. "fMRIPrep - fMRI PREProcessing workflow"
    if not any("fmriprep" in n.lower() for n in names):
        warnings.warn(f"{desc} does not name fMRIPrep in GeneratedBy ({[n for n in names if n]});"
                      " reading it as fMRIPrep-compatible derivatives.", UserWarning,
                      stacklevel=3)


def _func_files(root: Path, subject: str) -> list[tuple[Path, dict]]:
    sub_dir = root / f"sub-{subject}"
    out = []
    for path in sorted(sub_dir.glob("**/func/*")):
        if path.is_file() and path.name.startswith(f"sub-{subject}_"):
            out.append((path, _parse(path)))
    return out


def _is_preproc_bold(ents: dict) -> bool:
    return (ents.get("suffix") == "bold" and ents.get("desc") == "preproc"
            and ents.get("extension") in (".nii.gz", ".nii"))


def _space_label(ents: dict) -> str:
    space = ents.get("space") or "(no space entity: native BOLD)"
    if ents.get("cohort"):
        space += f":cohort-{ents['cohort']}"
    return f"{space}:res-{ents['res']}" if ents.get("res") else space


def _zooms_text(zooms) -> str:
    return "x".join(f"{z:g}" for z in zooms) + " mm"


def available_spaces(fmriprep_dir, subject: str, task: str | None = None) -> list[str]:
    """``space[:res-label]`` values of the subject's ``desc-preproc_bold`` files."""
    files = _func_files(Path(fmriprep_dir), str(subject).removeprefix("sub-"))
    return sorted({_space_label(e) for _, e in files
                   if _is_preproc_bold(e) and (task is None or e.get("task") == task)})


def _pick_resolution(cands: list[tuple[Path, dict]], resolution, where: str):
    """One (path, entities) among same-space candidates (see the module docstring)."""
    label = _res_label(resolution)
    numeric = resolution is not None and not isinstance(resolution, str)
    zooms = {p: _voxel_mm(p) for p, _ in cands}
    if resolution is None:
        if len(cands) == 1:
            return cands[0]
        finest = min(cands, key=lambda c: (float(np.prod(zooms[c[0]])), max(zooms[c[0]]),
                                           c[0].name))
        LOGGER.info("%s: several resolutions exist (%s); taking the finest, %s. Pass "
                    "`output_resolution` to choose another.", where,
                    ", ".join(f"{p.name} [{_zooms_text(zooms[p])}]" for p, _ in cands),
                    finest[0].name)
        return finest
    by_label = [(p, e) for p, e in cands if e.get("res") == label]
    for p, e in by_label:
        if not numeric or _matches_mm(zooms[p], resolution):
            return p, e
    if numeric:
        by_size = [(p, e) for p, e in cands if _matches_mm(zooms[p], resolution)]
        if by_size:
            return by_size[0]
    return None


def find_fmriprep_inputs(fmriprep_dir, *, subject: str, task: str, space: str,
                         resolution=None, session=None, run=None) -> list[dict]:
    """fMRIPrep files of every run of one subject and task, in one space.

    Parameters
    ----------
    fmriprep_dir : str or Path
        fMRIPrep's output folder (holds ``dataset_description.json``).
    subject : str
        Label with or without ``sub-``.
    task : str
    space : str
        Space as fMRIPrep spells it (``--output-space``), e.g.
        ``MNI152NLin2009cAsym``, ``MNI152NLin2009cAsym:res-2`` or
        ``MNIPediatricAsym:cohort-1`` (:func:`parse_space`).
    resolution : float (mm), str (res label) or None
        See the module docstring; None (the default) takes the data's.
    session, run : str/int or list, optional
        Restrict to these sessions / runs.

    Returns
    -------
    list of dict
        One per run, sorted by session/run: ``bold``, ``bold_json`` (None when
        absent), ``mask``, ``confounds``, ``confounds_json`` (None when
        absent), ``voxel_size`` (mm, per axis), ``shape``, and ``entities``
        (subject, session, task, acquisition, run, ..., space, cohort, res;
        None where absent).

    Raises
    ------
    InputError
        Not an fMRIPrep dataset; no such subject or task; the space,
        resolution, mask or confounds missing (the message names the missing
        files, lists what exists for the subject and gives the flag to use).
    DimensionError
        A mask is not on its BOLD series' grid.
    """
    root = Path(str(fmriprep_dir))
    _check_dataset(root)
    template, mods = parse_space(space)
    if mods.get("res") is not None:
        if resolution is not None:
            raise InputError(f"`output_space` {space} names a resolution and "
                             f"`output_resolution` {resolution} gives another; pass one.")
        resolution = mods["res"]
    cohort = mods.get("cohort")
    subject = str(subject).removeprefix("sub-")
    files, bolds = _subject_bolds(root, subject, task, session, run)
    groups = defaultdict(list)
    for p, e in bolds:
        groups[tuple(e.get(k) for k in _RUN_KEYS)].append((p, e))
    index = {p: e for p, e in files}
    results, missing, other_res = [], [], []
    wanted = f"space-{template}" + (f" cohort-{cohort}" if cohort else "") + (
        f" at {resolution} mm" if resolution is not None and not isinstance(resolution, str)
        else f" res-{_res_label(resolution)}" if resolution else "")
    for key in sorted(groups, key=lambda k: tuple("" if v is None else str(v) for v in k)):
        in_space = [(p, e) for p, e in groups[key] if e.get("space") == template]
        cohorts = sorted({e.get("cohort") for _, e in in_space if e.get("cohort")})
        cands = [(p, e) for p, e in in_space if cohort is None or e.get("cohort") == cohort]
        run_ents = dict(zip(_RUN_KEYS, key))
        name = _name({**run_ents, "space": template, "cohort": cohort,
                      "res": _res_label(resolution)}, "preproc", "bold", ".nii.gz")
        if cohort is None and len(cohorts) > 1:
            raise InputError(
                f"{name}: space {template} exists for several cohorts ({cohorts}). Choose "
                f"one, e.g. `output_space` {template}:cohort-{cohorts[0]}.")
        picked = _pick_resolution(cands, resolution, name) if cands else None
        if picked is None:
            have = [f"{p.name} [{_zooms_text(_voxel_mm(p))}]" for p, _ in groups[key]]
            if cands:
                other_res.extend(have)
            missing.append(f"{name} ({wanted}); found instead: {have}")
            continue
        files_of_run = _run_files(root, *picked, run_ents, index)
        if isinstance(files_of_run, list):  # what is missing
            missing.extend(files_of_run)
            continue
        results.append(files_of_run)
    if missing:
        raise InputError(_missing_message(root, subject, task, template, cohort, wanted,
                                          missing, other_res, bolds))
    return results


def _subject_bolds(root: Path, subject: str, task: str, session, run):
    """(every func file with its entities, the desc-preproc_bold files of the task)."""
    if not (root / f"sub-{subject}").is_dir():
        subs = sorted(p.name for p in root.glob("sub-*") if p.is_dir())
        raise InputError(f"`fmriprep_dir` {root} has no sub-{subject} folder. Subjects "
                         f"there: {subs or 'none'}. Run fMRIPrep on this participant or "
                         "drop it from `participant_label`.")
    files = _func_files(root, subject)
    sessions = _as_list(session)
    runs_wanted = None if run is None else {int(r) for r in _as_list(run)}
    bolds = [(p, e) for p, e in files if _is_preproc_bold(e)]
    tasks = sorted({e.get("task") for _, e in bolds if e.get("task")})
    bolds = [(p, e) for p, e in bolds if e.get("task") == task
             and (sessions is None or e.get("session") in sessions)
             and (runs_wanted is None or e.get("run") in runs_wanted)]
    if not bolds:
        raise InputError(
            f"{root}: no desc-preproc_bold for sub-{subject}, task {task!r}"
            + (f", session(s) {sessions}" if sessions else "")
            + (f", run(s) {sorted(runs_wanted)}" if runs_wanted else "")
            + f". Tasks with desc-preproc_bold for this subject: {tasks or 'none'}. "
            "Check `task_id` / `session_label`, or run fMRIPrep on this task.")
    return files, bolds


def _run_files(root: Path, bold: Path, ents: dict, run_ents: dict, index: dict):
    """The files of one picked run (a dict, see :func:`find_fmriprep_inputs`), or the
    list of its missing mask/confounds files."""
    func_dir = bold.parent
    mask_names = [_name(ents, "brain", "mask", ext) for ext in (".nii.gz", ".nii")]
    mask = next((func_dir / n for n in mask_names if (func_dir / n) in index),
                func_dir / mask_names[0])
    conf_names = [_name(run_ents, "confounds", "timeseries", ".tsv", with_space=False),
                  _name(run_ents, "confounds", "regressors", ".tsv", with_space=False)]
    confounds = next((func_dir / n for n in conf_names if (func_dir / n) in index), None)
    problems = []
    if mask not in index:
        problems.append(str(mask.relative_to(root)))
    if confounds is None:
        problems.append(str((func_dir / conf_names[0]).relative_to(root)))
    if problems:
        return problems
    mask_img, bold_img = nib.load(str(mask)), nib.load(str(bold))
    if (mask_img.shape[:3] != bold_img.shape[:3]
            or not np.allclose(mask_img.affine, bold_img.affine, atol=1e-3)):
        raise DimensionError(
            f"{mask.name} (shape {mask_img.shape[:3]}) is not on the grid of {bold.name} "
            f"(shape {bold_img.shape[:3]}). Expected fMRIPrep's mask of the same space "
            "and resolution; re-run fMRIPrep or fix the file names.")
    bold_json = bold.with_name(bold.name.split(".", 1)[0] + ".json")
    conf_json = confounds.with_suffix(".json")
    entities = dict(run_ents)
    entities.update(space=ents.get("space"), cohort=ents.get("cohort"), res=ents.get("res"))
    return {**_reference_images(root, func_dir, ents, index), "bold": str(bold),
            "bold_json": str(bold_json) if bold_json.exists() else None,
            "mask": str(mask), "confounds": str(confounds),
            "confounds_json": str(conf_json) if conf_json.exists() else None,
            "voxel_size": _voxel_mm(bold),
            "shape": tuple(int(n) for n in bold_img.shape[:3]),
            "entities": entities}


def _reference_images(root: Path, func_dir: Path, ents: dict, index: dict) -> dict:
    """fMRIPrep's BOLD reference and T1w in the run's space (report backgrounds), or None."""
    space_ents = {k: ents.get(k) for k in ("space", "cohort", "res")}
    run_ents = {k: ents.get(k) for k in _RUN_KEYS}
    stem = _name({**run_ents, **space_ents}, "x", "x", "").rsplit("_desc-x", 1)[0]
    boldref = next((func_dir / f"{stem}_boldref{ext}" for ext in (".nii.gz", ".nii")
                    if (func_dir / f"{stem}_boldref{ext}") in index), None)
    t1w = None
    sub, ses = ents.get("subject"), ents.get("session")
    for folder, prefix in ((root / f"sub-{sub}" / f"ses-{ses}" / "anat", f"sub-{sub}_ses-{ses}"),
                           (root / f"sub-{sub}" / "anat", f"sub-{sub}")):
        if ses is None and "ses-" in str(folder):
            continue
        name = _name({"subject": None, **space_ents}, "preproc", "T1w", ".nii.gz")
        cand = folder / f"{prefix}_{name}"
        if cand.is_file():
            t1w = cand
            break
    return {"boldref": str(boldref) if boldref else None, "t1w_std": str(t1w) if t1w else None}


def _missing_message(root, subject, task, template, cohort, wanted, missing, other_res,
                     bolds) -> str:
    """What is missing, what exists, and the exact flags that select what exists."""
    spaces_here = sorted({_space_label(e) for _, e in bolds})
    head = (f"`fmriprep_dir` {root} lacks files dpnbids needs for sub-{subject}, task "
            f"{task!r} in {wanted}:\n  - " + "\n  - ".join(missing)
            + f"\nSpaces (with cohort/res labels) that exist for sub-{subject}, task "
            f"{task!r}: {spaces_here}. ")
    if other_res:
        # the space is there, at another resolution: say how to take it
        return head + ("The space exists at another resolution: drop `output_resolution` "
                       "to take the data's own (the finest when several exist), or pass "
                       "the res label or voxel size (mm) of one of the files listed above.")
    in_space = [e for _, e in bolds if e.get("space") == template
                and (cohort is None or e.get("cohort") == cohort)]
    if in_space:
        return head + "Re-run fMRIPrep on this subject to regenerate the missing files."
    flags = []
    for label in spaces_here:
        if label.startswith("("):
            continue
        name, _, rest = label.partition(":")
        mods = [m for m in rest.split(":") if m.startswith("cohort-")] if rest else []
        flags.append("`output_space` " + ":".join([name, *mods]))
    flags = sorted(set(flags))
    return head + (f"Pass one of them ({'; '.join(flags)})" if flags else
                   "None is a template space") + (
        f", or re-run fMRIPrep with `--output-spaces {template}` to add this space.")
