"""Parameters and result of the synthetic-cohort generator (:mod:`dpnbids.sim.generator`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dpnbids.analysis.networks import load_network_coordinates
from dpnbids.exceptions import InputError

SPACE = "MNI152NLin2009aSym"
_SLICE_ORDERS = ("ascending", "descending", "interleaved")


SPACE = "MNI152NLin2009aSym"


_SLICE_ORDERS = ("ascending", "descending", "interleaved")


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
    With the defaults, a 10-subject group ICA (dpnbids.analysis.ica.GroupICA, 20 or 30
    components) on the fMRIPrep-style derivatives recovers every planted group
    map with spatial |r| > 0.92 (measured; a larger ``shift_mm`` blurs the
    group maps and lowers this).
    """

    n_responders: int = 29
    n_nonresponders: int = 14
    seed: int = 0
    null: bool = False
    space: str = "template"
    n_volumes: int = 100
    tr: float = 2.6
    template_resolution: float = 4.0
    bold_voxel_size: float = 4.0
    t1w_voxel_size: float = 2.0
    networks: tuple = ("default_mode", "sensorimotor", "visual", "fronto_parietal", "cerebellar")
    effect_networks: tuple = ("default_mode", "sensorimotor")
    effect_size: float = 1.0
    amplitude_sd: float = 0.2
    shift_mm: float = 1.0
    signal_percent: float = 2.0
    noise_level: float = 1.0
    physio_percent: float = 1.0
    network_correlation: float = 0.2
    motion_mm: float = 0.5
    slice_order: str = "ascending"
    n_sessions: int = 1
    n_runs: int = 1
    task: str = "rest"

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
