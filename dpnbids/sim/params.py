"""Parameters and result of the synthetic-cohort generator (:mod:`dpnbids.sim.generator`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dpnbids.analysis.networks import load_network_coordinates
from dpnbids.exceptions import InputError

SPACE = "MNI152NLin2009aSym"
_SLICE_ORDERS = ("ascending", "descending", "interleaved")


#: dpnbids-synth's argument groups, in the order --help lists them.
_COHORT, _ACQ, _NOISE = "cohort and labels", "acquisition", "signal and noise"
CLI_GROUPS = (_COHORT, _ACQ, _NOISE)


def _cli(group: str, help: str = "", *, kind: str | None = None, flag: str | None = None,
         choices: tuple | None = None) -> dict:
    """Field metadata for ``dpnbids-synth``: its argument group, help text, value type (a
    name of :mod:`dpnbids.cli.types`, or "csv" for a comma-separated list), and the flag
    when it is not the field's name."""
    return {"cli": {"group": group, "help": help, "kind": kind, "flag": flag,
                    "choices": choices}}


@dataclass(frozen=True)
class SynthParams:
    """Parameters of the generative model (see the module docstring).

    Attributes
    ----------
    n_responders, n_nonresponders : int
        Class sizes (the paper's cohort: 29 and 14).
    seed : int
        The only source of randomness.
    null : bool
        Apply the effect to nobody (labels independent of the images).
    space : {"template", "native"}
        Where the raw images live; "template" also writes fMRIPrep-style derivatives.
    n_volumes, tr : int, float
        Run length and repetition time (s).
    template_resolution : float
        Grid (mm) of the model and of template-space images (2 or 4 typical).
    bold_voxel_size, t1w_voxel_size : float
        Native BOLD voxel size (native mode) and T1w voxel size (mm).
    networks, effect_networks : tuple of str
        Simulated networks (canonical names of :mod:`dpnbids.analysis.networks`) and the
        subset whose amplitude carries the label effect.
    effect_size : float
        Cohen's d of the effect networks' amplitude, responders vs non-responders.
    amplitude_sd : float
        Between-subject SD of each network's amplitude (mean 1).
    shift_mm : float
        SD (mm, per axis) of each subject's per-network spatial shift.
    signal_percent : float
        BOLD signal change (%) for a unit map value and a unit-SD time course.
    noise_level : float
        Thermal noise SD relative to ``signal_percent`` of the mean brain baseline.
    physio_percent : float
        Physiological nuisance amplitude (%) in CSF/WM-weighted voxels.
    network_correlation : float
        Expected correlation between network time courses.
    motion_mm : float
        Typical largest head translation (mm) per run.
    slice_order : {"ascending", "descending", "interleaved"}
    n_sessions, n_runs : int
        ``ses-``/``run-`` entities are written only when > 1.
    task : str
        BIDS task label.

    Notes
    -----
    With the defaults, a 10-subject group ICA (dpnbids.analysis.decomposition.GroupICA, 20 or 30
    components) on the fMRIPrep-style derivatives recovers every planted group
    map with spatial |r| > 0.92 (measured; a larger ``shift_mm`` blurs the
    group maps and lowers this).
    """

    n_responders: int = field(default=29, metadata=_cli(_COHORT, kind="positive_int"))
    n_nonresponders: int = field(default=14, metadata=_cli(_COHORT, kind="positive_int"))
    seed: int = field(default=0, metadata=_cli(_COHORT, "one seed for everything", kind="int"))
    null: bool = field(default=False, metadata=_cli(
        _COHORT, "no effect: labels are independent of the images"))
    space: str = field(default="template", metadata=_cli(
        _ACQ, "template: images on the MNI grid plus fMRIPrep-style derivatives; native: "
              "subject space with known transforms", choices=("native", "template")))
    n_volumes: int = field(default=100, metadata=_cli(_ACQ, kind="positive_int"))
    tr: float = field(default=2.6, metadata=_cli(_ACQ, "repetition time (s)",
                                                 kind="positive_float"))
    template_resolution: float = field(default=4.0, metadata=_cli(
        _ACQ, "template grid (mm) of the model and of template-space images",
        kind="positive_float", flag="--resolution"))
    bold_voxel_size: float = field(default=4.0, metadata=_cli(
        _ACQ, "native-space BOLD voxel size (mm)", kind="positive_float"))
    t1w_voxel_size: float = field(default=2.0, metadata=_cli(_ACQ, "T1w voxel size (mm)",
                                                             kind="positive_float"))
    networks: tuple = field(
        default=("default_mode", "sensorimotor", "visual", "fronto_parietal", "cerebellar"),
        metadata=_cli(_COHORT, "comma-separated networks to simulate", kind="csv"))
    effect_networks: tuple = field(default=("default_mode", "sensorimotor"), metadata=_cli(
        _COHORT, "comma-separated networks carrying the effect", kind="csv"))
    effect_size: float = field(default=1.0, metadata=_cli(
        _COHORT, "Cohen's d of the effect networks' map amplitude, responders vs "
                 "non-responders", kind="nonneg_float"))
    amplitude_sd: float = 0.2
    shift_mm: float = 1.0
    signal_percent: float = 2.0
    noise_level: float = field(default=1.0, metadata=_cli(
        _NOISE, "noise SD relative to the peak network signal", kind="nonneg_float"))
    physio_percent: float = 1.0
    network_correlation: float = 0.2
    motion_mm: float = field(default=0.5, metadata=_cli(
        _NOISE, "typical largest head translation (mm)", kind="nonneg_float"))
    slice_order: str = field(default="ascending", metadata=_cli(_ACQ, choices=_SLICE_ORDERS))
    n_sessions: int = field(default=1, metadata=_cli(_ACQ, kind="positive_int"))
    n_runs: int = field(default=1, metadata=_cli(_ACQ, kind="positive_int"))
    task: str = field(default="rest", metadata=_cli(_ACQ, "BIDS task label"))

    def validate(self) -> "SynthParams":
        """Raise :class:`InputError` on an impossible combination; return self."""
        def bad(msg):
            raise InputError(msg)

        if self.n_responders < 1 or self.n_nonresponders < 1:
            bad(f"Need at least one responder and one non-responder; got "
                f"{self.n_responders} and {self.n_nonresponders}.")
        if self.space not in ("native", "template"):
            bad(f"space must be 'native' or 'template'; got {self.space!r}.")
        if self.n_volumes < 20:
            bad(f"n_volumes must be >= 20 so that the 0.01-0.1 Hz band has frequencies; "
                f"got {self.n_volumes}.")
        if not 0.3 <= self.tr <= 10:
            bad(f"tr must be between 0.3 and 10 s; got {self.tr}.")
        if self.n_volumes * self.tr < 100:
            bad(f"n_volumes * tr = {self.n_volumes * self.tr:g} s is too short for a "
                "0.01-0.1 Hz signal; use at least 100 s.")
        for name in ("template_resolution", "bold_voxel_size", "t1w_voxel_size"):
            v = getattr(self, name)
            if not 1.0 <= v <= 8.0:
                bad(f"{name} must be between 1 and 8 mm; got {v}.")
        if self.slice_order not in _SLICE_ORDERS:
            bad(f"slice_order must be one of {_SLICE_ORDERS}; got {self.slice_order!r}.")
        if not self.networks:
            bad("networks must name at least one network.")
        available = set(load_network_coordinates()["network"])
        unknown = [n for n in self.networks if n not in available]
        if unknown:
            bad(f"Unknown network(s) {unknown}; available: {sorted(available)}.")
        missing = [n for n in self.effect_networks if n not in self.networks]
        if missing:
            bad(f"effect_networks {missing} are not in networks {list(self.networks)}.")
        if self.n_sessions < 1 or self.n_runs < 1:
            bad("n_sessions and n_runs must be >= 1.")
        if not self.task.isalnum():
            bad(f"task must be alphanumeric (a BIDS label); got {self.task!r}.")
        for name in ("amplitude_sd", "shift_mm", "noise_level", "motion_mm",
                     "signal_percent", "physio_percent"):
            if getattr(self, name) < 0:
                bad(f"{name} must be >= 0; got {getattr(self, name)}.")
        if not 0 <= self.network_correlation < 1:
            bad(f"network_correlation must be in [0, 1); got {self.network_correlation}.")
        return self


@dataclass(frozen=True)
class SynthResult:
    """Where :func:`generate_dataset` wrote things."""

    bids_dir: Path
    truth_dir: Path
    fmriprep_dir: Path | None
    subjects: tuple = field(default=())
