"""The group level's learning as engine nodes, without training a network: the node plan
(names, resources, scheduler arguments), the permutation blocks against the serial
permutation test, the pooled saliency against one accumulator, the plugin file's
``node_plugin_args`` and the job inputs' byte-stable files (what lets a rerun resume)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dpnbids.learn import jobs


def test_permutation_blocks_are_the_serial_test_in_pieces():
    from dpnbids.learn.cv import permutation_test

    y = np.array([0, 1] * 7)
    seen = []
    permutation_test(lambda labels: seen.append(labels.copy()) or 0.5, y, n_permutations=23,
                     random_state=11, observed=0.5)
    blocks = [jobs.permutation_labels(y, 23, 11, b * 10, min(23, b * 10 + 10))
              for b in range(3)]
    assert [len(b) for b in blocks] == [10, 10, 3]
    assert all(np.array_equal(a, b) for a, b in zip(seen, [p for b in blocks for p in b]))


def test_pooled_saliency_equals_one_accumulator():
    from dpnbids.learn.saliency import SaliencyAccumulator

    rng = np.random.default_rng(0)
    parts = [rng.random((3, 4, 5, 2)) for _ in range(3)]
    serial = SaliencyAccumulator("gradients", 2)
    serial.sum_abs_ = np.zeros((3, 4, 5, 2))
    pooled = SaliencyAccumulator("gradients", 2)
    for k, part in enumerate(parts):
        one = SaliencyAccumulator("gradients", 2)
        one.sum_abs_, one.n_evaluations_ = part.copy(), 4
        one.shares_["cnn"].append(np.array([0.25, 0.75]))
        one.folds_.append({"fold": k})
        serial.sum_abs_ += part
        pooled.absorb(np.asarray(one.sum_abs_), json.loads(json.dumps(one.bookkeeping())))
    assert np.array_equal(pooled.sum_abs_, serial.sum_abs_)
    assert pooled.n_evaluations_ == 12 and [f["fold"] for f in pooled.folds_] == [0, 1, 2]
    assert np.allclose(np.stack(pooled.shares_["cnn"]), [[0.25, 0.75]] * 3)


def test_job_inputs_are_not_rewritten_when_unchanged(tmp_path):
    x = np.arange(2 * 3 * 3 * 3 * 2, dtype=np.float32).reshape(2, 3, 3, 3, 2)
    paths = jobs.write_job_inputs(tmp_path, {"ASC": x}, ["01", "02"], [1, 0], np.ones((2, 2)))
    stamps = {k: (tmp_path / p).stat().st_mtime_ns for k, p in paths.items()}
    raw = {k: open(p, "rb").read() for k, p in paths.items()}
    again = jobs.write_job_inputs(tmp_path, {"ASC": x}, ["01", "02"], [1, 0], np.ones((2, 2)))
    assert again == paths
    assert {k: (tmp_path / p).stat().st_mtime_ns for k, p in paths.items()} == stamps
    jobs.write_job_inputs(tmp_path, {"ASC": x + 1}, ["01", "02"], [1, 0], np.ones((2, 2)))
    assert open(paths["ASC"], "rb").read() != raw["ASC"]
    assert np.array_equal(np.load(paths["ASC"]), x + 1)


def test_fold_round_trips_through_json():
    from dpnbids.learn.splits import make_outer_splits

    ids = [f"{i:02d}" for i in range(12)]
    for fold in make_outer_splits(ids, [0, 1] * 6, n_folds=3, random_state=4):
        assert jobs.fold_from_dict(json.loads(json.dumps(jobs.fold_to_dict(fold)))) == fold


def test_plan_names_resources_and_scheduler_arguments(tmp_path):
    from dpnbids.workflows.group_cv import GroupPlan, Job, fold_node_name, init_group_cv_wf

    assert fold_node_name("SSC-leaky", 1, 3, 2) == "cv_sscleaky_rep01_fold03"
    feats = tmp_path / "f.npy"
    np.save(feats, np.zeros((2, 2, 2, 2, 1), np.float32))
    for name in ("cohort.json", "summaries.npy"):
        (tmp_path / name).write_text("{}")
    folds = [Job(fold_node_name("ASC", 0, k, 1), str(feats), "{}", 2.5, fold="{}")
             for k in range(3)]
    perms = [Job("perm_asc_observed", str(feats), "{}", 2.5, block=-1),
             Job("perm_asc_block00", str(feats), "{}", 2.5, block=0)]
    plan = GroupPlan(cohort=str(tmp_path / "cohort.json"),
                     summaries=str(tmp_path / "summaries.npy"), folds=folds,
                     permutations=perms, final=Job("final_asc", str(feats), "{}", 2.5),
                     settings="{}", n_threads=3,
                     node_plugin_args={"cnn": {"sbatch_args": "--gres=gpu:1"}})
    wf = init_group_cv_wf(plan, tmp_path)
    names = set(wf.list_node_names())
    assert {"cv_asc_fold00", "cv_asc_fold02", "perm_asc_block00", "perm_asc_observed",
            "final_asc", "pool_results"} <= names
    for name in ("cv_asc_fold01", "perm_asc_block00", "final_asc"):
        node = wf.get_node(name)
        assert node.n_procs == 3 and node.mem_gb == 2.5
        assert node.plugin_args == {"sbatch_args": "--gres=gpu:1"}
    assert not wf.get_node("pool_results").plugin_args
    # the join waits for every fold and permutation node
    pool_inputs = {u.name for u in wf._graph.predecessors(wf.get_node("merge_predictions"))}
    assert pool_inputs == {j.name for j in folds}


def test_plugin_file_node_plugin_args(tmp_path):
    from dpnbids.config import _load_plugin
    from dpnbids.exceptions import InputError

    good = tmp_path / "plugin.yml"
    good.write_text("plugin: SLURM\nplugin_args:\n  sbatch_args: --time=1:00:00\n"
                    "node_plugin_args:\n  cnn:\n    sbatch_args: --gres=gpu:1\n")
    assert _load_plugin(good, 2, None) == ("SLURM", {"sbatch_args": "--time=1:00:00"},
                                           {"cnn": {"sbatch_args": "--gres=gpu:1"}})
    bad = tmp_path / "bad.yml"
    bad.write_text("plugin: SLURM\nnode_plugin_args:\n  gpu: --gres=gpu:1\n")
    with pytest.raises(InputError, match="node_plugin_args.*cnn"):
        _load_plugin(bad, 2, None)


def test_confound_table_round_trips_through_the_cohort_file(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"mean_fd": [0.1, np.nan, 0.3], "site": ["a", None, "b"],
                          "age": [30.0, 41.5, 52.0]},
                         index=pd.Index(["01", "02", "03"], name="participant"))
    paths = jobs.write_job_inputs(tmp_path, {}, list(table.index), [1, 0, 1], np.ones((3, 2)),
                                  confounds=table)
    back = jobs.table_from_json(json.loads(open(paths["cohort"]).read())["confounds"])
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert back["site"].isna().tolist() == [False, True, False]
    assert jobs.deconfounder_for({"deconfound": None}, paths["cohort"]) is None
    deconf = jobs.deconfounder_for({"deconfound": {"covariates": ["age"], "harmonize": "site"}},
                                   paths["cohort"])
    assert deconf.covariates == ("age",) and deconf.harmonize == "site"
    bare = jobs.write_job_inputs(tmp_path / "bare", {}, ["01"], [1], np.ones((1, 2)))
    with pytest.raises(ValueError, match="no confound table"):
        jobs.deconfounder_for({"deconfound": {"covariates": ["age"]}}, bare["cohort"])


@pytest.mark.slow
def test_fold_and_final_nodes_deconfound_inside_their_fits(tmp_path):
    """A fold node fits --covariates/--harmonize on its outer-training subjects and records
    it in its manifest; the final-model node fits them on everyone and stores the fit."""
    from dpnbids.learn.splits import make_outer_splits
    from dpnbids.sim.confounded import confounded_maps

    x, y, table = confounded_maps(8, 8, confound="site", shape=(11, 12, 11), n_maps=2, seed=3)
    ids = list(table.index)
    paths = jobs.write_job_inputs(tmp_path / "in", {"ASC": x}, ids, y,
                                  np.random.default_rng(0).random((len(ids), 2)),
                                  confounds=table)
    spec = json.dumps({"name": "SSC", "selection": "in-fold", "ssc_p": 1.0,
                       "model_params": {"dense_units": 4},
                       "train_params": {"epochs": 1, "batch_size": 8, "min_epochs": 0},
                       "threshold_rule": "youden", "tune": False, "cv_seed": 1,
                       "final_seed": 2, "saliency": {"method": "none"},
                       "deconfound": {"covariates": ["age"], "harmonize": "site"}})
    fold = make_outer_splits(ids, y, n_folds=2, random_state=0)[0]
    (tmp_path / "fold").mkdir()
    out = jobs.run_cv_fold(paths["ASC"], out_dir=tmp_path / "fold", cohort=paths["cohort"],
                           summaries=paths["summaries"], spec=spec,
                           fold=json.dumps(jobs.fold_to_dict(fold)))
    record = json.loads(open(out["record"]).read())["manifests"][0]["deconfounding"]
    assert sorted(record["fitted_on"]) == sorted(fold.outer_train_ids)
    assert record["harmonize"] == "site" and record["covariates"] == ["age"]
    (tmp_path / "final").mkdir()
    final = jobs.fit_final(paths["ASC"], out_dir=tmp_path / "final", cohort=paths["cohort"],
                           summaries=paths["summaries"], spec=spec)
    data = jobs.load_final(final["record"], final["support"], final["deconfound"])
    meta, arrays = data["deconfounding"]
    assert sorted(meta["fitted_on"]) == sorted(ids) and meta["harmonize"] == "site"
    assert meta["n_channels"] == len(data["channels"]) and "c0_support" in arrays
