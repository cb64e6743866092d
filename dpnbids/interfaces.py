"""Thin nipype interfaces over the pure functions of dpnbids.

Each interface only moves file names and simple values in and out; the
maths lives in :mod:`dpnbids.preproc`, :mod:`dpnbids.analysis.ica`,
:mod:`dpnbids.analysis.dual_regression` and friends, which never import nipype.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface,
                                    TraitedSpec, isdefined, traits)

from dpnbids.config import option_defaults
from dpnbids.derivatives import sibling


_DEFAULTS = option_defaults()


def _cwd() -> Path:
    return Path(os.getcwd())


def _inputs(inputs, *names) -> dict:
    """``{name: value}`` of the given inputs, None for those left undefined."""
    values = {n: getattr(inputs, n) for n in names}
    return {n: (v if isdefined(v) else None) for n, v in values.items()}


class _FunctionInterface(SimpleInterface):
    """Run one pure function of the science layers in the node's folder.

    Subclasses name the function (``_function = "module:name"``), the input
    passed first (``_first``) and those passed by keyword (``_keywords``);
    the function returns a dict of the output spec's fields.
    """

    _function = ""
    _first = ""
    _keywords: tuple = ()

    def _arguments(self) -> dict:
        return _inputs(self.inputs, *self._keywords)

    def _results_from(self, result) -> dict:
        return result

    def _run_interface(self, runtime):
        import importlib

        module, name = self._function.split(":")
        function = getattr(importlib.import_module(module), name)
        result = function(getattr(self.inputs, self._first), out_dir=str(_cwd()),
                          **self._arguments())
        self._results.update(self._results_from(result))
        return runtime


# --------------------------------------------------------------------- BOLD input
class _PrepareBoldInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True)
    metadata = traits.Dict(mandatory=True, desc="BIDS sidecar metadata")
    dummy_scans = traits.Either(None, traits.Int, default=None, usedefault=True)
    slice_order = traits.Either(None, traits.Str, default=None, usedefault=True)
    min_volumes = traits.Int(50, usedefault=True)


class _PrepareBoldOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    tr = traits.Float()
    n_dummy = traits.Int()
    dummy_detected = traits.Bool()
    slice_timing_applied = traits.Bool()
    skipped = traits.List(traits.Str)


class PrepareBold(_FunctionInterface):
    """Check the BOLD series, drop non-steady-state volumes, correct slice timing."""

    input_spec = _PrepareBoldInputSpec
    output_spec = _PrepareBoldOutputSpec
    _function, _first = "dpnbids.preproc.pipeline:prepare_bold", "bold_file"
    _keywords = ("metadata", "dummy_scans", "slice_order", "min_volumes")


# --------------------------------------------------------------------- anatomy
class _AnatInputSpec(BaseInterfaceInputSpec):
    t1w_file = File(exists=True, mandatory=True)
    space = traits.Str(mandatory=True)
    omp_nthreads = traits.Int(1, usedefault=True)
    random_seed = traits.Int(0, usedefault=True)


def _output_spec(name: str, files: tuple, **other) -> type:
    """A nipype output spec: one existing ``File`` trait per name in ``files``, plus
    ``other`` traits and the ``warnings`` list every preprocessing step reports."""
    body = {f: File(exists=True) for f in files}
    body.update(other, warnings=traits.List(traits.Str))
    body.update(__module__=__name__, __qualname__=name)  # picklable by nipype's workers
    return type(name, (TraitedSpec,), body)


_AnatOutputSpec = _output_spec(
    "_AnatOutputSpec", ("t1w_preproc", "t1w_brain", "t1w_mask", "t1w_std", "std_mask",
                        "wm_probseg", "csf_probseg", "gm_probseg"),
    xfm_t1w_to_std=traits.List(File(exists=True)), xfm_std_to_t1w=traits.List(File(exists=True)),
    dice_std_mask=traits.Float())


class AnatPreproc(_FunctionInterface):
    """N4, brain extraction, SyN normalisation and tissue maps (antspyx)."""

    input_spec = _AnatInputSpec
    output_spec = _AnatOutputSpec
    _function, _first = "dpnbids.preproc.anat:preprocess_anat", "t1w_file"
    _keywords = ("space", "omp_nthreads", "random_seed")

    def _results_from(self, result) -> dict:
        out = {}
        for key in self.output_spec().copyable_trait_names():
            value = getattr(result, key)
            out[key] = [str(v) for v in value] if isinstance(value, (list, tuple)) \
                and key.startswith("xfm") else value
        return out


# --------------------------------------------------------------------- BOLD geometry
class _BoldStdInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True)
    tr = traits.Float(mandatory=True)
    t1w_brain = File(exists=True, mandatory=True)
    t1w_mask = File(exists=True, mandatory=True)
    wm_probseg = File(exists=True, mandatory=True)
    csf_probseg = File(exists=True, mandatory=True)
    xfm_t1w_to_std = traits.List(File(exists=True), mandatory=True)
    space = traits.Str(mandatory=True)
    resolution = traits.Float(mandatory=True)
    omp_nthreads = traits.Int(1, usedefault=True)
    random_seed = traits.Int(0, usedefault=True)


_BoldStdOutputSpec = _output_spec(
    "_BoldStdOutputSpec", ("bold_std", "mask_std", "boldref_std", "boldref", "wm_std", "csf_std",
                           "motion_params", "coreg_xfm"),
    coreg_costs=traits.Dict())


class BoldToStd(_FunctionInterface):
    """Head-motion correction, BOLD reference, MI coregistration, one-shot resampling."""

    input_spec = _BoldStdInputSpec
    output_spec = _BoldStdOutputSpec
    _function, _first = "dpnbids.preproc.pipeline:bold_to_std", "bold_file"
    _keywords = ("tr", "t1w_brain", "t1w_mask", "wm_probseg", "csf_probseg", "space",
                 "resolution", "omp_nthreads", "random_seed")

    def _arguments(self) -> dict:
        return {**super()._arguments(), "xfm_t1w_to_std": list(self.inputs.xfm_t1w_to_std)}


# --------------------------------------------------------------------- confounds + denoise
class _DenoiseInputSpec(BaseInterfaceInputSpec):
    bold_std = File(exists=True, mandatory=True)
    mask_std = File(exists=True, mandatory=True)
    tr = traits.Float(mandatory=True)
    confounds_file = File(exists=True, desc="existing confounds TSV (fMRIPrep input)")
    motion_params = File(exists=True, desc="motion parameters TSV (built-in path)")
    wm_std = File(exists=True)
    csf_std = File(exists=True)
    n_dummy = traits.Int(0, usedefault=True)
    smoothing_fwhm = traits.Float(_DEFAULTS["smoothing_fwhm"], usedefault=True)
    strategy = traits.Str(_DEFAULTS["denoise_strategy"], usedefault=True)
    high_pass = traits.Float(_DEFAULTS["high_pass"], usedefault=True)
    low_pass = traits.Float(_DEFAULTS["low_pass"], usedefault=True)
    fd_thresh = traits.Float(0.0, usedefault=True,
                             desc="censoring threshold (mm) on framewise displacement; 0: off")


class _DenoiseOutputSpec(TraitedSpec):
    confounds_tsv = File(exists=True)
    confounds_json = File(exists=True)
    denoised = File(exists=True)
    motion_summary = traits.Dict()


class ConfoundsDenoise(_FunctionInterface):
    """Confounds (fMRIPrep names), smoothing, confound regression and band-pass."""

    input_spec = _DenoiseInputSpec
    output_spec = _DenoiseOutputSpec
    _function, _first = "dpnbids.preproc.pipeline:confounds_and_denoise", "bold_std"
    _keywords = ("mask_std", "tr", "confounds_file", "motion_params", "wm_std", "csf_std",
                 "n_dummy", "smoothing_fwhm", "strategy", "high_pass", "low_pass")

    def _arguments(self) -> dict:
        return {**super()._arguments(), "fd_thresh": self.inputs.fd_thresh or None}


# --------------------------------------------------------------------- dual regression
class _DualRegInputSpec(BaseInterfaceInputSpec):
    bold_file = File(exists=True, mandatory=True)
    group_maps = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)


class _DualRegOutputSpec(TraitedSpec):
    timecourses = File(exists=True)
    maps_pe = File(exists=True)
    maps_z = File(exists=True)


class DualRegression(_FunctionInterface):
    """Stage 1 and 2 of dual regression for one subject run."""

    input_spec = _DualRegInputSpec
    output_spec = _DualRegOutputSpec
    _function, _first = "dpnbids.analysis.dual_regression:dual_regress_file", "bold_file"

    def _arguments(self) -> dict:
        return {"group_maps_file": self.inputs.group_maps, "mask_file": self.inputs.mask_file}


# --------------------------------------------------------------------- group learning
class _LearnInputSpec(BaseInterfaceInputSpec):
    features = File(exists=True, mandatory=True, desc="(S, X, Y, Z, C) .npy")
    cohort = File(exists=True, mandatory=True, desc="subjects and labels (JSON)")
    summaries = File(exists=True, mandatory=True, desc="(S, K) component summaries .npy")
    spec = traits.Str(mandatory=True, desc="the input set's settings and seeds (JSON)")
    n_threads = traits.Int(1, usedefault=True)


class _FoldInputSpec(_LearnInputSpec):
    fold = traits.Str(mandatory=True, desc="the outer fold (JSON)")


_FoldOutputSpec = _output_spec("_FoldOutputSpec", ("predictions", "record"),
                               saliency=traits.Str(desc="summed |attribution| .npy, or ''"))


class CVFold(_FunctionInterface):
    """One input set's nested CV on one outer fold."""

    input_spec = _FoldInputSpec
    output_spec = _FoldOutputSpec
    _function, _first = "dpnbids.learn.jobs:run_cv_fold", "features"
    _keywords = ("cohort", "summaries", "spec", "fold", "n_threads")


class _PermInputSpec(_LearnInputSpec):
    block = traits.Int(mandatory=True, desc="block of permutations; -1: the true labels")


_OutFileSpec = _output_spec("_OutFileSpec", ("out_file",))


class PermutationBlock(_FunctionInterface):
    """A block of label permutations of one input set's whole CNN cross-validation."""

    input_spec = _PermInputSpec
    output_spec = _OutFileSpec
    _function, _first = "dpnbids.learn.jobs:run_permutation_block", "features"
    _keywords = ("cohort", "summaries", "spec", "block", "n_threads")


_FinalOutputSpec = _output_spec("_FinalOutputSpec", ("model", "record", "support", "baseline",
                                                     "deconfound"))


class FinalModel(_FunctionInterface):
    """The final CNN on all labelled subjects."""

    input_spec = _LearnInputSpec
    output_spec = _FinalOutputSpec
    _function, _first = "dpnbids.learn.jobs:fit_final", "features"
    _keywords = ("cohort", "summaries", "spec", "n_threads")


class _PoolInputSpec(BaseInterfaceInputSpec):
    predictions = traits.List(File(exists=True), mandatory=True)
    records = traits.List(File(exists=True), mandatory=True)
    saliency = traits.List(traits.Str, mandatory=True)
    permutations = traits.List(File(exists=True), value=[], usedefault=True)
    settings = traits.Str(mandatory=True, desc="seeds, bootstrap and input sets (JSON)")
    extra_predictions = traits.Either(None, File(exists=True), default=None, usedefault=True)
    extra_records = traits.Either(None, File(exists=True), default=None, usedefault=True)


class _PoolOutputSpec(TraitedSpec):
    out_dir = traits.Str()


class PoolGroupResults(_FunctionInterface):
    """The join: pooled predictions, metrics, CIs, permutation p-values and Table 2."""

    input_spec = _PoolInputSpec
    output_spec = _PoolOutputSpec
    _function, _first = "dpnbids.learn.pooling:pool_group_results", "predictions"
    _keywords = ("records", "saliency", "permutations", "settings", "extra_predictions",
                 "extra_records")


# --------------------------------------------------------------------- writer
class _SinkInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    output_dir = traits.Str(mandatory=True)
    source_file = traits.Str(mandatory=True)
    entities = traits.Dict(usedefault=True)
    suffix = traits.Either(None, traits.Str, default=None, usedefault=True)
    extension = traits.Either(None, traits.Str, default=None, usedefault=True)
    datatype = traits.Either(None, traits.Str, default=None, usedefault=True)
    drop = traits.List(traits.Str, usedefault=True)
    metadata = traits.Dict(usedefault=True, desc="JSON sidecar to write next to the file")


class _SinkOutputSpec(TraitedSpec):
    out_file = traits.Str()


class DerivativesSink(SimpleInterface):
    """Copy one file into the derivatives tree through the one writer (atomic)."""

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from dpnbids.derivatives import DerivativesWriter

        inp = self.inputs
        writer = DerivativesWriter(inp.output_dir)
        ext = inp.extension
        if ext is None:
            name = Path(inp.in_file).name
            ext = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
        target = writer.path(source=inp.source_file, entities=dict(inp.entities),
                             suffix=inp.suffix, extension=ext, datatype=inp.datatype,
                             drop=tuple(inp.drop))
        writer.copy(inp.in_file, target)
        if inp.metadata:
            sidecar = sibling(target, extension=".json")
            writer.write_json(dict(inp.metadata), sidecar)
        self._results["out_file"] = str(target)
        return runtime


def json_dumps(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def function_node(function, outputs, name: str, **node_kw):
    """A nipype Function node whose inputs are ``function``'s parameters.

    ``outputs`` names its return value(s). Runs in the main process
    (bookkeeping, not computation) unless ``node_kw`` says otherwise.
    """
    import inspect

    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    node_kw.setdefault("run_without_submitting", True)
    interface = niu.Function(function=function,
                             input_names=list(inspect.signature(function).parameters),
                             output_names=[outputs] if isinstance(outputs, str) else outputs)
    return pe.Node(interface, name=name, **node_kw)

