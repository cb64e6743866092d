"""Command-line parser for dpnbids (BIDS-Apps contract, fMRIPrep option names).

``build_parser()`` builds the parser with named option groups; validators are
bound to the parser so every bad value ends in ``parser.error`` (exit 2).
Cross-option checks that need the file system live in
:func:`dpnbids.cli.run.main` (via :mod:`dpnbids.bids`), before any output is
written.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpnbids import __version__
from dpnbids.cli import types
from dpnbids.config import DIM_ESTIMATORS, ICA_CONTRASTS, option_defaults

DEFAULTS = option_defaults()

INPUT_SETS = ("ASC", "SSC", "RSP")
SLICE_ORDERS = ("ascending", "descending", "interleaved")
DENOISE_STRATEGIES = ("conn", "24p", "acompcor", "minimal", "none")
BACK_PROJECTIONS = ("dual_regression", "gica1")
PLUGINS_HELP = "MultiProc (default when --nprocs > 1), Linear, SLURM, SGE, PBS ..."


def _bids_label(entity: str, what: str, example: str, name: str):
    """argparse type ``name``: a BIDS label, with or without its ``<entity>-`` prefix."""
    def parse(value: str) -> str:
        value = value.strip()
        if value.startswith(f"{entity}-"):
            value = value[len(entity) + 1:]
        if not value or not value.isalnum():
            raise argparse.ArgumentTypeError(
                f"{what} label {value!r} is not a BIDS label: use alphanumeric characters "
                f"only, e.g. {example}")
        return value
    parse.__name__ = parse.__qualname__ = name  # docker/make_boutiques.py keys types by name
    return parse


_strip_sub = _bids_label("sub", "participant", "'01' or 'sub-01'", "_strip_sub")
_strip_ses = _bids_label("ses", "session", "'01' or 'ses-01'", "_strip_ses")
_task_label = _bids_label("task", "task", "'rest'", "_task_label")


_positive_int = types.positive_int
_nonneg_int = types.nonneg_int
_positive_float = types.positive_float
_nonneg_float = types.nonneg_float


def _folds(value: str) -> int:
    folds = types.positive_int(value)
    if folds < 2:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 2 (cross-validation needs a training and a test fold), "
            f"got {value!r}")
    return folds


def _n_components(value: str):
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return types.positive_int(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {value!r}") from None


def _resolution(value: str):
    """--output-resolution: millimetres (float) or a res label ('res-2' -> '2')."""
    text = value.strip()
    if text.startswith("res-"):
        label = text[4:]
        if not label or not label.isalnum():
            raise argparse.ArgumentTypeError(f"expected a res label like res-2, got {value!r}")
        return label
    return types.positive_float(text)
_probability = types.probability


def _dropout(value: str) -> float:
    fvalue = _nonneg_float(value)
    if fvalue >= 1:
        raise argparse.ArgumentTypeError(f"expected a dropout rate in [0, 1), got {value!r}")
    return fvalue


def _existing_file(value: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {value!r} does not exist")
    return path


def _existing_dir(value: str) -> Path:
    path = Path(value).expanduser().absolute()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"directory {value!r} does not exist")
    return path


def _bids_filter(value: str) -> dict:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"BIDS filter file {value!r} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file {value!r} is not valid JSON ({exc}); expected an object such as "
            '{"bold": {"session": "01"}, "t1w": {"acquisition": null}}') from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise argparse.ArgumentTypeError(
            f"BIDS filter file {value!r} must hold a JSON object mapping query names "
            '("bold", "t1w") to objects of BIDS entities, e.g. {"bold": {"session": "01"}}')
    unknown = sorted(set(data) - {"bold", "t1w", "sbref"})
    if unknown:
        raise argparse.ArgumentTypeError(
            f"BIDS filter file {value!r} has unknown queries {unknown}; "
            "expected only 'bold' and 't1w' (and 'sbref')")
    return data


def _input_set(value: str) -> str:
    upper = value.strip().upper()
    if upper not in INPUT_SETS:
        raise argparse.ArgumentTypeError(
            f"unknown input set {value!r}; choose from {', '.join(INPUT_SETS)}")
    return upper


def build_parser() -> argparse.ArgumentParser:
    """Build the dpnbids argument parser."""
    parser = argparse.ArgumentParser(
        prog="dpnbids",
        description=(
            "dpnbids: predict response to IV lidocaine in painful diabetic neuropathy from "
            "resting-state fMRI (Teh et al., Neuroinformatics 2023), without data leakage. "
            "Run 'participant' (preprocessing, denoising; dual regression or prediction with "
            "--group-maps/--model) and then 'group' (group ICA, dual regression, component "
            "statistics, 3D-CNN nested cross-validation, final model)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("bids_dir", type=Path,
                        help="the root folder of a BIDS dataset (sub-XX folders at the top level)")
    parser.add_argument("output_dir", type=Path,
                        help="the output folder (a BIDS derivatives dataset); must not be inside "
                             "bids_dir except under bids_dir/derivatives/")
    parser.add_argument("analysis_level", choices=["participant", "group"],
                        help="processing stage: 'participant' per subject, 'group' across subjects")
    parser.add_argument("--version", action="version", version=f"dpnbids {__version__}")

    g_bids = parser.add_argument_group("Options for filtering BIDS queries")
    g_bids.add_argument("--participant-label", "--participant_label", dest="participant_label",
                        nargs="+", type=_strip_sub, metavar="LABEL",
                        help="participants to process ('01' or 'sub-01'); default: all")
    g_bids.add_argument("--session-label", dest="session_label", nargs="+", type=_strip_ses,
                        metavar="LABEL", help="sessions to process ('01' or 'ses-01'); default: all")
    g_bids.add_argument("--task-id", dest="task_id", type=_task_label, default=DEFAULTS["task_id"],
                        help="the BOLD task to process")
    g_bids.add_argument("--bids-filter-file", dest="bids_filter_file", type=_bids_filter,
                        metavar="FILE",
                        help="JSON file of BIDS entity filters per query ('bold', 't1w'), as in "
                             "fMRIPrep")
    g_bids.add_argument("--skip-bids-validation", "--skip_bids_validation",
                        dest="skip_bids_validation", action="store_true",
                        help="do not run bids-validator-deno on the input dataset")
    g_bids.add_argument("--responder-column", dest="responder_column", default=DEFAULTS["responder_column"],
                        help="participants.tsv column with the treatment response label "
                             "(1/0, true/false, yes/no, responder/non-responder, R/NR; n/a = unknown)")

    g_perf = parser.add_argument_group("Options to handle performance")
    g_perf.add_argument("--nprocs", "--n-cpus", "--n_cpus", dest="nprocs", type=_positive_int,
                        help="maximum number of processes (MultiProc); default: all available CPUs")
    g_perf.add_argument("--omp-nthreads", dest="omp_nthreads", type=_positive_int,
                        help="maximum threads per process (ANTs/ITK, BLAS, Keras); "
                             "default: min(8, nprocs)")
    g_perf.add_argument("--mem-gb", "--mem", dest="mem_gb", type=_positive_float,
                        help="upper bound on memory use in GB, given to the nipype scheduler")
    g_perf.add_argument("--use-plugin", "--use_plugin", dest="use_plugin", type=_existing_file,
                        metavar="FILE",
                        help="nipype plugin YAML (plugin: SLURM|SGE|PBS|MultiProc|Linear, "
                             "plugin_args: {...}) as in fMRIPrep")
    g_perf.add_argument("-w", "--work-dir", dest="work_dir", type=Path,
                        help="nipype working directory; rerunning with the same one resumes a "
                             "killed run (default: .NAME_work beside OUTPUT_DIR, NAME being "
                             "OUTPUT_DIR's name; it can be deleted after a successful run)")
    g_perf.add_argument("--stop-on-first-crash", dest="stop_on_first_crash", action="store_true",
                        help="stop at the first failed node instead of finishing other subjects")

    g_pre = parser.add_argument_group("Preprocessing (participant level)")
    g_pre.add_argument("--output-space", dest="output_space", default=DEFAULTS["output_space"],
                       help="template space of all template-space outputs, spelt as in "
                            "fMRIPrep (NAME[:cohort-X][:res-Y], e.g. MNI152NLin2009cAsym, "
                            "MNIPediatricAsym:cohort-1); MNI152NLin2009aSym works offline "
                            "for the built-in preprocessing; with --fmriprep-dir any space "
                            "fMRIPrep wrote works offline")
    g_pre.add_argument("--output-resolution", dest="output_resolution",
                       type=_resolution, default=None,
                       help="voxel size of template-space BOLD: mm (2, 1.5) or a res label "
                            "(res-2). Built-in preprocessing: default 2 mm. With "
                            "--fmriprep-dir: default the data's (the desc-preproc_bold that "
                            "exists, with or without res-; the finest of several); anisotropic "
                            "or mixed grids are resampled once, at the group level, onto one "
                            "isotropic grid of the coarsest input voxel size (or this one)")
    g_pre.add_argument("--fmriprep-dir", dest="fmriprep_dir", type=_existing_dir, metavar="DIR",
                       help="use fMRIPrep derivatives in DIR instead of built-in preprocessing "
                            "(desc-preproc_bold in --output-space plus confounds)")
    g_pre.add_argument("--dummy-scans", dest="dummy_scans", type=_nonneg_int,
                       help="number of non-steady-state volumes to drop; default: detect")
    g_pre.add_argument("--slice-order", dest="slice_order", choices=SLICE_ORDERS,
                       help="slice acquisition order used when SliceTiming is missing; without it "
                            "slice-timing correction is skipped with a warning")
    g_pre.add_argument("--smoothing-fwhm", dest="smoothing_fwhm", type=_nonneg_float, default=DEFAULTS["smoothing_fwhm"],
                       help="Gaussian smoothing kernel FWHM in mm (0 disables)")
    g_pre.add_argument("--denoise-strategy", dest="denoise_strategy", choices=DENOISE_STRATEGIES,
                       default=DEFAULTS["denoise_strategy"],
                       help="confound regression strategy applied with band-pass filtering")
    g_pre.add_argument("--high-pass", dest="high_pass", type=_nonneg_float, default=DEFAULTS["high_pass"],
                       help="high-pass cut-off (Hz) of the band-pass filter (0 disables)")
    g_pre.add_argument("--low-pass", dest="low_pass", type=_nonneg_float, default=DEFAULTS["low_pass"],
                       help="low-pass cut-off (Hz) of the band-pass filter (0 disables)")
    g_pre.add_argument("--fd-thresh", dest="fd_thresh", type=_nonneg_float, default=None,
                       metavar="MM",
                       help="censor volumes with framewise displacement above MM (and fMRIPrep "
                            "motion_outlier spikes) before band-pass; default: off, as the paper")
    g_pre.add_argument("--min-volumes", dest="min_volumes", type=_positive_int, default=DEFAULTS["min_volumes"],
                       help="minimum number of BOLD volumes after dropping dummy scans")

    g_ica = parser.add_argument_group("Group ICA and dual regression")
    g_ica.add_argument("--pca-dim", dest="pca_dim", type=_positive_int, default=DEFAULTS["pca_dim"],
                       help="group PCA dimension (MIGP) before ICA")
    g_ica.add_argument("--n-components", dest="n_components", type=_n_components,
                       default=None,
                       help="number of independent components, or 'auto': estimated from the "
                            "data (see --dim-est) and capped by the smallest run's temporal "
                            "degrees of freedom and --pca-dim (default: auto; 30, the "
                            "paper's, with --paper-faithful unless this is given)")
    g_ica.add_argument("--dim-est", dest="dim_est", choices=DIM_ESTIMATORS, default=DEFAULTS["dim_est"],
                       help="model-order estimator of --n-components auto: Laplace (Minka "
                            "2000, MELODIC's default), MDL (GIFT; Li et al. 2007), AIC or BIC, "
                            "with a correction for spatial smoothness")
    g_ica.add_argument("--ica-repeats", dest="ica_repeats", type=_positive_int, default=DEFAULTS["ica_repeats"],
                       help="FastICA runs clustered ICASSO-style for a stability index (1: no reruns)")
    g_ica.add_argument("--ica-contrast", dest="ica_contrast", choices=ICA_CONTRASTS,
                       default=DEFAULTS["ica_contrast"],
                       help="FastICA contrast: auto (default) runs skew and cube from one start "
                            "and keeps the solution with the larger negentropy; cube is "
                            "MELODIC's pow3")
    g_ica.add_argument("--back-projection", dest="back_projection", choices=BACK_PROJECTIONS,
                       default=DEFAULTS["back_projection"],
                       help="how subject maps are obtained: dual regression (FSL) or GIFT's GICA1")
    g_ica.add_argument("--group-maps", dest="group_maps", type=_existing_file, metavar="FILE",
                       help="participant level: dual-regress new participants against these 4D "
                            "group ICA maps")
    g_ica.add_argument("--ssc-p", dest="ssc_p", type=_probability, default=DEFAULTS["ssc_p"],
                       help="p threshold selecting components for the SSC input set")
    g_ica.add_argument("--component-threshold", dest="component_threshold", type=_positive_float,
                       default=DEFAULTS["component_threshold"],
                       help="|z| threshold of group maps used for subject summaries and labels")

    g_cnn = parser.add_argument_group("3D-CNN and cross-validation (group level)")
    g_cnn.add_argument("--model", dest="model", type=_existing_dir, metavar="MODEL_DIR",
                       help="participant level: predict response with this trained model folder "
                            "(OUTPUT_DIR/group/model of a previous group run)")
    g_cnn.add_argument("--input-sets", dest="input_sets", nargs="+", type=_input_set,
                       default=list(DEFAULTS["input_sets"]), metavar="SET",
                       help="input sets to evaluate: ASC (all maps), SSC (selected maps), "
                            "RSP (preprocessed BOLD volumes)")
    g_cnn.add_argument("--rsp-volumes", dest="rsp_volumes", type=_positive_int, default=DEFAULTS["rsp_volumes"],
                       help="number of BOLD volumes (channels) in the RSP input set")
    g_cnn.add_argument("--folds", dest="folds", type=_folds, default=DEFAULTS["folds"],
                       help="outer stratified cross-validation folds (at least 2)")
    g_cnn.add_argument("--cv-repeats", dest="cv_repeats", type=_positive_int, default=DEFAULTS["cv_repeats"],
                       help="repeats of the outer cross-validation with different splits")
    g_cnn.add_argument("--n-permutations", dest="n_permutations", type=_nonneg_int, default=DEFAULTS["n_permutations"],
                       help="label permutations rerunning the whole CV for an AUC p-value")
    g_cnn.add_argument("--n-bootstrap", dest="n_bootstrap", type=_nonneg_int, default=DEFAULTS["n_bootstrap"],
                       help="bootstrap resamples for 95%% confidence intervals")
    g_cnn.add_argument("--paper-faithful", dest="paper_faithful", action="store_true",
                       help="also run the paper's LEAKY procedure (SSC chosen on all subjects), "
                            "labelled as leaky")
    g_cnn.add_argument("--ica-in-folds", dest="ica_in_folds", action="store_true",
                       help="strict mode: refit group ICA and dual regression within each "
                            "outer training fold")
    g_cnn.add_argument("--tune", dest="tune", action="store_true",
                       help="inner-fold search over the paper's hyperparameter grids")
    g_cnn.add_argument("--epochs", dest="epochs", type=_positive_int, default=DEFAULTS["epochs"],
                       help="maximum training epochs")
    g_cnn.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=DEFAULTS["batch_size"],
                       help="mini-batch size")
    g_cnn.add_argument("--learning-rate", dest="learning_rate", type=_positive_float,
                       default=DEFAULTS["learning_rate"], help="Adam learning rate")
    g_cnn.add_argument("--adam-epsilon", dest="adam_epsilon", type=_positive_float, default=DEFAULTS["adam_epsilon"],
                       help="Adam epsilon")
    g_cnn.add_argument("--dropout", dest="dropout", type=_dropout, default=DEFAULTS["dropout"],
                       help="dropout rate")
    g_cnn.add_argument("--dense-units", dest="dense_units", type=_positive_int, default=DEFAULTS["dense_units"],
                       help="units of the dense layer")
    g_cnn.add_argument("--patience", dest="patience", type=_positive_int, default=DEFAULTS["patience"],
                       help="early-stopping patience (epochs) on the inner validation loss")
    g_cnn.add_argument("--min-epochs", dest="min_epochs", type=_nonneg_int, default=DEFAULTS["min_epochs"],
                       help="epochs trained before early stopping may stop (a warm-up: the "
                            "validation loss of a few subjects is noisy while the network "
                            "starts to learn)")
    g_cnn.add_argument("--cnn-voxel-size", dest="cnn_voxel_size", type=_positive_float,
                       default=None,
                       help="voxel size (mm) of the CNN input grid (default: the model's "
                            "documented default)")
    g_cnn.add_argument("--mixed-precision", dest="mixed_precision", action="store_true",
                       help="train in mixed precision: float16 on a GPU, bfloat16 on a CPU "
                            "(fast on CPUs with AVX-512 BF16/AMX; see benchmarks/README.md)")

    g_other = parser.add_argument_group("Other options")
    g_other.add_argument("--random-seed", dest="random_seed", type=_nonneg_int, default=DEFAULTS["random_seed"],
                         help="the one seed every random choice derives from")
    g_other.add_argument("-v", "--verbose", dest="verbose", action="count", default=DEFAULTS["verbose"],
                         help="increase verbosity (-v info, -vv debug)")
    return parser


def parse_args(argv=None):
    """Parse ``argv`` into an :class:`argparse.Namespace` (exit 2 on bad options)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fmriprep_dir is None:
        if ":" in str(args.output_space):
            parser.error(f"--output-space {args.output_space}: cohort/res modifiers select "
                         "fMRIPrep files and need --fmriprep-dir; for the built-in "
                         "preprocessing give the voxel size with --output-resolution")
        if isinstance(args.output_resolution, str) and not args.output_resolution.isdigit():
            parser.error(f"--output-resolution res-{args.output_resolution}: a res label "
                         "selects fMRIPrep files (--fmriprep-dir); for the built-in "
                         "preprocessing give millimetres, e.g. --output-resolution 2")
    if args.n_components is None:  # not given: the paper's fixed order in paper mode
        args.n_components = 30 if args.paper_faithful else "auto"
    if args.n_components != "auto" and args.pca_dim < args.n_components:
        parser.error(f"--pca-dim ({args.pca_dim}) must be >= --n-components "
                     f"({args.n_components}); lower --n-components or raise --pca-dim")
    if args.low_pass and args.high_pass and args.low_pass <= args.high_pass:
        parser.error(f"--low-pass ({args.low_pass} Hz) must be above --high-pass "
                     f"({args.high_pass} Hz)")
    if args.model is not None and args.group_maps is not None:
        parser.error("--model already contains group maps; give --model or --group-maps, not both")
    if args.analysis_level == "group" and (args.model is not None or args.group_maps is not None):
        parser.error("--model and --group-maps apply to the participant level only")
    return parser, args
