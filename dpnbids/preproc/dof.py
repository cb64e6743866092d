"""Temporal degrees of freedom of a denoised run, known before any computation.

A resting-state run of ``T`` volumes at repetition time ``TR`` that is
band-passed by :func:`dpnbids.preproc.signal.fft_bandpass` (an ideal filter on
the mirror-padded series, i.e. a projection on the cosine basis) keeps one
degree of freedom per basis function whose frequency ``k / (2 T TR)`` lies in
the band; confound regression (after the same filter) removes the rank of the
band-limited confounds, and censoring (``--fd-thresh``) can leave fewer
volumes than that. So::

    dof = min(band_bins(T, TR) - rank(filtered confounds), T_kept - 1)

A 6-minute run (180 volumes at TR 2 s) in CONN's 0.008-0.09 Hz band keeps 59
bins; the ``conn`` strategy's 17 confounds leave about 42. A 110-volume run
keeps about 19, which bounds how many dual-regression time courses (ICA
components) can be estimated for it.

The functions here are pure (numpy/pandas) so the input checks can refuse a
run in seconds, and the group level can check ``--n-components`` against the
cohort, from the confounds tables alone, without reading any image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["MIN_DOF", "RunDof", "band_bins", "run_dof", "builtin_run_dof", "ica_order_cap"]

#: Fewest temporal degrees of freedom a denoised run may keep (denoising itself
#: refuses to regress confounds that would leave fewer, see ``denoise.denoise``).
MIN_DOF = 3

#: Residual degrees of freedom stage 2 of dual regression keeps beyond the
#: components (``--n-components`` may be at most ``dof - DUALREG_MARGIN``).
DUALREG_MARGIN = 2


@dataclass(frozen=True)
class RunDof:
    """Degrees-of-freedom budget of one run (all counts in volumes or regressors)."""

    n_volumes: int
    tr: float
    band: int
    n_regressors: int
    rank: int
    n_censored: int
    dof: int

    def describe(self, strategy: str, high_pass, low_pass) -> str:
        band = _band_text(high_pass, low_pass)
        text = (f"{self.n_volumes} volumes at TR {self.tr:g} s keep {self.band} degrees of "
                f"freedom in the {band} band; the '{strategy}' strategy regresses "
                f"{self.n_regressors} confounds (rank {self.rank})")
        if self.n_censored:
            text += f" and {self.n_censored} volumes are censored (`fd_thresh`)"
        return text + f", leaving {self.dof}"

    def as_dict(self) -> dict:
        return {"NumberOfVolumes": self.n_volumes, "BandDegreesOfFreedom": self.band,
                "NumberOfConfoundRegressors": self.n_regressors,
                "ConfoundRank": self.rank, "NumberOfCensoredVolumes": self.n_censored,
                "TemporalDegreesOfFreedom": self.dof}


def _band_text(high_pass, low_pass) -> str:
    lo = f"{high_pass:g}" if high_pass else "0"
    hi = f"{low_pass:g} Hz" if low_pass else "Nyquist"
    return f"{lo}-{hi}"


def _effective_band(tr: float, high_pass, low_pass):
    """The band edges ``denoise.denoise`` applies (a low-pass at/above Nyquist is dropped)."""
    high_pass = high_pass if high_pass and high_pass > 0 else None
    low_pass = low_pass if low_pass and low_pass > 0 else None
    if low_pass is not None and low_pass >= 0.5 / float(tr):
        low_pass = None
    return high_pass, low_pass


def band_bins(n_volumes: int, tr: float, high_pass=None, low_pass=None) -> int:
    """Degrees of freedom the band-pass of ``denoise.denoise`` keeps (no filter: T - 1).

    Counts the bins of the mirror-padded (length ``2 T``) spectrum inside the
    band, exactly as ``denoise.denoise`` does; without any filter a linear
    detrend is applied and ``T - 2`` remain.
    """
    high_pass, low_pass = _effective_band(tr, high_pass, low_pass)
    if high_pass is None and low_pass is None:
        return max(int(n_volumes) - 2, 0)
    freqs = np.fft.rfftfreq(2 * int(n_volumes), d=float(tr))
    keep = np.ones(freqs.shape, bool)
    if high_pass is not None:
        keep &= freqs >= high_pass
    else:
        keep &= freqs > 0  # the mean goes with the detrend
    if low_pass is not None:
        keep &= freqs <= low_pass
    return int(keep.sum())


def _filtered_rank(regressors: np.ndarray, tr: float, high_pass, low_pass) -> int:
    """Rank of the confounds after the detrend and band-pass that ``denoise`` applies."""
    from scipy.signal import detrend

    from dpnbids.preproc.signal import fft_bandpass

    regs = np.nan_to_num(np.asarray(regressors, dtype=np.float64), nan=0.0)
    if regs.ndim != 2 or regs.shape[1] == 0:
        return 0
    high_pass, low_pass = _effective_band(tr, high_pass, low_pass)
    regs = detrend(regs, axis=0, type="linear")
    if high_pass is not None or low_pass is not None:
        regs = fft_bandpass(regs, tr, high_pass=high_pass, low_pass=low_pass)
    scale = np.abs(regs).max() if regs.size else 0.0
    if not scale > 0:
        return 0
    regs = regs[:, regs.std(axis=0) > 1e-12 * max(1.0, scale)]
    return int(np.linalg.matrix_rank(regs)) if regs.shape[1] else 0


def run_dof(confounds: pd.DataFrame, tr: float, *, strategy: str, high_pass=None,
            low_pass=None, confounds_meta: dict | None = None,
            censored: np.ndarray | None = None) -> RunDof:
    """Degrees of freedom one run keeps after ``denoise.denoise`` with ``strategy``.

    Parameters
    ----------
    confounds : DataFrame
        The run's confounds table (fMRIPrep names), one row per volume.
    tr : float
        Repetition time (s).
    strategy : str
        ``--denoise-strategy``.
    high_pass, low_pass : float or None
        Band edges (Hz).
    confounds_meta : dict, optional
        fMRIPrep's confounds JSON (picks the combined-mask aCompCor columns).
    censored : bool array, optional
        Volumes censored by ``--fd-thresh``.

    Returns
    -------
    RunDof

    Raises
    ------
    InputError
        The table lacks a column the strategy needs (see ``strategy_columns``).
    """
    from dpnbids.preproc.denoise import SCRUB_THRESHOLDS, _scrub_regressors, strategy_columns

    n_t = len(confounds)
    cols = strategy_columns(strategy, confounds, confounds_meta=confounds_meta)
    regs = confounds[cols].to_numpy(dtype=float) if cols else np.zeros((n_t, 0))
    if strategy in SCRUB_THRESHOLDS:
        regs = np.hstack([regs, _scrub_regressors(confounds, SCRUB_THRESHOLDS[strategy])])
    n_censored = int(np.count_nonzero(censored)) if censored is not None else 0
    band = band_bins(n_t, tr, high_pass, low_pass)
    rank = _filtered_rank(regs, tr, high_pass, low_pass)
    dof = min(band - rank, n_t - n_censored - 1)
    return RunDof(n_volumes=n_t, tr=float(tr), band=band, n_regressors=int(regs.shape[1]),
                  rank=rank, n_censored=n_censored, dof=int(dof))


def builtin_run_dof(n_volumes: int, tr: float, *, strategy: str, high_pass=None,
                    low_pass=None, n_dummy: int = 0) -> RunDof:
    """Degrees of freedom a run keeps under the built-in preprocessing (before it runs).

    The confounds do not exist yet, so their rank is taken as their number
    (``STRATEGIES[strategy]``, full rank as motion and CompCor regressors are);
    scrubbing spikes are only known after head-motion correction and are not
    counted here (``denoise.denoise`` checks again with them).
    """
    from dpnbids.preproc.denoise import STRATEGIES

    n_t = int(n_volumes) - int(n_dummy)
    n_regs = len(STRATEGIES[strategy])
    band = band_bins(n_t, tr, high_pass, low_pass)
    rank = min(n_regs, band)
    return RunDof(n_volumes=n_t, tr=float(tr), band=band, n_regressors=n_regs, rank=rank,
                  n_censored=0, dof=int(min(band - rank, n_t - 1)))


def ica_order_cap(dofs) -> int:
    """Largest number of components every run can be dual-regressed into."""
    return int(min(dofs)) - DUALREG_MARGIN
