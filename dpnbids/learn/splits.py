"""Seeded, stratified subject-level splits (the outer folds and the inner-fold ensembles)."""
from __future__ import annotations

import numpy as np


def stratified_folds(y, n_folds: int, seed: int) -> list:
    """(training, test) index arrays of one seeded, shuffled stratified K-fold split: the
    outer folds of repeat ``r`` are ``stratified_folds(y, K, derive_seed(random_state, r))``."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=int(seed) % (2**31))
    return list(skf.split(np.zeros((len(y), 1)), np.asarray(y, dtype=int)))
