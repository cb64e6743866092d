"""ANTs seeds and ITK threads (dpnbids.preproc.itk): what makes antspyx runs repeatable."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from dpnbids.exceptions import InputError
from dpnbids.preproc import itk


def test_ants_seed_is_never_zero_and_keeps_seeds_apart():
    seeds = [0, 1, 5, 2**31 - 2, 2**31 - 1, 2**32, -3]
    mapped = [itk.ants_seed(s) for s in seeds]
    assert all(1 <= m <= 2**31 - 1 for m in mapped)
    assert itk.ants_seed(0) != 0
    assert len({itk.ants_seed(s) for s in range(1000)}) == 1000


def test_seeded_registration_refuses_arguments_ants_would_ignore():
    """ants.registration swallows unknown keywords: a ``random_seed=`` given to it is
    silently dropped, which is how head motion came to be seeded from the clock."""
    import ants

    img = ants.from_numpy(np.ones((8, 8, 8), np.float32))
    with pytest.raises(TypeError, match="does not take num_threads"):
        itk.seeded_registration(img, img, random_seed=1, type_of_transform="Rigid",
                                num_threads=1)


def test_unknown_registration_kwargs_names_only_the_unknown():
    assert itk.unknown_registration_kwargs({"type_of_transform": "Rigid", "mask": None,
                                            "aff_random_sampling_rate": 0.3}) == []
    assert itk.unknown_registration_kwargs({"random_seed": 1, "outprefix": "x",
                                            "seed": 2}) == ["random_seed", "seed"]


def test_seeded_registration_restores_the_global_seed(tmp_path):
    import ants
    import ants.config

    rng = np.random.default_rng(3)
    data = ndimage.gaussian_filter(rng.standard_normal((16, 17, 15)), 2).astype(np.float32)
    img = ants.from_numpy(data)
    before = ants.config._random_seed
    reg = itk.seeded_registration(img, img, random_seed=9, type_of_transform="Translation",
                                  aff_iterations=(2,), aff_shrink_factors=(1,),
                                  aff_smoothing_sigmas=(0,), outprefix=str(tmp_path / "t_"))
    assert reg["fwdtransforms"]
    assert ants.config._random_seed == before


def test_pin_itk_threads_sets_once_and_warns_on_a_later_count(monkeypatch, caplog):
    monkeypatch.setattr(itk, "_PINNED", None)
    monkeypatch.setenv(itk.ITK_THREADS_VAR, "7")
    assert itk.pin_itk_threads(2) == 2
    assert os.environ[itk.ITK_THREADS_VAR] == "2"
    with caplog.at_level(logging.WARNING, logger="dpnbids.preproc.itk"):
        assert itk.pin_itk_threads(2) == 2
        assert not caplog.records
        assert itk.pin_itk_threads(4) == 2
    assert "reads the count only once" in caplog.text
    assert os.environ[itk.ITK_THREADS_VAR] == "2"
    with pytest.raises(InputError, match="`omp_nthreads` 1 or more"):
        itk.pin_itk_threads(0)


_HMC_SCRIPT = """
import sys
import numpy as np
from dpnbids.preproc.bold import estimate_head_motion
r = estimate_head_motion(sys.argv[1], sys.argv[2], omp_nthreads=1, random_seed=0)
sys.stdout.write(r.params.tobytes().hex())
"""


def test_head_motion_is_bit_identical_in_fresh_processes(tmp_path):
    """Two fresh processes, one thread, seed 0 (antsRegistration reads 0 as "from the
    clock", so this also checks :func:`dpnbids.preproc.itk.ants_seed`)."""
    rng = np.random.default_rng(4)
    vol = ndimage.gaussian_filter(rng.standard_normal((20, 22, 18)), 2.5) * 100 + 500
    series = np.stack([ndimage.shift(vol, (0.4 * t, -0.3 * t, 0.2 * t), order=1)
                       for t in range(4)], axis=-1).astype(np.float32)
    bold = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(series, np.diag([3.0, 3.0, 3.0, 1.0])), bold)
    runs = []
    for i in range(2):
        proc = subprocess.run([sys.executable, "-c", _HMC_SCRIPT, str(bold),
                               str(tmp_path / f"hmc{i}")], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(proc.stdout)
    params = np.frombuffer(bytes.fromhex(runs[0]), dtype=float).reshape(4, 6)
    assert np.abs(params[1:, :3]).max() > 0.3  # the planted shifts were estimated
    assert runs[0] == runs[1]
