"""Run-level inputs without image data: fMRIPrep runs and our own participant outputs.

* the repetition time and temporal degrees of freedom of an fMRIPrep run
  (:func:`fmriprep_run_tr`, :func:`fmriprep_run_dof`), for the participant
  level's input checks;
* the participant level's outputs as the group level reads them: one
  :class:`RunFiles` per run (denoised series, mask, derivative source name),
  and each run's temporal degrees of freedom from its confounds table and
  sidecar.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from dpnbids.derivatives import DerivativesWriter, sibling
from dpnbids.exceptions import InputError


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
    from dpnbids.derivatives import build_name, res_label, split_bids_name

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
            mask = sibling(den, desc="brain", suffix="mask")
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
            "(with the same `output_space` and `task_id`).")
    spaces = sorted({_space_of(r.extra["entities"]) for r in runs})
    if len(spaces) > 1:
        raise InputError(f"participant outputs in {output_dir} are in several cohorts of "
                         f"{template} ({spaces}); choose one with `output_space`, e.g. "
                         f"`output_space` {spaces[0]}.")
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


def run_dof_from_outputs(run: RunFiles, config):
    """:class:`~dpnbids.preproc.dof.RunDof` of a participant-level output, from its
    confounds TSV and the denoised series' JSON sidecar (no image is read)."""
    from dpnbids.preproc.confounds import read_confounds
    from dpnbids.preproc.dof import run_dof
    from dpnbids.preproc.denoise import censor_mask

    sidecar = sibling(run.denoised, extension=".json")
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


def fmriprep_run_tr(run: dict) -> float:
    """Repetition time of an fMRIPrep run: its JSON sidecar, else the NIfTI header."""
    import json

    import nibabel as nib

    from dpnbids.preproc.checks import TR_RANGE_S

    if run.get("bold_json"):
        sidecar = Path(run["bold_json"])
        try:
            meta = json.loads(sidecar.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{sidecar} is not valid JSON ({exc}). Expected the BOLD sidecar "
                             "fMRIPrep wrote; restore it from the fMRIPrep output.") from None
        if not isinstance(meta, dict) or meta.get("RepetitionTime") is None:
            raise InputError(f"{sidecar} has no RepetitionTime. fMRIPrep writes it in every "
                             "BOLD sidecar; add \"RepetitionTime\" (seconds) or restore the "
                             "file from the fMRIPrep output.")
        from dpnbids.preproc.checks import sidecar_repetition_time

        return sidecar_repetition_time(meta["RepetitionTime"], name=Path(run["bold"]).name)
    tr = float(nib.load(run["bold"]).header["pixdim"][4])
    if not TR_RANGE_S[0] <= tr <= TR_RANGE_S[1]:
        raise InputError(f"{Path(run['bold']).name} has no RepetitionTime (no JSON sidecar "
                         f"and header pixdim[4] = {tr:g}); add the sidecar fMRIPrep wrote.")
    return tr


def fmriprep_run_dof(config, run: dict):
    """:class:`~dpnbids.preproc.dof.RunDof` of one fMRIPrep run, from its confounds."""
    from dpnbids.preproc.confounds import read_confounds
    from dpnbids.preproc.dof import run_dof
    from dpnbids.preproc.denoise import censor_mask

    pp = config.preproc
    confounds, _notes = read_confounds(run["confounds"], strategy=pp.denoise_strategy)
    meta = {}
    if run.get("confounds_json"):
        import json

        meta = json.loads(Path(run["confounds_json"]).read_text())
    try:
        censored = censor_mask(confounds, pp.fd_thresh)
    except InputError as exc:
        raise InputError(f"{run['confounds']}: {exc}") from None
    return run_dof(confounds, fmriprep_run_tr(run), strategy=pp.denoise_strategy,
                   high_pass=pp.high_pass, low_pass=pp.low_pass, confounds_meta=meta,
                   censored=censored)
