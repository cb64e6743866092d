"""Array-level cohorts with planted networks, for model-order and group-ICA checks.

``dpnbids-synth`` (:mod:`dpnbids.sim.generator`) writes whole fMRIPrep-style BIDS
datasets with a fixed set of 5 planted networks. This generator is different on
purpose, so the model order is not tuned to one generator: it returns in-mask
``(T, V)`` arrays directly (no images, no participant level) and every property
that decides how many networks an estimator can find is a parameter:

* the number of networks (5, 11, 20, ...) and their **sizes** (blob width in
  voxels, and how many separate nodes each network has);
* their **amplitudes**, with a share of **weak** networks;
* the **spatial smoothness** of the noise (Gaussian FWHM in voxels);
* the **temporal colour** of the noise: ``"white"``, ``"ar1"`` (AR(1) with
  coefficient ``ar``) or ``"pink"`` (a ``1/f^beta`` power spectrum);
* subjects x volumes and the repetition time;
* optional **denoising** as dpnbids' participant level does it: the FFT
  band-pass on the mirror-padded series (``band``) and the regression of
  ``n_confounds`` band-passed random confounds, which leaves ~19 temporal degrees
  of freedom in a 110-volume run at TR 2 s.

Each subject's network time courses are independent band-limited (0.01-0.1 Hz)
series with unit variance, and each subject's network amplitudes vary by
``subject_sd`` around the group value. The noise has unit variance per voxel
before the band-pass. Everything flows from one ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from dpnbids.preproc.signal import fft_bandpass

__all__ = ["PlantedCohort", "ellipsoid_mask", "planted_cohort", "recovery"]

NOISE_COLOURS = ("white", "ar1", "pink")


@dataclass
class PlantedCohort:
    """Output of :func:`planted_cohort`.

    Attributes
    ----------
    runs : list of ndarray, shape (T, V), float32
        One in-mask run per subject (C order of ``mask``'s True voxels).
    mask : ndarray of bool, 3D
    maps : ndarray, shape (K, V)
        The planted network maps (peak 1), the truth for :func:`recovery`.
    amplitudes : ndarray, shape (K,)
        Group amplitude of each network (noise SD = 1).
    params : dict
        The arguments that made the cohort.
    """

    runs: list
    mask: np.ndarray
    maps: np.ndarray
    amplitudes: np.ndarray
    params: dict = field(default_factory=dict)

    def loader(self, i: int) -> np.ndarray:
        return self.runs[i]


def ellipsoid_mask(shape: Sequence[int] = (20, 24, 20)) -> np.ndarray:
    """A brain-like ellipsoid filling the grid ((20, 24, 20): 4304 voxels)."""
    g = np.indices(tuple(shape)).astype(float)
    r = sum(((g[i] - (s - 1) / 2) / (s / 2 - 0.5)) ** 2 for i, s in enumerate(shape))
    return r <= 1.0


def _network_maps(rng, mask, k, sizes, nodes) -> np.ndarray:
    """k maps, each ``nodes`` Gaussian blobs of width ``sizes[j]`` (voxels), peak 1."""
    idx = np.argwhere(mask)
    maps = np.zeros((k, int(mask.sum())))
    for j in range(k):
        vol = np.zeros(mask.shape)
        for c in idx[rng.choice(len(idx), size=int(nodes), replace=False)]:
            vol[tuple(c)] = 1.0
        m = gaussian_filter(vol, float(sizes[j]))[mask]
        maps[j] = m / m.max()
    return maps


def _band_limited(rng, t, n, tr, low=0.01, high=0.1) -> np.ndarray:
    x = fft_bandpass(rng.normal(size=(t, n)), tr, high_pass=low, low_pass=min(high, 0.45 / tr))
    return x / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)


def _noise(rng, t, mask, colour, ar, beta, fwhm) -> np.ndarray:
    """(T, V) unit-variance noise of the given temporal colour and spatial FWHM (voxels)."""
    shape = (t,) + mask.shape
    e = rng.normal(size=shape)
    if fwhm:
        s = float(fwhm) / np.sqrt(8 * np.log(2))
        e = gaussian_filter(e, (0, s, s, s), mode="constant")
    e = e[:, mask]
    if colour == "ar1":
        from scipy.signal import lfilter

        e = lfilter([1.0], [1.0, -ar], e, axis=0)
    elif colour == "pink":
        f = np.fft.rfftfreq(t)
        gain = np.where(f > 0, np.maximum(f, 1.0 / t) ** (-beta / 2.0), 0.0)
        e = np.fft.irfft(np.fft.rfft(e, axis=0) * gain[:, None], n=t, axis=0)
    e -= e.mean(axis=0)
    return e / e.std()


def planted_cohort(n_networks: int = 11, *, n_subjects: int = 43, n_volumes: int = 110,
                   tr: float = 2.0, shape: Sequence[int] = (20, 24, 20),
                   sizes=(1.5, 2.5), nodes: int = 2, amplitude=(0.5, 1.0),
                   weak_fraction: float = 0.0, weak_amplitude: float = 0.25,
                   noise: str = "white", ar: float = 0.5, beta: float = 1.0,
                   fwhm: float = 0.0, band: Optional[tuple] = None, n_confounds: int = 0,
                   subject_sd: float = 0.2, seed: int = 0) -> PlantedCohort:
    """A cohort of in-mask (T, V) runs with ``n_networks`` planted spatial networks.

    Parameters
    ----------
    n_networks : int
        K (0: pure noise).
    n_subjects, n_volumes, tr
        Cohort size, run length and repetition time (s).
    shape : tuple of int
        Grid of the ellipsoidal mask (:func:`ellipsoid_mask`).
    sizes : float or (low, high)
        Gaussian width (SD, voxels) of each node; a pair draws each network's
        width uniformly in it.
    nodes : int
        Separate blobs per network (distributed networks: 2-3).
    amplitude : float or (low, high)
        Group amplitude of a network's time course at its peak (noise SD = 1).
    weak_fraction, weak_amplitude
        The share of networks (rounded) given ``weak_amplitude`` instead.
    noise : {"white", "ar1", "pink"}
        Temporal colour of the noise; ``ar`` is the AR(1) coefficient, ``beta``
        the exponent of the ``1/f^beta`` power spectrum.
    fwhm : float
        Spatial smoothness of the noise (Gaussian FWHM, voxels).
    band : (high_pass, low_pass) in Hz, optional
        Band-pass the runs as the participant level does (mirror-padded FFT).
    n_confounds : int
        Band-passed random confounds regressed out of each run after the band-pass.
    subject_sd : float
        SD of each subject's network amplitude around the group value (relative).
    seed : int
        The only source of randomness.

    Returns
    -------
    PlantedCohort
    """
    if noise not in NOISE_COLOURS:
        raise ValueError(f"noise must be one of {', '.join(NOISE_COLOURS)}; received {noise!r}.")
    if int(n_networks) < 0 or int(n_subjects) < 1 or int(n_volumes) < 8:
        raise ValueError(f"need n_networks >= 0, n_subjects >= 1 and n_volumes >= 8; received "
                         f"{n_networks}, {n_subjects}, {n_volumes}.")
    params = dict(locals())
    rng = np.random.default_rng(seed)
    mask = ellipsoid_mask(shape)
    k, t = int(n_networks), int(n_volumes)
    size = np.broadcast_to(np.asarray(sizes, dtype=float), (2,))
    widths = rng.uniform(size[0], size[1], size=k)
    maps = _network_maps(rng, mask, k, widths, nodes) if k else np.zeros((0, int(mask.sum())))
    amp = np.broadcast_to(np.asarray(amplitude, dtype=float), (2,))
    amps = rng.uniform(amp[0], amp[1], size=k)
    n_weak = int(round(weak_fraction * k))
    if n_weak:
        amps[rng.choice(k, size=n_weak, replace=False)] = weak_amplitude
    runs = []
    for _ in range(int(n_subjects)):
        gain = amps * np.clip(1.0 + subject_sd * rng.normal(size=k), 0.1, None)
        x = (_band_limited(rng, t, k, tr) * gain) @ maps if k else 0.0
        x = x + _noise(rng, t, mask, noise, ar, beta, fwhm)
        if band is not None:
            x = fft_bandpass(x, tr, high_pass=band[0], low_pass=band[1])
            if n_confounds:
                conf = fft_bandpass(rng.normal(size=(t, int(n_confounds))), tr,
                                    high_pass=band[0], low_pass=band[1])
                q, _ = np.linalg.qr(conf)
                x = x - q @ (q.T @ x)
        runs.append(np.asarray(x, dtype=np.float32))
    return PlantedCohort(runs, mask, maps, amps, params)


def recovery(components, maps) -> np.ndarray:
    """Best |r| of each planted map (rows of ``maps``) over the estimated ``components``."""
    def z(a):
        a = np.asarray(a, dtype=np.float64)
        a = a - a.mean(axis=1, keepdims=True)
        n = np.linalg.norm(a, axis=1, keepdims=True)
        return a / np.where(n > 0, n, 1.0)

    if len(maps) == 0:
        return np.zeros(0)
    if len(components) == 0:
        return np.zeros(len(maps))
    return np.abs(z(maps) @ z(components).T).max(axis=1)
