"""Fast, reproducible NIfTI writing.

Compressing a template-space BOLD series (about 700 MB of float32 at 2 mm) with
Python's zlib takes 12-18 s on one core; Intel's ISA-L (``isal.igzip``, a
regular dependency) writes the same gzip stream format in about 1 s. Every
``.nii.gz`` dpnbids writes goes through :func:`save_nifti` or
:func:`gzip_copy`, which use ISA-L when it is importable and fall back to
:mod:`gzip`. The gzip header carries no timestamp (``mtime=0``), so the same
image gives the same bytes.

Large 4D intermediates in the nipype work directory are written as
uncompressed ``.nii``: they are read again at once by the next node, and
reading them costs no decompression. They are compressed only once, when the
derivatives writer copies them into OUTPUT_DIR.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

try:  # ISA-L: same gzip format, several times faster
    from isal import igzip as _gzip
except ImportError:  # pragma: no cover - isal is a dependency; keep working without it
    import gzip as _gzip

#: Compression level (igzip's levels are 0-3; 1 gives zlib-level-6-like ratios on NIfTI).
DEFAULT_LEVEL = 1
_CHUNK = 16 << 20


class _open_gz:
    """Gzip writer with no name and no timestamp in its header (reproducible bytes:
    files are written under random temporary names before their atomic rename)."""

    def __init__(self, path, level=None):
        level = DEFAULT_LEVEL if level is None else int(level)
        self._raw = open(path, "wb")
        try:
            self._gz = _gzip.GzipFile(filename="", mode="wb", compresslevel=level,
                                      fileobj=self._raw, mtime=0)
        except BaseException:
            self._raw.close()
            raise

    def __enter__(self):
        return self._gz

    def __exit__(self, *exc):
        try:
            self._gz.close()
        finally:
            self._raw.close()
        return False


def save_nifti(img, path: str | os.PathLike, *, compresslevel: int | None = None) -> str:
    """Save a nibabel image; ``.nii.gz`` paths are gzip-compressed with ISA-L.

    Returns the path as a string. Not atomic by itself: the derivatives writer
    wraps it in its atomic rename.
    """
    import nibabel as nib

    path = Path(path)
    # uncompressed, or not NIfTI-1 (e.g. NIfTI-2, Analyze): nibabel's own writer
    if not path.name.endswith(".nii.gz") or not isinstance(img, nib.Nifti1Image):
        nib.save(img, str(path))
        return str(path)
    with _open_gz(path, compresslevel) as fobj:
        img.to_stream(fobj)
    return str(path)


def gzip_copy(src: str | os.PathLike, dst: str | os.PathLike, *,
              compresslevel: int | None = None) -> str:
    """Stream-compress file ``src`` into the gzip file ``dst``."""
    with open(src, "rb") as fin, _open_gz(dst, compresslevel) as fout:
        shutil.copyfileobj(fin, fout, _CHUNK)
    return str(dst)
