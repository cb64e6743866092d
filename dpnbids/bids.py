"""BIDS queries, participants.tsv label parsing and input checks at the door.

Everything here runs before any computation and before OUTPUT_DIR is touched;
problems raise :class:`dpnbids.exceptions.InputError` whose message names the
file, column, value or label and says how to fix it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dpnbids.exceptions import InputError

LOGGER = logging.getLogger(__name__)

#: Case-insensitive encodings of the response label. ``n/a`` (and empty) = unknown.
POSITIVE_LABELS = frozenset({"1", "1.0", "true", "yes", "y", "responder", "r"})
NEGATIVE_LABELS = frozenset({"0", "0.0", "false", "no", "n", "non-responder", "nonresponder",
                             "non_responder", "nr"})
MISSING_LABELS = frozenset({"n/a", "na", "nan", ""})


def parse_response_label(value, *, participant="?", column="responder",
                         source="participants.tsv") -> int | None:
    """Map one participants.tsv value to 1 (responder), 0 (non-responder) or None (n/a)."""
    text = "" if value is None else str(value).strip().lower()
    if text in POSITIVE_LABELS:
        return 1
    if text in NEGATIVE_LABELS:
        return 0
    if text in MISSING_LABELS:
        return None
    raise InputError(
        f"{source}: participant {participant} has {column}={value!r}, which is not a binary "
        "response label. Accepted (case-insensitive): 1/0, true/false, yes/no, "
        "responder/non-responder (or nonresponder), R/NR, and n/a for unknown. "
        f"Fix the value in the {column!r} column.")


def read_participants(bids_dir: Path) -> pd.DataFrame:
    """Read participants.tsv as strings, indexed by label without ``sub-``."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.is_file():
        found = "is a directory" if path.is_dir() else "does not exist"
        raise InputError(f"{path} {found}; the group level needs a participants.tsv file with "
                         "a participant_id column and a responder column.")
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty; the group level needs a header line with a "
                         "participant_id column and a responder column, and one row per "
                         "participant.") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable tab-separated file ({exc}); "
                         "save it as UTF-8 TSV") from None
    if "participant_id" not in table.columns:
        raise InputError(f"{path} has no 'participant_id' column (columns: "
                         f"{', '.join(table.columns)}); add one with values like sub-01")
    table["participant_id"] = table["participant_id"].str.strip()
    ids = table["participant_id"]
    label = ids.str.removeprefix("sub-")
    duplicated = label[label.duplicated(keep=False)]
    if len(duplicated):
        lines = {f"sub-{lab}": [i + 2 for i in duplicated.index[duplicated == lab]]
                 for lab in dict.fromkeys(duplicated)}  # line 1 is the header
        listing = "; ".join(f"{pid} on lines {', '.join(map(str, ln))}"
                            for pid, ln in lines.items())
        raise InputError(f"{path} has a duplicate row for the same participant ({listing}); "
                         "keep exactly one row per participant_id.")
    table.index = [pid[4:] if pid.startswith("sub-") else pid for pid in table["participant_id"]]
    return table


def load_labels(bids_dir: Path, column: str, subjects=None, *,
                min_per_class: int = 1) -> dict[str, int | None]:
    """Return ``{subject: 1/0/None}`` for ``subjects`` (all when None).

    Raises InputError for a missing column, an unparseable value, a requested
    subject missing from participants.tsv, or fewer than two classes among the
    labelled subjects.  Subjects labelled n/a map to None (logged as a warning).
    """
    table = read_participants(bids_dir)
    path = Path(bids_dir) / "participants.tsv"
    if column not in table.columns:
        raise InputError(
            f"{path} has no {column!r} column (columns: {', '.join(table.columns)}); add the "
            "response labels or name the column with `responder_column`.")
    subjects = list(table.index) if subjects is None else list(subjects)
    missing = [s for s in subjects if s not in table.index]
    if missing:
        raise InputError(f"{path} has no row for participant(s) "
                         f"{', '.join('sub-' + s for s in missing)}; add them with a "
                         f"{column!r} value (n/a if unknown).")
    labels = {s: parse_response_label(table.loc[s, column], participant=f"sub-{s}",
                                      column=column, source=str(path)) for s in subjects}
    unknown = [s for s, v in labels.items() if v is None]
    if unknown:
        LOGGER.warning("%d participant(s) labelled n/a in %r are excluded from training: %s",
                       len(unknown), column, ", ".join("sub-" + s for s in unknown))
    known = [v for v in labels.values() if v is not None]
    if not known:
        raise InputError(f"{path}: every selected participant has {column}=n/a; the group "
                         "level needs responders and non-responders.")
    n_pos, n_neg = sum(known), len(known) - sum(known)
    if n_pos == 0 or n_neg == 0:
        only = "responders (1)" if n_neg == 0 else "non-responders (0)"
        raise InputError(f"{path}: column {column!r} has only one class among the selected "
                         f"participants ({len(known)} {only}); a classifier needs both "
                         "responders and non-responders. Check the column or the selection.")
    if min(n_pos, n_neg) < min_per_class:
        raise InputError(
            f"{path}: {n_pos} responders and {n_neg} non-responders, but `folds` "
            f"{min_per_class} needs at least {min_per_class} per class; use "
            f"`folds` {max(2, min(n_pos, n_neg))} or fewer.")
    return labels


def check_bids_root(bids_dir: Path) -> None:
    """BIDS_DIR must exist and be a BIDS dataset."""
    bids_dir = Path(bids_dir)
    if not bids_dir.exists():
        raise InputError(f"BIDS_DIR {bids_dir} does not exist; give the root folder of a BIDS "
                         "dataset (the folder holding dataset_description.json and sub-*).")
    if not bids_dir.is_dir():
        raise InputError(f"BIDS_DIR {bids_dir} is a file, not a folder; give the dataset root.")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"BIDS_DIR {bids_dir} is not a BIDS dataset: it has no "
                         "dataset_description.json. Point to the dataset root, or add the file "
                         "(see https://bids-specification.readthedocs.io).")
    try:
        json.loads((bids_dir / "dataset_description.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{bids_dir / 'dataset_description.json'} is not valid JSON ({exc}).") \
            from None
    if not any(p.is_dir() for p in bids_dir.glob("sub-*")):
        raise InputError(f"BIDS_DIR {bids_dir} has no sub-* folders; it is not a BIDS dataset "
                         "with participants.")


def check_output_dir(bids_dir: Path, output_dir: Path) -> None:
    """OUTPUT_DIR may not equal or sit inside BIDS_DIR, except under BIDS_DIR/derivatives."""
    bids = Path(bids_dir).resolve()
    out = Path(output_dir).resolve()
    if out == bids:
        raise InputError(f"OUTPUT_DIR {output_dir} is the BIDS_DIR itself; outputs would mix "
                         "with the raw data. Use e.g. {}/derivatives/dpnbids or a folder "
                         "outside the dataset.".format(bids_dir))
    if bids in out.parents and (bids / "derivatives") not in [out, *out.parents]:
        raise InputError(f"OUTPUT_DIR {output_dir} is inside BIDS_DIR {bids_dir}; only "
                         f"{bids_dir}/derivatives/<name> is allowed. Move it outside the "
                         "dataset or under derivatives/.")
    if out.exists() and not out.is_dir():
        raise InputError(f"OUTPUT_DIR {output_dir} exists and is a file; give a folder.")
    if bids in out.parents and out == bids / "derivatives":
        raise InputError(f"OUTPUT_DIR {output_dir} is the derivatives folder itself; use a "
                         f"subfolder such as {bids_dir}/derivatives/dpnbids.")
    _check_writable(output_dir, out)


def _check_writable(output_dir: Path, out: Path) -> None:
    """OUTPUT_DIR, or its nearest existing parent, must be a writable folder."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != out and not existing.is_dir():
        raise InputError(f"OUTPUT_DIR {output_dir} cannot be created: {existing} is a file, "
                         "not a folder. Give a path whose parents are folders, or move the "
                         "file away.")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "it is" if existing == out else f"its nearest existing parent {existing} is"
        raise InputError(f"OUTPUT_DIR {output_dir} is not writable: {where} read-only for "
                         "this user. Give a folder you can write to, or make it writable "
                         f"(e.g. `chmod u+w {existing}`).")


def check_work_dir(work_dir: Path) -> None:
    """--work-dir, or its nearest existing parent, must be a folder this run can write in.

    Probed by creating (and removing) an empty folder in it: permissions bits do not
    tell an immutable folder or a read-only file system, and nipype would otherwise
    fail after OUTPUT_DIR is written."""
    import tempfile

    path = Path(work_dir)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"`work_dir` {work_dir} cannot be used: {existing} is a file, not a "
                         "folder. Give a folder path (e.g. -w /scratch/$USER/dpnbids_work).")
    try:
        probe = tempfile.mkdtemp(prefix=".dpnbids-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise InputError(f"`work_dir` {work_dir} cannot be written: creating a folder in "
                         f"{existing} failed ({exc.strerror or exc}). Give a folder you can "
                         "write to (-w), with free space.") from None


def validator_executable() -> str | None:
    """Path of bids-validator-deno next to this interpreter or on PATH."""
    here = Path(sys.executable).parent / "bids-validator-deno"
    if here.exists():
        return str(here)
    return shutil.which("bids-validator-deno")


def run_bids_validator(bids_dir: Path, *, timeout: float = 600) -> None:
    """Run bids-validator-deno on the input; raise InputError listing its errors."""
    exe = validator_executable()
    if exe is None:
        LOGGER.warning("bids-validator-deno not found: skipping BIDS validation of %s "
                       "(install it or pass `skip_bids_validation` to silence this)", bids_dir)
        return
    env = dict(os.environ)
    env.setdefault("DENO_DIR", str(Path(env.get("TMPDIR", "/tmp")) / "dpnbids-deno"))
    proc = subprocess.run([exe, "--json", str(bids_dir)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)
    if proc.returncode == 0:
        return
    errors = []
    try:
        report = json.loads(proc.stdout)
        for issue in report.get("issues", {}).get("issues", []):
            if issue.get("severity") == "error":
                loc = issue.get("location", "")
                errors.append(f"{issue.get('code')}: {loc}")
    except json.JSONDecodeError:
        errors = (proc.stdout + proc.stderr).strip().splitlines()[-10:]
    shown = "\n  ".join(sorted(set(errors))[:15]) or "(no details)"
    raise InputError(f"BIDS_DIR {bids_dir} failed BIDS validation "
                     f"(bids-validator-deno exit {proc.returncode}):\n  {shown}\n"
                     "Fix the dataset, or pass `skip_bids_validation` to run anyway.")


@dataclass
class SubjectInputs:
    """Raw inputs of one participant."""

    subject: str
    t1w: str | None = None
    bold: list[str] = field(default_factory=list)


def _entity_filters(filters: dict, query: str) -> dict:
    raw = dict(filters.get(query, {}))
    return {k: (v if v is not None else None) for k, v in raw.items()}


def _refuse_unindexed_subjects(bids_dir: Path, available) -> None:
    """A sub-* folder that pybids did not index (a label with characters BIDS does not allow,
    e.g. accents) would be dropped without a word: name it instead."""
    import re

    ignored = sorted(p.name for p in Path(bids_dir).glob("sub-*")
                     if p.is_dir() and p.name[4:] not in available
                     and not re.fullmatch(r"[a-zA-Z0-9]+", p.name[4:]))
    if ignored:
        raise InputError(
            f"BIDS_DIR {bids_dir} has subject folder(s) {', '.join(map(repr, ignored))} whose "
            "label is not a BIDS label (letters a-z, A-Z and digits only); they would be left "
            "out silently. Rename them (e.g. sub-01), or choose the subjects to process with "
            "`participant_label`.")


def collect_inputs(bids_dir: Path, *, participant_label=None, session_label=None,
                   task="rest", bids_filters=None, need_t1w=True) -> dict[str, SubjectInputs]:
    """Query BIDS_DIR with pybids for the T1w and BOLD runs of each participant."""
    from bids import BIDSLayout

    bids_filters = bids_filters or {}
    try:
        layout = BIDSLayout(str(bids_dir), validate=False, derivatives=False)
    except Exception as exc:  # noqa: BLE001 - pybids raises many types on malformed datasets
        raise InputError(f"pybids could not index BIDS_DIR {bids_dir}: {exc}") from None
    available = sorted(layout.get_subjects())
    if not participant_label:
        _refuse_unindexed_subjects(bids_dir, available)
    subjects = list(participant_label) if participant_label else available
    missing = [s for s in subjects if s not in available]
    if missing:
        raise InputError(
            f"participant(s) {', '.join('sub-' + s for s in missing)} not found in {bids_dir}; "
            f"available: {', '.join('sub-' + s for s in available) or 'none'}. "
            "Fix `participant_label`.")
    out = {}
    for sub in subjects:
        query = {"subject": sub, "extension": [".nii", ".nii.gz"],
                 "return_type": "filename"}
        if session_label:
            query["session"] = list(session_label)
        bold_q = {**query, "datatype": "func", "suffix": "bold", "task": task,
                  **_entity_filters(bids_filters, "bold")}
        t1_q = {**query, "datatype": "anat", "suffix": "T1w",
                **_entity_filters(bids_filters, "t1w")}
        t1_q.pop("session", None) if not session_label else None
        try:
            bolds = sorted(layout.get(**bold_q))
            t1ws = sorted(layout.get(**t1_q))
        except Exception as exc:  # noqa: BLE001 - pybids raises many types for invalid entity names
            raise InputError(f"the BIDS query for sub-{sub} failed ({exc}); check the entity "
                             "names in `bids_filter_file`") from None
        if not bolds:
            tasks = sorted(layout.get_tasks(subject=sub))
            raise InputError(f"sub-{sub} has no BOLD run for task {task!r} in {bids_dir} "
                             f"(tasks present: {', '.join(tasks) or 'none'}); fix `task_id`, "
                             "`session_label` or `bids_filter_file`.")
        if need_t1w and not t1ws:
            raise InputError(f"sub-{sub} has no T1w image in {bids_dir}/sub-{sub}; the built-in "
                             "preprocessing needs one (or use `fmriprep_dir`).")
        out[sub] = SubjectInputs(subject=sub, t1w=t1ws[0] if t1ws else None, bold=bolds)
    return out


def read_sidecar(nifti_path: str | Path, bids_dir: Path | None = None) -> dict:
    """JSON metadata of a NIfTI following the BIDS inheritance principle (top-down merge)."""
    nifti_path = Path(nifti_path)
    name = nifti_path.name
    stem = name[:-7] if name.endswith(".nii.gz") else nifti_path.stem
    entities = stem.split("_")
    suffix = entities[-1]
    meta: dict = {}
    candidates = []
    if bids_dir is not None:
        bids_dir = Path(bids_dir)
        folders = [bids_dir] + [p for p in reversed(nifti_path.parents)
                                if bids_dir in p.parents]
    else:
        folders = [nifti_path.parent]
    for folder in folders:
        for js in sorted(folder.glob(f"*{suffix}.json")):
            parts = js.name[:-5].split("_")
            if set(parts[:-1]) <= set(entities[:-1]) and parts[-1] == suffix:
                candidates.append(js)
    for js in sorted(dict.fromkeys(candidates), key=lambda p: (len(p.parts), len(p.name))):
        try:
            meta.update(json.loads(js.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"sidecar {js} is not valid JSON ({exc}); fix or remove it.") \
                from None
    return meta
