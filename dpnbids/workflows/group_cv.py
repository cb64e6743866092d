"""The group level's learning as a nipype workflow: one node per job, a join at the end.

::

    cv_asc_fold00 ... cv_asc_fold09      one per (input set, outer fold[, repeat])
    perm_asc_observed, perm_asc_block00 ... one per block of label permutations
    final_asc                            the final model
    pool_results                         the join: predictions, metrics, Table 2

The nodes read the cohort from ``.npy``/JSON files and hand each other files; every
node's seed comes from :meth:`dpnbids.config.Config.seed` through its spec, so the
results do not depend on the plugin (Linear, MultiProc, SLURM, SGE, PBS) or on the order
in which the nodes run, and a rerun with the same work directory reuses every finished
node. Each CNN node declares ``n_procs`` (its TensorFlow threads) and ``mem_gb`` (its
features plus TensorFlow), so MultiProc runs as many side by side as ``--nprocs`` and
``--mem-gb`` allow; on a batch system the plugin file's ``node_plugin_args: cnn:`` adds
their own scheduler arguments (``sbatch_args: --gres=gpu:1``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

#: The join's inputs and the fold nodes' outputs that feed them.
FOLD_OUTPUTS = {"predictions": "predictions", "records": "record", "saliency": "saliency"}
#: TensorFlow, Keras and one model in memory, besides the node's features.
CNN_BASE_GB = 1.5


def node_label(input_set: str) -> str:
    """'SSC-leaky' -> 'sscleaky': the input set as it appears in node (and job) names."""
    return re.sub(r"[^a-z0-9]", "", input_set.lower())


def fold_node_name(input_set: str, repeat: int, fold: int, n_repeats: int) -> str:
    """``cv_asc_fold03``; ``cv_asc_rep01_fold03`` with ``--cv-repeats`` above 1."""
    rep = f"_rep{repeat:02d}" if n_repeats > 1 else ""
    return f"cv_{node_label(input_set)}{rep}_fold{fold:02d}"


@dataclass(frozen=True)
class Job:
    """One learning node: its name, features file, spec (JSON) and fold or block."""

    name: str
    features: str
    spec: str
    mem_gb: float
    fold: str = ""
    block: int = 0


@dataclass(frozen=True)
class GroupPlan:
    """Every node of the group level's learning, as the driver planned it."""

    cohort: str
    summaries: str
    folds: list
    permutations: list
    final: Job | None
    settings: str
    n_threads: int = 1
    node_plugin_args: dict = field(default_factory=dict)
    extra_predictions: str | None = None
    extra_records: str | None = None


def init_group_cv_wf(plan: GroupPlan, base_dir, *, name="group_cv_wf") -> pe.Workflow:
    """The fold, permutation and final-model nodes of ``plan`` and their join."""
    from dpnbids.interfaces import CVFold, FinalModel, PermutationBlock, PoolGroupResults

    workflow = pe.Workflow(name=name, base_dir=str(base_dir))
    common = {"cohort": plan.cohort, "summaries": plan.summaries, "n_threads": plan.n_threads}
    pool = pe.Node(PoolGroupResults(settings=plan.settings,
                                    extra_predictions=plan.extra_predictions,
                                    extra_records=plan.extra_records),
                   name="pool_results", mem_gb=CNN_BASE_GB)
    merges = {out: pe.Node(niu.Merge(len(plan.folds)), name=f"merge_{out}",
                           run_without_submitting=True)
              for out in ("predictions", "records", "saliency")}
    for i, job in enumerate(plan.folds, start=1):
        node = _cnn_node(plan, CVFold(features=job.features, spec=job.spec, fold=job.fold,
                                      **common), job)
        workflow.connect([(node, merges[out], [(FOLD_OUTPUTS[out], f"in{i}")])
                          for out in merges])
    workflow.connect([(merges[out], pool, [("out", out)]) for out in merges])
    if plan.permutations:
        merge = pe.Node(niu.Merge(len(plan.permutations)), name="merge_permutations",
                        run_without_submitting=True)
        for i, job in enumerate(plan.permutations, start=1):
            node = _cnn_node(plan, PermutationBlock(features=job.features, spec=job.spec,
                                                    block=job.block, **common), job)
            workflow.connect(node, "out_file", merge, f"in{i}")
        workflow.connect(merge, "out", pool, "permutations")
    if plan.final is not None:
        workflow.add_nodes([_cnn_node(plan, FinalModel(features=plan.final.features,
                                                       spec=plan.final.spec, **common),
                                      plan.final)])
    return workflow


def _cnn_node(plan: GroupPlan, interface, job: Job) -> pe.Node:
    node = pe.Node(interface, name=job.name, mem_gb=job.mem_gb, n_procs=plan.n_threads)
    extra = plan.node_plugin_args.get("cnn")
    if extra:
        node.plugin_args = dict(extra)
    return node
