"""Array-level cohorts of component maps: the CNN's and the baselines' input, made directly.

``dpnbids-synth`` writes BIDS data whose maps come out of the whole pipeline. This module
is a second, deliberately different generator for testing the classifiers alone: it makes
the stacked stage-2 maps ``(subjects, X, Y, Z, networks)`` of a cohort on a CNN grid, with

* any number of networks, each a few Gaussian nodes inside an ellipsoidal brain;
* maps on an arbitrary scale (``scale``: z-maps, or maps 10x or 100x larger) with
  heavy-tailed, spatially smooth subject noise (``tail``: Student-t degrees of freedom);
* a planted group difference of one of two kinds (``effect``): ``"amplitude"`` (the
  responders' maps are stronger at one node of each affected network, as in
  ``dpnbids-synth``) or ``"connectivity"`` (the affected network's map of a responder takes
  on a share of *another* network's nodes, which is how a change in the coupling between
  two networks shows in dual-regression maps), or ``"none"`` (a null cohort);
* subject-level nuisance: per-subject global gain of every map and spatial jitter.

It is the fixture of the CNN training tests (:mod:`tests.test_cnn_training`) and of
``benchmarks/bench_cnn_training.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, shift as nd_shift

from dpnbids.exceptions import InputError

EFFECTS = ("amplitude", "connectivity", "none")


@dataclass(frozen=True)
class MapCohort:
    """``x`` (S, X, Y, Z, C) float32 maps, ``y`` (S,) labels, the affected networks and
    the voxel mask of the planted effect (X, Y, Z)."""

    x: np.ndarray
    y: np.ndarray
    affected: tuple
    effect_mask: np.ndarray


def _blob(shape, centre, sigma):
    grid = np.indices(shape, dtype=np.float32)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return np.exp(-d2 / (2.0 * sigma ** 2)).astype(np.float32)


def _brain(shape):
    grid = np.indices(shape, dtype=np.float32)
    c = [(n - 1) / 2 for n in shape]
    r = [0.42 * n for n in shape]
    return sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1.0


def make_map_cohort(n_pos=29, n_neg=14, *, shape=(20, 24, 20), n_networks=8, n_affected=2,
                    effect="amplitude", effect_size=1.0, scale=1.0, tail=4.0,
                    noise_fwhm_vox=2.0, nodes_per_network=3, peak_z=12.0, jitter_vox=1.0,
                    seed=0) -> MapCohort:
    """A cohort of stage-2-like maps; see the module docstring.

    ``effect_size`` is in units of the between-subject SD of the affected signal (a
    Cohen's d between the classes at the affected voxels' peak).
    """
    if effect not in EFFECTS:
        raise InputError(f"effect must be one of {EFFECTS}; got {effect!r}")
    if effect == "connectivity" and n_networks < 2:
        raise InputError("a connectivity effect needs at least 2 networks")
    if not 0 <= n_affected <= n_networks:
        raise InputError(f"n_affected must be in [0, {n_networks}]; got {n_affected}")
    rng = np.random.default_rng(seed)
    brain = _brain(shape)
    inside = np.argwhere(brain)
    nodes = [[_blob(shape, inside[rng.integers(len(inside))], rng.uniform(1.2, 2.2))
              for _ in range(nodes_per_network)] for _ in range(n_networks)]
    templates = [np.clip(sum(n), 0, 1) * peak_z for n in nodes]
    affected = tuple(int(a) for a in rng.choice(n_networks, size=n_affected, replace=False))
    partner = {a: int((a + 1 + rng.integers(n_networks - 1)) % n_networks) for a in affected}
    effect_mask = np.zeros(shape, bool)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    y = y[rng.permutation(y.size)]
    x = np.empty((y.size,) + tuple(shape) + (n_networks,), np.float32)
    sigma = noise_fwhm_vox / 2.3548
    for s in range(y.size):
        gain = rng.lognormal(0.0, 0.15)
        for c in range(n_networks):
            amp = rng.normal(1.0, 0.15)
            m = templates[c] * amp
            if c in affected and effect != "none":
                if effect == "amplitude":
                    target = nodes[c][0] * peak_z
                else:  # the map of network c takes on a share of its partner's nodes
                    target = templates[partner[c]]
                strength = rng.normal(effect_size * y[s], 1.0) * 0.15
                m = m + strength * target
                effect_mask |= target > 0.2 * peak_z
            noise = rng.standard_t(tail, size=shape).astype(np.float32)
            if sigma > 0:
                noise = gaussian_filter(noise, sigma) * (1.0 / _smooth_sd(sigma))
            m = m + noise
            if jitter_vox:
                m = nd_shift(m, rng.uniform(-jitter_vox, jitter_vox, 3), order=1)
            x[s, ..., c] = np.where(brain, m * gain * scale, 0.0)
    return MapCohort(x, y, affected, effect_mask)


def _smooth_sd(sigma: float) -> float:
    """SD of unit white noise after a Gaussian filter of ``sigma`` voxels (3D)."""
    return float((1.0 / (2.0 * np.sqrt(np.pi) * sigma)) ** 1.5)
