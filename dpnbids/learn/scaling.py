"""The CNN's and the baselines' input scaling: a per-channel z-score over the training
subjects' in-brain voxels (the voxels where any training subject has any non-zero value).

:class:`ChannelScaler` is fitted on the outer-training subjects of a fold (or on every
labelled subject for the final model) and applied frozen to everything else; a model
bundle stores it (:meth:`ChannelScaler.to_json` and the support array).
:func:`moments_from_sums` is the one place the mean and SD are computed: from the
scaler's own sums here, and from :class:`dpnbids.learn.linear.GramCache`'s cached sums
for the baselines' kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: How bundle.json describes the scaling.
METHOD = "per-channel z-score over training brain voxels"


def moments_from_sums(sums, sumsq, count) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and SD (float64) from sums and sums of squares over ``count``
    values per channel; an SD of 0 (a constant channel) becomes 1."""
    mean = np.asarray(sums, dtype=np.float64) / count
    var = np.asarray(sumsq, dtype=np.float64) / count - mean ** 2
    sd = np.sqrt(np.maximum(var, 0.0))
    sd[sd == 0] = 1.0
    return mean, sd


@dataclass(frozen=True, eq=False)
class ChannelScaler:
    """Per-channel z-score of inputs (S, X, Y, Z, C): ``mean`` and ``sd`` (C,) float32,
    ``support`` (X, Y, Z) bool, the in-brain voxels; outside it the scaled input is 0."""

    mean: np.ndarray
    sd: np.ndarray
    support: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "mean", np.asarray(self.mean, dtype=np.float32))
        object.__setattr__(self, "sd", np.asarray(self.sd, dtype=np.float32))
        object.__setattr__(self, "support", np.asarray(self.support, dtype=bool))

    @classmethod
    def fit(cls, x) -> ChannelScaler:
        """Mean and SD over the subjects and in-brain voxels of ``x`` (S, X, Y, Z, C)."""
        x = np.asarray(x)
        support = np.any(x != 0, axis=(0, 4))
        vals = x[:, support, :]  # (S, V, C)
        sums = vals.sum(axis=(0, 1), dtype=np.float64)
        sumsq = np.einsum("svc,svc->c", vals, vals, dtype=np.float64)
        mean, sd = moments_from_sums(sums, sumsq, vals.shape[0] * vals.shape[1])
        return cls(mean, sd, support)

    def transform(self, x) -> np.ndarray:
        """``x`` (S, X, Y, Z, C) scaled, float32, zero outside the support."""
        out = (np.asarray(x) - self.mean) / self.sd
        out[:, ~self.support, :] = 0.0
        return out.astype(np.float32, copy=False)

    @property
    def n_channels(self) -> int:
        return int(self.mean.size)

    def to_json(self) -> dict:
        """The JSON part (``mean``, ``sd`` and the method); the support is stored apart."""
        return {"mean": [float(v) for v in self.mean], "sd": [float(v) for v in self.sd],
                "method": METHOD}

    @classmethod
    def from_json(cls, meta: dict, support) -> ChannelScaler:
        """The scaler of :meth:`to_json`'s ``meta`` and its ``support`` array."""
        return cls(meta["mean"], meta["sd"], support)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ChannelScaler):
            return NotImplemented
        return all(np.array_equal(getattr(self, k), getattr(other, k))
                   for k in ("mean", "sd", "support"))

    __hash__ = None
