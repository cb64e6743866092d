"""Bad fMRIPrep inputs are refused at the door: one clear message, exit 2, in seconds,
before OUTPUT_DIR is created (never a raw warning, a traceback or a late exit 4)."""
from __future__ import annotations

import gzip
import json
import shutil
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from fmriprep_fixtures import make_fmriprep_dataset

SPACE = "MNI152NLin2009cAsym"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_fmriprep_dataset(tmp_path_factory.mktemp("door"), subjects={"01": 1, "02": 0},
                                 layouts=("native",), n_volumes=110, tr=2.0, seed=5)


@pytest.fixture
def ds(pristine, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(pristine["bids"], root / "bids")
    shutil.copytree(pristine["fmriprep"], root / "fmriprep")
    return {"bids": root / "bids", "fmriprep": root / "fmriprep"}


def _files(ds):
    func = ds["fmriprep"] / "sub-01" / "func"
    bold = next(func.glob(f"*space-{SPACE}_desc-preproc_bold.nii.gz"))
    conf = next(func.glob("*desc-confounds_timeseries.tsv"))
    return bold, conf


def _confounds(conf, edit):
    table = pd.read_csv(conf, sep="\t", na_values=["n/a"])
    table = edit(table)
    table.to_csv(conf, sep="\t", index=False, na_rep="n/a")


def _all_na(table):
    return pd.DataFrame(np.nan, index=table.index, columns=table.columns)


def _string_in_used_column(table):
    table = table.astype({"trans_x": object})
    table.loc[5, "trans_x"] = "oops"
    return table


def _bold(bold, make):
    img = nib.load(str(bold))
    data = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(make(data), img.affine), str(bold))


def _sidecar(bold):
    return bold.with_name(bold.name.split(".", 1)[0] + ".json")


def _nan_voxel(data):
    data[10, 10, 10, 3] = np.nan
    return data


DAMAGE = {
    "all n/a confounds": (lambda b, c: _confounds(c, _all_na), "is n/a on every row"),
    "string in a confound": (lambda b, c: _confounds(c, _string_in_used_column),
                             "'trans_x' holds 'oops' on data row 6"),
    "empty confounds": (lambda b, c: c.write_text(""), "is empty"),
    "malformed confounds JSON": (lambda b, c: c.with_suffix(".json").write_text("{oops"),
                                 "is not valid JSON"),
    "fewer confound rows": (lambda b, c: _confounds(c, lambda t: t.iloc[:100]),
                            "has 110 volumes but its confounds table has 100 rows"),
    "3D BOLD": (lambda b, c: _bold(b, lambda d: d[..., 0]), "3D"),
    "2-volume BOLD": (lambda b, c: _bold(b, lambda d: d[..., :2]), "only 2 volumes"),
    "NaN voxel": (lambda b, c: _bold(b, _nan_voxel), "1 NaN"),
    "malformed BOLD JSON": (lambda b, c: _sidecar(b).write_text("{oops"), "is not valid JSON"),
    "no RepetitionTime": (lambda b, c: _sidecar(b).write_text(json.dumps(
        {k: v for k, v in json.loads(_sidecar(b).read_text()).items()
         if k != "RepetitionTime"})), "has no RepetitionTime"),
    "gzip not NIfTI": (lambda b, c: b.write_bytes(gzip.compress(b"not an image")),
                       "could not be read as a NIfTI image"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_bad_fmriprep_input_is_refused_at_the_door(ds, tmp_path, damage):
    make, fragment = DAMAGE[damage]
    make(*_files(ds))
    out = tmp_path / "out"
    started = time.time()
    code = run_cli([ds["bids"], out, "participant", "--fmriprep-dir", ds["fmriprep"],
                    "--output-space", SPACE, "--skip-bids-validation",
                    "--participant-label", "01"])
    err = run_cli.last_stderr
    assert code == 2, err
    assert fragment in err, err
    assert err.count("dpnbids: error:") == 1 and "Traceback" not in err
    assert "Warning" not in err and "warn(" not in err
    assert not out.exists()
    assert time.time() - started < 60


def _main(argv, capsys):
    import dpnbids.cli.run as cli_run

    code = cli_run.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_unknown_plugin_is_refused_before_output_dir_exists(tiny_bids, tmp_path, capsys):
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProcess\nplugin_args: {}\n")
    out = tmp_path / "out"
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation",
                       "--use-plugin", plugin], capsys)
    assert code == 2 and "'MultiProcess', which nipype does not have" in err, err
    assert "MultiProc," in err and err.count("dpnbids: error:") == 1
    assert not out.exists()


@pytest.mark.parametrize("kind", ["under a file", "not writable"])
def test_unusable_work_dir_is_refused_before_output_dir_exists(tiny_bids, tmp_path, capsys,
                                                               monkeypatch, kind):
    import tempfile

    afile = tmp_path / "afile"
    afile.write_text("x")
    work = afile / "work"
    if kind == "not writable":  # as root, chmod does not stop writes: simulate the refusal
        work = tmp_path / "ro" / "work"
        (tmp_path / "ro").mkdir()
        real = tempfile.mkdtemp

        def mkdtemp(*args, **kwargs):
            if str(kwargs.get("dir", "")).endswith("ro"):
                raise PermissionError(1, "Operation not permitted")
            return real(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    out = tmp_path / "out"
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation", "-w", work],
                      capsys)
    assert code == 2, err
    assert ("is a file" if kind == "under a file" else "Operation not permitted") in err, err
    assert "--work-dir" in err and err.count("dpnbids: error:") == 1
    assert not out.exists()


def test_a_subject_folder_with_a_non_bids_label_is_named_not_dropped(tiny_bids, tmp_path,
                                                                     capsys):
    shutil.copytree(tiny_bids / "sub-01", tiny_bids / "sub-0é1")
    out = tmp_path / "out"
    code, err = _main([tiny_bids, out, "participant", "--skip-bids-validation"], capsys)
    assert code == 2 and "'sub-0é1'" in err and "not a BIDS label" in err, err
    assert not out.exists()
    from dpnbids.bids import collect_inputs

    assert list(collect_inputs(tiny_bids, participant_label=["01"])) == ["01"]


def test_pca_dim_above_the_shortest_run_is_refused_from_headers(tmp_path):
    from types import SimpleNamespace

    from dpnbids.exceptions import DimensionError
    from dpnbids.group.level import check_pca_dim

    runs = []
    for key, n in (("sub-01", 80), ("sub-02", 55)):
        path = tmp_path / f"{key}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((3, 4, 5, n), np.float32), np.eye(4)), str(path))
        runs.append(SimpleNamespace(key=key, denoised=path))
    check_pca_dim(SimpleNamespace(ica=SimpleNamespace(pca_dim=55)), runs)
    with pytest.raises(DimensionError, match="sub-02 has only 55 volumes.*`pca_dim` 55 or less"):
        check_pca_dim(SimpleNamespace(ica=SimpleNamespace(pca_dim=64)), runs)
