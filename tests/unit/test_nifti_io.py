"""ISA-L gzip writing of NIfTI files: readable, reproducible, compressed by the writer."""
from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

from dpnbids.nifti_io import gzip_copy, save_nifti
from dpnbids.derivatives import DerivativesWriter, atomic_copy


def _img(rng):
    data = rng.normal(0, 1, (6, 7, 8, 5)).astype(np.float32)
    return nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), data


def test_save_nifti_gz_roundtrip_and_reproducible_bytes(tmp_path, rng):
    img, data = _img(rng)
    a = save_nifti(img, tmp_path / "a.nii.gz")
    b = save_nifti(img, tmp_path / "b.nii.gz")
    # a standard gzip stream nibabel (zlib) can read, with no timestamp
    with gzip.open(a, "rb") as f:
        assert f.read(4) != b""
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), data)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    raw = save_nifti(img, tmp_path / "c.nii")
    assert (tmp_path / "c.nii").read_bytes()[:4] != b"\x1f\x8b\x08\x00"
    np.testing.assert_array_equal(np.asarray(nib.load(raw).dataobj), data)


def test_uncompressed_intermediate_is_compressed_when_copied_to_nii_gz(tmp_path, rng):
    img, data = _img(rng)
    src = save_nifti(img, tmp_path / "work.nii")
    target = atomic_copy(src, tmp_path / "out" / "sub-01_bold.nii.gz")
    assert target.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), data)
    assert not list((tmp_path / "out").glob(".tmp-*"))  # atomic: no temporary left
    # a .nii.gz source is copied byte for byte
    gz = gzip_copy(src, tmp_path / "x.nii.gz")
    copied = atomic_copy(gz, tmp_path / "out" / "sub-02_bold.nii.gz")
    assert copied.read_bytes() == (tmp_path / "x.nii.gz").read_bytes()


def test_writer_write_nifti_reads_back(tmp_path, rng):
    img, data = _img(rng)
    target = DerivativesWriter(tmp_path).write_nifti(img, tmp_path / "sub-01_x.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), data)
