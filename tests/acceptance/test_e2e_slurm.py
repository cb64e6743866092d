"""Both levels through nipype's SLURM plugin on a real one-node SLURM (tests/slurm_cluster.py).

One 14-subject cohort and one participant run (through SLURM) serve every test. The group
level's outer folds must run as SLURM jobs named for their fold (the controller's jobcomp
record says so), give predictions byte-identical to a local run with the same seed, and
a group run killed mid-CV must, rerun with the same work folder, recompute only the folds
that had not finished.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from slurm_cluster import PLUGIN_FILE, CannotStart, start_cluster

pytestmark = [pytest.mark.slow]

FLAGS = ["--output-resolution", "4", "--skip-bids-validation", "--omp-nthreads", "1"]
#: The smallest honest group level: 3 outer folds, a 12 mm CNN grid, 2 epochs.
GROUP = ["--pca-dim", "30", "--folds", "3", "--epochs", "2", "--patience", "1",
         "--min-epochs", "1", "--n-bootstrap", "20", "--input-sets", "ASC",
         "--cnn-voxel-size", "12", "--saliency", "none", "--random-seed", "7"]
FOLDS = [f"cv_asc_fold{k:02d}" for k in range(3)]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    except CannotStart as exc:
        pytest.skip(f"no local SLURM: {exc}")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    os.environ.pop("SLURM_CONF", None)
    cluster.stop()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, slurm):
    """14 subjects, their participant level run through the SLURM plugin."""
    from dpnbids.sim.generator import SynthParams, generate_dataset

    root = tmp_path_factory.mktemp("cluster")
    synth = generate_dataset(root / "bids", SynthParams(
        n_responders=7, n_nonresponders=7, seed=3, space="template", n_volumes=60,
        template_resolution=4.0, effect_size=3.0))
    out = root / "participant"
    code = run_cli([synth.bids_dir, out, "participant", "--fmriprep-dir", synth.fmriprep_dir,
                    *FLAGS, "-w", root / "work_participant", "--use-plugin", PLUGIN_FILE])
    assert code == 0, run_cli.last_stderr
    return synth, out


def _group_argv(synth, out, work, *extra):
    return [synth.bids_dir, out, "group", "--fmriprep-dir", synth.fmriprep_dir, *FLAGS,
            *GROUP, "-w", work, *extra]


def _fresh_output(participant: Path, dest: Path) -> Path:
    shutil.copytree(participant, dest, ignore=shutil.ignore_patterns("group", "group.html"))
    return dest


def test_both_levels_on_slurm_match_a_local_run(cohort, slurm, tmp_path):
    synth, participant = cohort
    names = [job["Name"] for job in slurm.jobs()]
    assert any(".sub_01_wf." in n for n in names), names[:20]  # the participant level

    out = _fresh_output(participant, tmp_path / "slurm")
    code = run_cli(_group_argv(synth, out, tmp_path / "work_slurm", "--use-plugin",
                               PLUGIN_FILE))
    assert code == 0, run_cli.last_stderr
    jobs = [j for j in slurm.jobs() if ".group_cv_wf." in j["Name"]]
    for fold in FOLDS:  # one job per outer fold, named for it, completed
        mine = [j for j in jobs if j["Name"].startswith(fold + ".")]
        assert mine and mine[-1]["JobState"] == "COMPLETED", (fold, [j["Name"] for j in jobs])
        # the CNN nodes' own sbatch arguments (node_plugin_args: cnn) reached the controller
        assert mine[-1]["TimeLimit"] == "20"
    final = [j for j in jobs if j["Name"].startswith("final_asc.")]
    assert final and final[-1]["TimeLimit"] == "20"

    local = _fresh_output(participant, tmp_path / "local")
    assert run_cli(_group_argv(synth, local, tmp_path / "work_local", "--nprocs", "2")) == 0
    ours = (out / "group" / "predictions.tsv").read_bytes()
    assert ours == (local / "group" / "predictions.tsv").read_bytes()
    assert (out / "group.html").exists() and (out / "group" / "model" / "model.keras").exists()


def test_killed_group_run_recomputes_only_unfinished_folds(cohort, tmp_path):
    synth, participant = cohort
    out, work = _fresh_output(participant, tmp_path / "out"), tmp_path / "work"
    argv = [str(a) for a in _group_argv(synth, out, work, "--nprocs", "1")]
    exe = str(Path(sys.executable).with_name("dpnbids"))
    proc = subprocess.Popen([exe, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    nodes = work / "group_cv_wf"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None \
            and not list(nodes.glob(f"{FOLDS[0]}/result_*.pklz")):
        time.sleep(0.5)
    assert proc.poll() is None, "the group run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and any worker it started
    proc.wait()
    done = {f: list(nodes.glob(f"{f}/result_*.pklz")) for f in FOLDS}
    finished = {f: p[0].stat().st_mtime_ns for f, p in done.items() if p}
    assert FOLDS[0] in finished and len(finished) < len(FOLDS)
    assert not (out / "group").exists(), "group/ appears only when the join completes"

    assert run_cli(argv) == 0, run_cli.last_stderr
    for fold, stamp in finished.items():  # reused from the killed run, not recomputed
        assert next(nodes.glob(f"{fold}/result_*.pklz")).stat().st_mtime_ns == stamp
    for fold in set(FOLDS) - set(finished):
        assert list(nodes.glob(f"{fold}/result_*.pklz"))
    assert (out / "group" / "table2.tsv").exists()
