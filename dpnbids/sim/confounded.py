"""Map-level cohorts with a planted site or motion confound (for confound tests and benchmarks).

:func:`confounded_maps` draws what the group level hands the classifier: one stack of
subject-level network maps ``(S, X, Y, Z, C)`` inside an ellipsoid brain mask, a 0/1 label
per subject and a participants-style table (``site``, ``mean_fd``, ``age``, ``sex``).

* **Networks.** Channel ``c`` is a Gaussian blob at a random position times the subject's
  amplitude ``a ~ N(1, 0.25)``, plus spatially smooth subject noise. With
  ``effect_size = d > 0`` the first ``n_effect`` channels' amplitudes of responders are
  shifted by ``d`` standard deviations (the brain effect); with ``d = 0`` the labels are
  independent of the brain.
* **Site confound** (``confound="site"``): a fraction ``imbalance`` of responders is scanned
  at site A and the same fraction of non-responders at site B. Site B multiplies every map
  by a gain (1.3) and a linear bias field (0.7 to 1.3 along x), adds an offset (0.3) and
  has 1.6 times the noise SD.
* **Motion confound** (``confound="motion"``): mean FD is log-normal (median 0.12 mm),
  twice as large for responders; a subject's maps get an edge artefact (the mask's rim
  raised by twice the FD: what spin history and interpolation leave at the brain's
  edge), spike artefacts (``round(40 * FD)`` random voxels of +-3) and a loss of
  amplitude by ``1 / (1 + FD)``: effects that a linear regression on mean FD only partly
  removes.

Everything follows from ``seed``; nothing here is tuned to dpnbids' own generator.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from dpnbids.exceptions import InputError


def _mask(shape) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    centre = (np.asarray(shape, float) - 1) / 2
    radius = np.asarray(shape, float) / 2 - 1
    return (((grid - centre[:, None, None, None]) / radius[:, None, None, None]) ** 2
            ).sum(0) <= 1.0


def confounded_maps(n_responders: int = 22, n_nonresponders: int = 21, *,
                    confound: str = "site", effect_size: float = 0.0, n_effect: int = 1,
                    imbalance: float = 0.8, shape=(12, 14, 11), n_maps: int = 4,
                    seed: int = 0):
    """Return ``(x, y, table)``: maps (S, X, Y, Z, C) float32, labels (S,), and a table
    indexed by subject label ("01", ...) with ``site``, ``mean_fd``, ``age`` and ``sex``."""
    if confound not in ("site", "motion", "none"):
        raise InputError(f"confound must be 'site', 'motion' or 'none'; got {confound!r}")
    rng = np.random.default_rng(seed)
    n = n_responders + n_nonresponders
    y = np.r_[np.ones(n_responders, int), np.zeros(n_nonresponders, int)]
    mask = _mask(shape)
    grid = np.indices(shape).astype(float)
    centres = [np.array([rng.uniform(0.3, 0.7) * s for s in shape]) for _ in range(n_maps)]
    blobs = np.stack([np.exp(-((grid - c[:, None, None, None]) ** 2).sum(0) / (2 * 2.0 ** 2))
                      for c in centres], axis=-1) * mask[..., None]
    amp = rng.normal(1.0, 0.25, (n, n_maps))
    amp[y == 1, :n_effect] += effect_size * 0.25
    at_a = np.where(y == 1, rng.random(n) < imbalance, rng.random(n) >= imbalance)
    site = np.where(at_a, "A", "B")
    fd = rng.lognormal(np.log(0.12), 0.35, n) * np.where(y == 1, 2.0, 1.0) \
        if confound == "motion" else rng.lognormal(np.log(0.12), 0.35, n)
    rim = mask & ~ndimage.binary_erosion(mask, iterations=1)
    bias = 0.7 + 0.6 * grid[0] / max(shape[0] - 1, 1)
    x = np.empty((n,) + tuple(shape) + (n_maps,), np.float32)
    for s in range(n):
        noise_sd = 0.15 * (1.6 if confound == "site" and site[s] == "B" else 1.0)
        noise = ndimage.gaussian_filter(rng.normal(0, 1, tuple(shape) + (n_maps,)),
                                        (1, 1, 1, 0)) * noise_sd * 2.5
        maps = blobs * amp[s] + noise
        if confound == "site" and site[s] == "B":
            maps = 1.3 * maps * bias[..., None] + 0.3
        if confound == "motion":
            maps = maps / (1.0 + fd[s])
            maps += rim[..., None] * fd[s] * 2.0
            inside = np.flatnonzero(mask)
            for c in range(n_maps):
                spikes = rng.choice(inside, int(round(40 * fd[s])), replace=False)
                maps[..., c].flat[spikes] += rng.choice([-3.0, 3.0], spikes.size)
        x[s] = maps * mask[..., None]
    table = pd.DataFrame({"site": site, "mean_fd": fd, "age": rng.normal(55, 10, n).round(),
                          "sex": rng.choice(["F", "M"], n)},
                         index=pd.Index([f"{i + 1:02d}" for i in range(n)], name="participant"))
    return x, y, table
