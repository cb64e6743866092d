"""Shared fixtures: seeded rng, a tiny hand-made BIDS dataset, the BIDS validator."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the CLI sets it (dpnbids.learn.backend)
# as dpnbids.cli.run sets it at import: set here, every test and every subprocess a test starts
# runs the same way whichever test imported the CLI first
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")


#: The test tiers, one folder each: tests/unit (pure functions, parsers, workflows built but
#: not run), tests/integration (the CLI end to end on tiny cohorts) and tests/acceptance
#: (clinical-length cohorts, the real subject, reproducibility, kill and resume, the cluster).
TIERS = ("unit", "integration", "acceptance")


def pytest_collection_modifyitems(items):
    """Each test gets its folder's tier as a marker (``pytest -m integration``).

    Acceptance files run first, then files holding slow tests, then the rest (each file's
    tests stay together, in their order): with ``pytest -n 2 --dist loadfile``
    (tools/test.sh) the long files start at once instead of leaving one worker alone with
    them at the end."""
    rank: dict = {}  # per file, in collection order: 2 acceptance, 1 holds a slow test, 0
    for item in items:
        tier = Path(str(item.path)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid} is outside tests/{{unit,integration,"
                                    f"acceptance}}; put each test file in its tier's folder")
        item.add_marker(getattr(pytest.mark, tier))
        weight = 2 if tier == "acceptance" else 1 if item.get_closest_marker("slow") else 0
        rank[item.path] = max(weight, rank.get(item.path, 0))
    order = {path: i for i, path in enumerate(rank)}
    items.sort(key=lambda it: (-rank[it.path], order[it.path]))


@pytest.fixture(scope="module", autouse=True)
def _free_module_scratch(request, tmp_path_factory):
    """Delete what a module's fixtures wrote under the pytest base temp when all its tests passed.

    The end-to-end modules keep cohorts, derivatives and nipype work directories (gigabytes)
    for the module's lifetime; pytest's retention policy only frees function-scoped tmp_path.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.fixture
def affine():
    """3 mm voxels (the report tests' small images)."""
    return np.diag([3.0, 3.0, 3.0, 1.0])


@pytest.fixture
def components(rng, affine):
    """A 4D image of three 'components' with one bright peak."""
    data = rng.normal(0, 1, (7, 8, 9, 3)).astype("float32")
    data[3, 4, 4, :] = 8.0
    return nib.Nifti1Image(data, affine)


def make_tiny_bids(root: Path, *, labels=("1", "0", "1", "0"), n_volumes=60, tr=2.0,
                   shape=(10, 11, 9), participants_extra=None) -> Path:
    """A minimal valid BIDS dataset with random T1w/BOLD (for CLI checks, not science)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "tiny", "BIDSVersion": "1.9.0", "DatasetType": "raw",
         "License": "PDDL"}))
    (root / "README").write_text("A tiny dataset for tests.\n")
    (root / "task-rest_bold.json").write_text(json.dumps(
        {"RepetitionTime": tr, "TaskName": "rest"}))
    rows = ["participant_id\tresponder"]
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for i, lab in enumerate(labels, start=1):
        sub = f"{i:02d}"
        rows.append(f"sub-{sub}\t{lab}")
        anat = root / f"sub-{sub}" / "anat"
        func = root / f"sub-{sub}" / "func"
        anat.mkdir(parents=True, exist_ok=True)
        func.mkdir(parents=True, exist_ok=True)
        t1 = rng.normal(100, 10, shape).astype(np.float32)
        nib.save(nib.Nifti1Image(t1, affine), str(anat / f"sub-{sub}_T1w.nii.gz"))
        bold = rng.normal(100, 5, shape + (n_volumes,)).astype(np.float32)
        img = nib.Nifti1Image(bold, affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header["pixdim"][4] = tr
        nib.save(img, str(func / f"sub-{sub}_task-rest_bold.nii.gz"))
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    (root / "participants.json").write_text(json.dumps(
        {"responder": {"Description": "response to IV lidocaine",
                       "Levels": {"1": "responder", "0": "non-responder"}}}))
    return root


@pytest.fixture
def tiny_bids(tmp_path):
    return make_tiny_bids(tmp_path / "bids")


def validator_exe() -> str | None:
    here = Path(sys.executable).parent / "bids-validator-deno"
    if here.exists():
        return str(here)
    from shutil import which

    return which("bids-validator-deno")


def run_validator(path: Path) -> subprocess.CompletedProcess:
    exe = validator_exe()
    if exe is None:
        pytest.fail("bids-validator-deno is not installed; install the test extras "
                    "(pip install -e .[test])")
    return subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=600)


def run_cli(argv) -> int:
    """Run the installed ``dpnbids`` CLI in a fresh process, as users do; echo its stderr.

    A fresh process per run also keeps TensorFlow and nipype state of one run out of
    the next. The last stderr is kept in ``run_cli.last_stderr``."""
    proc = subprocess.run([str(Path(sys.executable).with_name("dpnbids")), *map(str, argv)],
                          capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-3000:])
    run_cli.last_stderr = proc.stderr
    return proc.returncode


def make_native_dataset(root, *, n_volumes: int):
    """Two subjects in native space (4 mm BOLD, 2 mm T1w, 1 mm planted motion), seed 7:
    the small raw dataset of the built-in preprocessing tests."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    return generate_dataset(root / "bids", SynthParams(
        n_responders=1, n_nonresponders=1, seed=7, space="native", n_volumes=n_volumes,
        motion_mm=1.0, template_resolution=4.0, bold_voxel_size=4.0, t1w_voxel_size=2.0))


def randomise_logit_head(model, seed: int = 0, scale: float = 0.3):
    """Give an untrained VoxNet's zero-initialised logit layer random weights, so that tests
    of attribution and prediction see a logit that depends on the input."""
    head = model.get_layer("logit")
    rng = np.random.default_rng(seed)
    head.set_weights([rng.normal(0.0, scale, head.kernel.shape).astype(np.float32),
                      np.zeros(1, np.float32)])
    return model
