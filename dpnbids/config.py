"""One frozen configuration object, built from the command line.

The configuration is split in sections (execution, selection, preprocessing,
ICA, CNN) of frozen dataclasses.  It is dumped as TOML into
``OUTPUT_DIR/logs/`` for provenance.  Every random seed in the program derives
from ``--random-seed`` through :meth:`Config.seed`, which maps a purpose name
(e.g. ``"ica"``, ``"cv.splits"``) to an independent 32-bit seed with
:class:`numpy.random.SeedSequence`, so adding a new consumer never shifts the
seeds of the others.
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpnbids import __version__


def derive_seed(base_seed, purpose: str | int, *, bits: int = 31) -> int:
    """Return a seed for ``purpose`` derived from ``base_seed``: the one seed scheme.

    Every seed of the program is a child of ``--random-seed`` in numpy's
    ``SeedSequence`` tree: ``purpose`` is a name (``"ica"``, ``"cv.ASC"``; its
    CRC-32 is the spawn key) or an index (the i-th child, e.g. the i-th CV
    repeat or fold). Deterministic across runs, platforms and Python hash
    seeds. ``bits=31`` (the default) suits ANTs and other C libraries, which
    take a signed 32-bit seed and fail above 2**31 - 1; ``base_seed=None``
    draws fresh entropy.
    """
    key = zlib.crc32(purpose.encode("utf-8")) if isinstance(purpose, str) else int(purpose)
    entropy = None if base_seed is None else int(base_seed)
    seq = np.random.SeedSequence(entropy=entropy, spawn_key=(key,))
    return int(seq.generate_state(1, dtype=np.uint32)[0]) & ((1 << bits) - 1)


#: Choices of ``--dim-est`` and ``--ica-contrast``, shared by the parser and
#: :mod:`dpnbids.analysis` (defined here so the parser need not import scipy).
DIM_ESTIMATORS = ("pooled", "lap", "mdl", "aic", "bic")
#: The paper's fixed number of ICA components (the default with ``paper_faithful``).
PAPER_N_COMPONENTS = 30
ICA_CONTRASTS = ("auto", "cube", "skew", "logcosh", "exp")
#: Choices of ``--cv-scheme``.
CV_SCHEMES = ("stratified", "leave-group-out")
KERAS_BACKENDS = ("auto", "tensorflow", "jax", "torch")


@dataclass(frozen=True)
class ExecutionConfig:
    bids_dir: Path
    output_dir: Path
    analysis_level: str
    work_dir: Path
    nprocs: int
    omp_nthreads: int
    mem_gb: float | None = None
    use_plugin: Path | None = None
    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    #: Per kind of node (``cnn``: CV folds, permutation blocks, final model), the
    #: plugin arguments a node adds (``sbatch_args: --gres=gpu:1``): ``node_plugin_args``.
    node_plugin_args: dict = field(default_factory=dict)
    stop_on_first_crash: bool = False
    verbose: int = 0
    skip_bids_validation: bool = False
    command_line: str = ""
    container: str | None = None
    keras_backend: str = "auto"


@dataclass(frozen=True)
class SelectionConfig:
    participant_label: tuple[str, ...] | None = None
    session_label: tuple[str, ...] | None = None
    task_id: str = "rest"
    bids_filters: dict = field(default_factory=dict)
    responder_column: str = "responder"


@dataclass(frozen=True)
class PreprocConfig:
    output_space: str = "MNI152NLin2009aSym"
    #: mm (float), a res label (str) or None: built-in preprocessing 2 mm, fMRIPrep input
    #: the data's own (see :mod:`dpnbids.preproc.fmriprep`)
    output_resolution: float | str | None = None
    fmriprep_dir: Path | None = None
    dummy_scans: int | None = None
    slice_order: str | None = None
    smoothing_fwhm: float = 5.0
    denoise_strategy: str = "conn"
    high_pass: float = 0.008
    low_pass: float = 0.09
    min_volumes: int = 50
    fd_thresh: float | None = None

    def __post_init__(self):
        from dpnbids.exceptions import ConfigError

        if self.fmriprep_dir is None and ":" in str(self.output_space):
            raise ConfigError(
                f"`output_space` {self.output_space}: cohort/res modifiers select fMRIPrep files "
                "and need `fmriprep_dir`; for the built-in preprocessing give the voxel size "
                "with `output_resolution`")
        res = self.output_resolution
        if self.fmriprep_dir is None and isinstance(res, str) and not res.isdigit():
            raise ConfigError(
                f"`output_resolution` res-{res}: a res label selects fMRIPrep files "
                "(`fmriprep_dir`); for the built-in preprocessing give millimetres, e.g. "
                "`output_resolution` 2")
        if self.low_pass and self.high_pass and self.low_pass <= self.high_pass:
            raise ConfigError(f"`low_pass` ({self.low_pass} Hz) must be above `high_pass` "
                              f"({self.high_pass} Hz)")

    @property
    def resolution_mm(self) -> float:
        """Isotropic voxel size (mm) of the built-in preprocessing's template-space outputs."""
        if self.output_resolution is None:
            return 2.0
        return float(self.output_resolution)


@dataclass(frozen=True)
class ICAConfig:
    pca_dim: int = 64
    n_components: int | str = "auto"
    dim_est: str = "pooled"
    ica_repeats: int = 1
    ica_contrast: str = "auto"
    back_projection: str = "dual_regression"
    group_maps: Path | None = None
    ssc_p: float = 0.1
    component_threshold: float = 2.0

    def __post_init__(self):
        from dpnbids.exceptions import ConfigError

        if self.n_components != "auto" and self.pca_dim < int(self.n_components):
            raise ConfigError(f"`pca_dim` ({self.pca_dim}) must be >= `n_components` "
                              f"({self.n_components}); lower `n_components` or raise `pca_dim`")


@dataclass(frozen=True)
class CNNConfig:
    model: Path | None = None
    input_sets: tuple[str, ...] = ("ASC", "SSC", "RSP")
    rsp_volumes: int = 30
    # cross-validation and what is reported from it
    folds: int = 10
    cv_repeats: int = 1
    ica_in_folds: bool = False
    threshold_rule: str = "youden"
    n_bootstrap: int = 1000
    n_permutations: int = 0
    n_permutations_baselines: int = 1000
    paper_faithful: bool = False
    tune: bool = False
    # training
    epochs: int = 100
    batch_size: int = 4
    patience: int = 10
    min_epochs: int = 10
    inner_folds: int = 1
    early_stopping: str = "loss"
    augment: bool = False
    class_balance: bool = False
    mixed_precision: bool = False
    # the network and its optimiser
    learning_rate: float = 1e-3
    adam_epsilon: float = 1e-3
    weight_decay: float = 0.0
    dropout: float = 0.3
    dense_units: int = 128
    cnn_voxel_size: float | None = None
    saliency: str = "integrated-gradients"
    saliency_fwhm: float = 8.0
    # confounds (dpnbids.learn.confounds)
    cv_scheme: str = "stratified"
    cv_group: str | None = None
    covariates: tuple[str, ...] | None = None
    harmonize: str | None = None

    def __post_init__(self):
        from dpnbids.exceptions import ConfigError

        problem = confound_option_problem(self)
        if problem:
            raise ConfigError(problem)


def confound_option_problem(options) -> str | None:
    """What is wrong with the combination of --cv-scheme, --cv-group, --covariates and
    --harmonize (and --cv-repeats) in ``options`` (parsed arguments or a CNNConfig), or
    None. The parser and :class:`CNNConfig` both apply it."""
    scheme, group = getattr(options, "cv_scheme", "stratified"), getattr(options, "cv_group", None)
    covariates = tuple(getattr(options, "covariates", None) or ())
    harmonize = getattr(options, "harmonize", None)
    if scheme == "leave-group-out" and not group:
        return ("`cv_scheme` leave-group-out needs `cv_group` COL, the participants.tsv "
                "column whose levels are the test folds (e.g. `cv_group` site)")
    if group and scheme != "leave-group-out":
        return f"`cv_group` {group} applies to `cv_scheme` leave-group-out only; add it"
    if scheme == "leave-group-out" and getattr(options, "cv_repeats", 1) != 1:
        return ("`cv_scheme` leave-group-out has one fixed fold per group: `cv_repeats` "
                "must be 1")
    if harmonize and harmonize in covariates:
        return (f"{harmonize} is given to both `harmonize` and `covariates`; ComBat removes "
                "its effect already: name it once")
    if len(set(covariates)) != len(covariates):
        return f"`covariates` names a column twice: {' '.join(covariates)}"
    return None


@dataclass(frozen=True)
class Config:
    """The whole run configuration (frozen)."""

    execution: ExecutionConfig
    selection: SelectionConfig
    preproc: PreprocConfig
    ica: ICAConfig
    cnn: CNNConfig
    random_seed: int = 0
    version: str = __version__

    def __post_init__(self):
        check_level_rules(self.execution.analysis_level, self.cnn.model, self.ica.group_maps)

    def seed(self, purpose: str) -> int:
        """Seed for ``purpose``, derived from ``--random-seed``."""
        return derive_seed(self.random_seed, purpose)

    def to_dict(self) -> dict:
        """Plain, TOML-serialisable dictionary (paths as strings, None dropped)."""
        return _plain(dataclasses.asdict(self))

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(self.to_dict())


SECTIONS = {"execution": ExecutionConfig, "selection": SelectionConfig,
            "preproc": PreprocConfig, "ica": ICAConfig, "cnn": CNNConfig}


def option_defaults() -> dict:
    """Every configuration field's default, by field name: the one source of the command
    line's defaults (the parser reads them from here)."""
    out = {}
    for cls in (*SECTIONS.values(), Config):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
    return out


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj if v is not None]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    return obj


def _check_plugin_name(path: Path, name: str) -> None:
    """The plugin named in a --use-plugin file must be one nipype has."""
    from nipype.pipeline import plugins

    from dpnbids.exceptions import InputError

    known = sorted(n[:-len("Plugin")] for n in dir(plugins)
                   if n.endswith("Plugin") and n != "Plugin")
    if name not in known:
        raise InputError(f"plugin file {path} names the plugin {name!r}, which nipype does not "
                         f"have. Expected one of: {', '.join(known)} (names are "
                         "case-sensitive).")


def _load_plugin(path: Path | None, nprocs: int,
                 mem_gb: float | None) -> tuple[str, dict, dict]:
    """Read an fMRIPrep-style plugin YAML; default to MultiProc/Linear.

    Returns the plugin, its arguments and ``node_plugin_args``: per kind of node
    (``cnn``), the arguments those nodes add, e.g. ``{"cnn": {"sbatch_args":
    "--gres=gpu:1"}}`` (nipype appends a node's ``sbatch_args``/``qsub_args`` to the
    plugin's, or replaces them with ``overwrite: true``)."""
    from dpnbids.exceptions import InputError

    if path is None:
        # forkserver, as fMRIPrep: a worker forked from a process that already runs
        # TensorFlow threads (a Python session, a test runner) can hang forever.
        # maxtasksperchild, as fMRIPrep, applies to LegacyMultiProc only: MultiProc keeps
        # its workers (and their imports) for the whole run
        args = {"n_procs": nprocs, "raise_insufficient": False, "maxtasksperchild": 1,
                "mp_context": "forkserver"}
        if mem_gb:
            args["memory_gb"] = mem_gb
        return ("MultiProc" if nprocs > 1 else "Linear"), args, {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"plugin file {path} is not valid YAML ({exc}); expected e.g.\n"
                         "plugin: SLURM\nplugin_args:\n  sbatch_args: --time=2:00:00") from None
    if not isinstance(data, dict) or not isinstance(data.get("plugin"), str):
        raise InputError(f"plugin file {path} must define 'plugin:' (MultiProc, Linear, SLURM, "
                         "SGE, PBS ...) and optionally 'plugin_args:' as in fMRIPrep")
    _check_plugin_name(path, data["plugin"])
    plugin_args = data.get("plugin_args") or {}
    if not isinstance(plugin_args, dict):
        raise InputError(f"plugin file {path}: 'plugin_args' must be a mapping")
    node_args = data.get("node_plugin_args") or {}
    if not isinstance(node_args, dict) or any(
            k not in NODE_KINDS or not isinstance(v, dict) for k, v in node_args.items()):
        raise InputError(f"plugin file {path}: 'node_plugin_args' must map a kind of node "
                         f"({', '.join(NODE_KINDS)}) to plugin arguments, e.g.\n"
                         "node_plugin_args:\n  cnn:\n    sbatch_args: --gres=gpu:1")
    if data["plugin"] == "MultiProc":
        plugin_args.setdefault("n_procs", nprocs)
        plugin_args.setdefault("mp_context", "forkserver")
        if mem_gb:
            plugin_args.setdefault("memory_gb", mem_gb)
    return data["plugin"], plugin_args, node_args


#: Kinds of node a plugin file may give their own arguments (``node_plugin_args``).
NODE_KINDS = ("cnn",)


def _section(cls, args, **overrides):
    """One config section from the parsed arguments of the same names (``overrides`` win;
    a field the arguments lack keeps its default)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def resolve_n_components(given, paper_faithful: bool) -> int | str:
    """``given`` (an int, ``"auto"`` or None); None: the paper's 30 with ``paper_faithful``,
    :class:`ICAConfig`'s default otherwise."""
    if given is not None:
        return given
    return PAPER_N_COMPONENTS if paper_faithful else ICAConfig.n_components


def check_level_rules(analysis_level: str, model, group_maps) -> None:
    """A saved model and group maps are alternatives, and apply to the participant level."""
    from dpnbids.exceptions import ConfigError

    if model is not None and group_maps is not None:
        raise ConfigError("`model` already contains group maps; give `model` or "
                          "`group_maps`, not both")
    if analysis_level == "group" and (model is not None or group_maps is not None):
        raise ConfigError("`model` and `group_maps` apply to the participant level only")


def option_sections(args) -> dict:
    """The selection, preprocessing, ICA and CNN sections from parsed arguments.

    Building them runs every rule between options (the sections' ``__post_init__``), without
    reading or writing any file; :class:`ConfigError` names the fields at fault.
    """
    selection = _section(
        SelectionConfig, args,
        participant_label=tuple(args.participant_label) if args.participant_label else None,
        session_label=tuple(args.session_label) if args.session_label else None,
        bids_filters=args.bids_filter_file or {})
    preproc = _section(PreprocConfig, args, fd_thresh=args.fd_thresh or None)
    ica = _section(ICAConfig, args, n_components=resolve_n_components(
        args.n_components, args.paper_faithful))
    cnn = _section(CNNConfig, args, input_sets=tuple(dict.fromkeys(args.input_sets)),
                   covariates=tuple(args.covariates) if getattr(args, "covariates", None)
                   else None)
    check_level_rules(args.analysis_level, cnn.model, ica.group_maps)
    return {"selection": selection, "preproc": preproc, "ica": ica, "cnn": cnn}


def available_cpus(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota.

    A 4-core SLURM job on a 64-core node sees 4 (affinity, or the cgroup's ``cpu.max``
    quota of 400000/100000), not 64.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_quota(Path(cgroup_root))
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), if limited."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return float(text[0]) / float(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def default_omp_nthreads(nprocs: int) -> int:
    """Threads per process when ``--omp-nthreads`` is not given: ``nprocs - 1``, at most 8,
    at least 1 (fMRIPrep's rule). Two processes on two CPUs then run two subjects, or two
    cross-validation folds, side by side with one thread each, instead of one multi-threaded
    node at a time (ITK and the CNN's kernels scale worse with threads than with processes),
    and one-thread registrations are bit-reproducible."""
    return max(1, min(8, int(nprocs) - 1))


def config_from_args(args, argv=None) -> Config:
    """Build the frozen :class:`Config` from parsed arguments."""
    nprocs = args.nprocs or available_cpus()
    omp = args.omp_nthreads or default_omp_nthreads(nprocs)
    output_dir = Path(args.output_dir).expanduser().absolute()
    work_dir = (Path(args.work_dir).expanduser().absolute() if args.work_dir
                else output_dir.parent / f".{output_dir.name}_work")
    plugin, plugin_args, node_args = _load_plugin(args.use_plugin, nprocs, args.mem_gb)
    execution = _section(
        ExecutionConfig, args, bids_dir=Path(args.bids_dir).expanduser().absolute(),
        output_dir=output_dir, work_dir=work_dir, nprocs=nprocs, omp_nthreads=omp,
        plugin=plugin, plugin_args=plugin_args, node_plugin_args=node_args,
        command_line=" ".join(["dpnbids", *(argv if argv is not None else sys.argv[1:])]),
        container=os.environ.get("DPNBIDS_CONTAINER"))
    return Config(execution=execution, **option_sections(args), random_seed=args.random_seed)


def nipype_poll_seconds(plugin: str) -> float:
    """How long nipype's scheduler sleeps between polls.

    nipype's default (2 s) suits batch schedulers (SLURM, SGE, PBS), but on one
    machine it adds ~2 s per node, which dominates short nodes (minutes for a
    cohort's dual regression); local plugins poll every 50 ms instead.
    """
    return 0.05 if plugin in ("MultiProc", "Linear", "LegacyMultiProc") else 2.0


#: nipype plugins that run nodes in a pool of local worker processes
LOCAL_POOL_PLUGINS = ("MultiProc", "LegacyMultiProc")


def run_workflow(workflow, config: "Config"):
    """Run a nipype workflow with the run's plugin; return its executed graph.

    nipype's MultiProc calls ``gc.collect()`` before every round of submissions, hundreds
    of times in a run, and each pass walks every object of this process (the dataset index,
    the imported modules): about 0.14 s a pass, 10 s of a 34 s participant run on 10
    subjects (benchmarks/results/2026-12-08-participant-nprocs.md). The objects that exist
    when the workflow starts outlive it anyway, so they are frozen out of the collector for
    the run (:func:`gc.freeze`); the run's own garbage is still collected.

    Light nodes (derivative sinks, summaries, reports) are marked to run in the scheduler's
    own process, where a batch scheduler's job would cost more than the node. With MultiProc
    they go to the worker pool instead: nipype's own cost per node (about 0.3 s of hashing
    and result files) then runs on every core, not serially in the scheduler's loop.
    """
    import gc

    if config.execution.plugin in LOCAL_POOL_PLUGINS:
        for node in workflow._get_all_nodes():  # nipype has no public list of a graph's nodes
            node.run_without_submitting = False
    gc.collect()
    gc.freeze()
    try:
        return workflow.run(plugin=config.execution.plugin,
                            plugin_args=config.execution.plugin_args)
    finally:
        gc.unfreeze()


def uses_forkserver(execution) -> bool:
    """Whether the run's nipype workers are forked from MultiProc's forkserver."""
    return execution.plugin == "MultiProc" and execution.plugin_args.get("mp_context") == \
        "forkserver"


#: Modules the forkserver imports once, so each nipype worker starts in milliseconds.
FORKSERVER_PRELOAD = ["numpy", "scipy.ndimage", "nibabel", "pandas", "nipype.pipeline.engine",
                      "dpnbids.interfaces", "dpnbids.preproc.pipeline", "dpnbids.analysis.dual_regression"]


def prepare_nipype(config: "Config", execution: dict | None = None) -> None:
    """Set nipype up for one workflow run of ``config``.

    Crash files go to ``OUTPUT_DIR/logs`` (as text), node hashes use file content,
    the scheduler polls at :func:`nipype_poll_seconds`, the work directory exists,
    and a MultiProc forkserver preloads :data:`FORKSERVER_PRELOAD`. With a local pool,
    nipype's extra hash check in the scheduler's loop is off (MultiProc hashes every node
    there once more anyway, and a cached node's worker only collects its result); a batch
    scheduler keeps it, so that a resumed run submits no job for a finished node.
    ``execution`` adds or overrides nipype ``execution`` options.
    """
    from nipype import config as ncfg

    ex = config.execution
    options = {"crashdump_dir": str(ex.output_dir / "logs"), "crashfile_format": "txt",
               "local_hash_check": ex.plugin not in LOCAL_POOL_PLUGINS,
               "hash_method": "content", "poll_sleep_duration": nipype_poll_seconds(ex.plugin)}
    options.update(execution or {})
    ncfg.update_config({"execution": options, "monitoring": {"enabled": False}})
    ex.work_dir.mkdir(parents=True, exist_ok=True)
    if ex.plugin not in ("MultiProc", "Linear", "LegacyMultiProc"):
        import getpass

        # nipype's batch plugins name each job after $LOGNAME, unset in many containers
        os.environ.setdefault("LOGNAME", getpass.getuser())
    if uses_forkserver(ex):
        import multiprocessing

        multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
