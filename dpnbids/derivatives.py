"""The one derivatives writer.

Every output path is built here from BIDS entities (the source file's entities
plus ``space``/``res``/``desc``/``suffix``), and every file is written
atomically: content goes to a hidden temporary file in the destination folder,
then :func:`os.replace` moves it under its final name, so a killed run never
leaves a truncated file under a final name; the temporary file it leaves names its
writer and is removed by the next run (:func:`remove_stale_temporaries`).  Files shared by concurrent
participant jobs on one OUTPUT_DIR (``dataset_description.json``,
``.bidsignore``) are updated under a file lock.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from dpnbids import __version__
from dpnbids.exceptions import InputError

#: BIDS entity order (schema order) used to build file names.
ENTITY_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc",
                "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part",
                "proc", "hemi", "space", "cohort", "split", "recording", "chunk", "seg", "res", "den",
                "label", "from", "to", "mode", "desc")
_LONG_NAMES = {"subject": "sub", "session": "ses", "acquisition": "acq", "reconstruction": "rec",
               "direction": "dir", "resolution": "res", "description": "desc",
               "density": "den", "ceagent": "ce"}
_ENTITY_RE = re.compile(r"^([a-zA-Z]+)-([a-zA-Z0-9+]+)$")

#: Patterns of our files that BIDS has no name for.
BIDSIGNORE = ("logs/", "group", "figures/", "*.html", "*_xfm.mat", "*_xfm.nii.gz",
              "*_components.nii.gz", "*_components.json", "*_prediction.tsv",
              "*_prediction.json", "*_timeseries.tsv", "*_timeseries.json", "*.lock",
              "*_desc-saliency_map.nii.gz", "*_desc-saliency_map.json",
              # BIDS allows cohort- only beside tpl- (atlases); fMRIPrep writes it after
              # space- for cohort templates (MNIPediatricAsym:cohort-1), and so do we
              "*_cohort-*",
              # a group run's staging folder (published as group/ when it completes)
              ".group-*")


def split_bids_name(filename: str | os.PathLike) -> tuple[dict, str, str]:
    """Split a BIDS file name into (entities, suffix, extension).

    >>> split_bids_name("sub-01_ses-1_task-rest_run-2_bold.nii.gz")
    ({'sub': '01', 'ses': '1', 'task': 'rest', 'run': '2'}, 'bold', '.nii.gz')
    """
    name = Path(filename).name
    stem, dot, ext = name.partition(".")
    parts = stem.split("_")
    entities = {}
    for part in parts[:-1]:
        match = _ENTITY_RE.match(part)
        if not match:
            raise InputError(f"file name {name!r} is not BIDS: {part!r} is not key-value")
        entities[match.group(1)] = match.group(2)
    return entities, parts[-1], (dot + ext) if dot else ""


def build_name(entities: dict, suffix: str, extension: str) -> str:
    """Build a BIDS file name from entities in schema order."""
    ents = {_LONG_NAMES.get(k, k): v for k, v in entities.items() if v is not None}
    unknown = [k for k in ents if k not in ENTITY_ORDER]
    if unknown:
        raise ValueError(f"unknown BIDS entities {unknown}")
    parts = []
    for key in ENTITY_ORDER:
        if key in ents:
            value = str(ents[key])
            if not re.fullmatch(r"[a-zA-Z0-9+]+", value):
                raise ValueError(f"entity {key}={value!r} is not alphanumeric")
            parts.append(f"{key}-{value}")
    if not extension.startswith(".") and extension:
        extension = "." + extension
    return "_".join(parts + [suffix]) + extension


def sibling(path, *, suffix: str | None = None, extension: str | None = None,
            **entities) -> Path:
    """The BIDS file beside ``path`` with some entities, the suffix or the extension changed.

    >>> sibling("sub-01_desc-denoised_bold.nii.gz", desc="brain", suffix="mask").name
    'sub-01_desc-brain_mask.nii.gz'
    >>> sibling("sub-01_bold.nii.gz", extension=".json").name
    'sub-01_bold.json'
    """
    path = Path(path)
    ents, old_suffix, old_ext = split_bids_name(path)
    ents.update({_LONG_NAMES.get(k, k): v for k, v in entities.items()})
    return path.with_name(build_name(ents, suffix or old_suffix,
                                     old_ext if extension is None else extension))


def res_label(resolution_mm: float) -> str:
    """``res-`` label of an isotropic resolution: 2.0 -> '2', 1.5 -> '1p5'."""
    value = float(resolution_mm)
    return str(int(value)) if value.is_integer() else f"{value:g}".replace(".", "p")


@contextmanager
def atomic_path(target: Path):
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=suffix, dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


TEMP_PREFIX = ".tmp-"
#: ``.tmp-<final name>~<pid>@<host>~<random><ext>``: the writer is named, so a dead
#: writer's file can be told from a live one's
_TEMP_OWNER = re.compile(r"~(\d+)@([^~/]+)~")


def _temp_prefix(target: Path) -> str:
    return f"{TEMP_PREFIX}{target.name}~{os.getpid()}@{socket.gethostname()}~"


def pid_alive(pid) -> bool:
    """Whether a process with this PID runs on this host (a zombie counts as running)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def is_stale_temporary(path: Path) -> bool:
    """A temporary file of :func:`atomic_path` whose writer, on this host, has died."""
    name = Path(path).name
    match = _TEMP_OWNER.search(name) if name.startswith(TEMP_PREFIX) else None
    return bool(match) and match.group(2) == socket.gethostname() \
        and not pid_alive(match.group(1))


def remove_stale_temporaries(output_dir) -> list[Path]:
    """Delete the temporary files that killed writers left in OUTPUT_DIR; return them.

    A SIGKILL between :func:`atomic_path`'s create and rename leaves a hidden
    ``.tmp-<final name>~<pid>@<host>~*`` beside the final file (never a file under the
    final name). Only files whose writer ran on this host and is gone are removed; a
    live run's, or another host's, are left alone.
    """
    found = sorted(p for p in Path(output_dir).rglob(f"{TEMP_PREFIX}*")
                   if p.is_file() and is_stale_temporary(p))
    for path in found:
        path.unlink(missing_ok=True)
    return found


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_copy(src: Path, target: Path) -> Path:
    """Copy ``src`` to ``target`` atomically; an uncompressed ``.nii`` copied to a
    ``.nii.gz`` target is gzip-compressed on the way (work-directory intermediates
    are written uncompressed, see :mod:`dpnbids.nifti_io`)."""
    from dpnbids.nifti_io import gzip_copy

    src, target = Path(src), Path(target)
    with atomic_path(target) as tmp:
        if target.name.endswith(".nii.gz") and src.name.endswith(".nii"):
            gzip_copy(src, tmp)
        else:
            shutil.copyfile(src, tmp)
    return target


def write_nifti(img, target, *, compresslevel: int | None = None) -> Path:
    """Save a nibabel image atomically (gzip without timestamps: reproducible bytes)."""
    import nibabel as nib
    import numpy as np

    from dpnbids.nifti_io import save_nifti

    target = Path(target)
    with atomic_path(target) as tmp:
        if target.name.endswith(".nii.gz") and not isinstance(img, nib.Nifti1Image):
            img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
        save_nifti(img, tmp, compresslevel=compresslevel)
    return target


def write_json(obj: dict, target, *, sort_keys: bool = True) -> Path:
    """Indented JSON (numpy values converted), written atomically."""
    return atomic_write_text(Path(target), json.dumps(obj, indent=2, sort_keys=sort_keys,
                                                      default=_json_default) + "\n")


def write_tsv(frame, target, *, index: bool = False, float_format: str | None = None) -> Path:
    """A BIDS TSV (tabs, ``n/a`` for missing values, LF line ends), written atomically."""
    text = frame.to_csv(sep="\t", index=index, na_rep="n/a", lineterminator="\n",
                        float_format=float_format)
    return atomic_write_text(Path(target), text)


def replace_dir(src, dst) -> Path:
    """Move the complete folder ``src`` to ``dst``, replacing any folder there.

    The old ``dst`` is first renamed aside (``.<name>-old-<pid>``), so a reader
    sees either the old folder or the new one, never a mix; it is then deleted.
    """
    src, dst = Path(src), Path(dst)
    old = dst.with_name(f".{dst.name}-old-{os.getpid()}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    return dst

def _lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path))


class DerivativesWriter:
    """Build BIDS derivative paths under ``output_dir`` and write files atomically."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)

    # ------------------------------------------------------------------ paths
    def path(self, *, source: str | os.PathLike | None = None, entities: dict | None = None,
             suffix: str | None = None, extension: str = ".nii.gz", datatype: str | None = None,
             drop: tuple[str, ...] = (), **extra) -> Path:
        """Derivative path from a source file's entities plus ``extra`` entities.

        ``datatype`` defaults to the source's folder (anat/func); the subject and
        session folders come from the entities.
        """
        ents: dict = {}
        src_suffix = None
        if source is not None:
            ents, src_suffix, _ = split_bids_name(source)
            if datatype is None and Path(source).parent.name in ("anat", "func"):
                datatype = Path(source).parent.name
        ents.update({_LONG_NAMES.get(k, k): v for k, v in (entities or {}).items()})
        ents.update({_LONG_NAMES.get(k, k): v for k, v in extra.items()})
        for key in drop:
            ents.pop(key, None)
        suffix = suffix or src_suffix
        if not suffix:
            raise ValueError("a suffix is required when no source file is given")
        folder = self.output_dir
        if "sub" in ents and ents["sub"] is not None:
            folder = folder / f"sub-{ents['sub']}"
            if ents.get("ses"):
                folder = folder / f"ses-{ents['ses']}"
            if datatype:
                folder = folder / datatype
        return folder / build_name(ents, suffix, extension)

    # ---------------------------------------------------------------- writers
    def write_nifti(self, img, target: Path) -> Path:
        return write_nifti(img, target)

    def write_json(self, obj: dict, target: Path) -> Path:
        return write_json(obj, target)

    def write_tsv(self, frame, target: Path, *, index: bool = False) -> Path:
        return write_tsv(frame, target, index=index)

    def write_text(self, text: str, target: Path) -> Path:
        return atomic_write_text(target, text)

    def copy(self, src: str | os.PathLike, target: Path) -> Path:
        return atomic_copy(Path(src), target)

    # ----------------------------------------------------------- shared files
    def write_dataset_description(self, *, bids_dir: Path, container: str | None = None,
                                  extra_sources=()) -> Path:
        """Write/refresh dataset_description.json (safe under concurrent jobs)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        target = self.output_dir / "dataset_description.json"
        generated = {"Name": "dpnbids", "Version": __version__,
                     "CodeURL": "https://github.com/dpnbids/dpnbids",
                     "Description": "Preprocessing, group ICA, dual regression and 3D-CNN "
                                    "response prediction (Teh et al. 2023)"}
        if container:
            generated["Container"] = {"Type": "docker", "Tag": container}
        sources = [_source_uri(bids_dir)] + [_source_uri(s) for s in extra_sources if s]
        with _lock(self.output_dir / ".dpnbids.lock"):
            desc = {"Name": "dpnbids derivatives", "BIDSVersion": "1.9.0",
                    "DatasetType": "derivative", "GeneratedBy": [generated],
                    "SourceDatasets": [{"URL": s} for s in dict.fromkeys(sources)],
                    "HowToAcknowledge": "Cite Teh et al., Neuroinformatics 21:35-43 (2023) "
                                        "and dpnbids."}
            self._write_bidsignore_locked()
            if target.exists():
                try:
                    if json.loads(target.read_text()) == desc:
                        return target
                except json.JSONDecodeError:
                    pass
            self.write_json(desc, target)
        return target

    def _write_bidsignore_locked(self) -> Path:
        target = self.output_dir / ".bidsignore"
        lines = []
        if target.exists():
            lines = [ln for ln in target.read_text().splitlines() if ln.strip()]
        merged = list(dict.fromkeys(lines + list(BIDSIGNORE)))
        if merged != lines:
            atomic_write_text(target, "\n".join(merged) + "\n")
        return target


def _source_uri(path) -> str:
    path = Path(path).absolute()
    return path.as_uri()


def _json_default(obj):
    import numpy as np

    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
