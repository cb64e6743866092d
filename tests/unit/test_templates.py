"""Offline templates: TemplateFlow's zero-byte skeleton and a read-only TEMPLATEFLOW_HOME."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from dpnbids import templates
from dpnbids.exceptions import InputError


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    home = tmp_path / "tf"
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("DPNBIDS_CACHE", str(tmp_path / "cache"))
    templates._load_template.cache_clear()
    yield home
    templates._load_template.cache_clear()


def test_zero_byte_placeholders_are_replaced(fresh_home):
    tdir = fresh_home / "tpl-MNI152NLin2009aSym"
    tdir.mkdir(parents=True)
    stub = tdir / templates.template_filename("MNI152NLin2009aSym", 4, "mask")
    stub.touch()  # what TemplateFlow's skeleton looks like when nothing was downloaded
    path = templates.get_template("MNI152NLin2009aSym", 4, "mask")
    img = nib.load(path)
    assert path.stat().st_size > 0
    assert np.allclose(img.header.get_zooms()[:3], 4.0)
    assert 15_000 < int(np.asarray(img.dataobj).sum()) < 30_000  # ~1.5 l of brain at 64 mm^3


def test_read_only_home_uses_a_writable_cache(fresh_home, tmp_path, monkeypatch):
    fresh_home.mkdir()
    real_access = os.access

    def access(path, mode):  # root ignores permission bits, so simulate a read-only mount
        if str(path).startswith(str(fresh_home)) and mode & os.W_OK:
            return False
        return real_access(path, mode)

    monkeypatch.setattr(templates.os, "access", access)
    path = templates.get_template("MNI152NLin2009aSym", 4, "T1w")
    assert str(path).startswith(str(tmp_path / "cache"))
    assert not any(fresh_home.rglob("*.nii.gz"))
    assert nib.load(path).shape == templates.load_template("MNI152NLin2009aSym", 4, "T1w").shape


def test_unknown_space_names_the_alternatives(fresh_home):
    with pytest.raises(InputError, match="MNI152NLin2009aSym.*always available"):
        templates.get_template("MNI152NLin6Asym", 2, "T1w")


def test_loaded_template_survives_its_file_and_follows_the_home(fresh_home, tmp_path,
                                                              monkeypatch):
    """A cached template holds its voxels (its file may be removed, as a per-run
    TEMPLATEFLOW_HOME is), and another TEMPLATEFLOW_HOME is another cache entry."""
    import shutil

    first = templates.load_template("MNI152NLin2009aSym", 4, "mask")
    path = templates.get_template("MNI152NLin2009aSym", 4, "mask")
    shutil.rmtree(fresh_home)
    again = templates.load_template("MNI152NLin2009aSym", 4, "mask")
    assert again is first and not path.exists()
    assert np.asarray(again.dataobj).sum() > 0  # read from memory, not from the gone file
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "other"))
    other = templates.load_template("MNI152NLin2009aSym", 4, "mask")
    assert other is not first
    np.testing.assert_array_equal(np.asarray(other.dataobj), np.asarray(first.dataobj))
