"""Seeded, stratified subject-level splits and the checks that they do not leak.

:func:`make_outer_splits` draws the outer folds (each with an inner validation split),
:func:`stratified_folds` the folds of one split (also the inner-fold ensembles').
:func:`check_no_leakage` raises :class:`~dpnbids.exceptions.DataLeakageError` on any
overlap of a fold's training, validation and test subjects, and
:func:`check_calibration_leakage` when calibration saw an outer test subject.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dpnbids.config import derive_seed
from dpnbids.exceptions import DataLeakageError, InputError


def stratified_folds(y, n_folds: int, seed: int) -> list:
    """(training, test) index arrays of one seeded, shuffled stratified K-fold split: the
    outer folds of repeat ``r`` are ``stratified_folds(y, K, derive_seed(random_state, r))``."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=int(seed) % (2**31))
    return list(skf.split(np.zeros((len(y), 1)), np.asarray(y, dtype=int)))


@dataclass(frozen=True)
class Fold:
    """One outer fold: subject IDs of the inner-training, validation and test sets."""

    repeat: int
    fold: int
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    seed: int

    @property
    def outer_train_ids(self) -> tuple:
        return tuple(self.train_ids) + tuple(self.val_ids)


def check_no_leakage(fold: Fold) -> None:
    """Raise DataLeakageError if a subject is in two of train/val/test, or duplicated."""
    sets = {"train": list(fold.train_ids), "validation": list(fold.val_ids),
            "test": list(fold.test_ids)}
    for name, ids in sets.items():
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DataLeakageError(f"repeat {fold.repeat} fold {fold.fold}: subject(s) {dup} "
                                   f"appear more than once in the {name} set")
    for (a, ia), (b, ib) in itertools.combinations(sets.items(), 2):
        overlap = sorted(set(ia) & set(ib))
        if overlap:
            raise DataLeakageError(
                f"repeat {fold.repeat} fold {fold.fold}: subject(s) {overlap} are in both the "
                f"{a} and {b} sets; the outer test fold must never be seen in training, "
                "selection, scaling or early stopping.")


def make_outer_splits(subject_ids, labels, *, n_folds: int = 10, n_repeats: int = 1,
                      val_fraction: float = 0.2, random_state=None) -> list[Fold]:
    """Stratified, seeded subject-level outer folds with an inner validation split."""
    from sklearn.model_selection import train_test_split

    ids = np.asarray(list(subject_ids))
    y = np.asarray(labels, dtype=int)
    if ids.size != y.size:
        raise InputError(f"{ids.size} subject IDs but {y.size} labels")
    if len(set(ids.tolist())) != ids.size:
        raise DataLeakageError("duplicated subject IDs: splits must be at subject level")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise InputError(f"only one class among the labelled subjects ({n_pos} responders, "
                         f"{n_neg} non-responders); cross-validation needs both.")
    if min(n_pos, n_neg) < n_folds:
        raise InputError(f"{n_pos} responders and {n_neg} non-responders, but `folds` "
                         f"{n_folds} needs at least {n_folds} per class; use `folds` "
                         f"{max(2, min(n_pos, n_neg))} or fewer.")
    folds = []
    for repeat in range(n_repeats):
        seed = derive_seed(random_state, repeat, bits=32)
        for k, (train, test) in enumerate(stratified_folds(y, n_folds, seed)):
            fold_seed = derive_seed(seed, k, bits=32)
            n_val = max(2, int(round(val_fraction * train.size)))
            ytr = y[train]
            strat = ytr if min((ytr == 1).sum(), (ytr == 0).sum()) >= 2 else None
            inner, val = train_test_split(train, test_size=n_val, stratify=strat,
                                          random_state=fold_seed % (2**31))
            fold = Fold(repeat, k, tuple(ids[np.sort(inner)].tolist()),
                        tuple(ids[np.sort(val)].tolist()), tuple(ids[np.sort(test)].tolist()),
                        fold_seed)
            check_no_leakage(fold)
            folds.append(fold)
    return folds


def splits_to_dataframe(folds) -> pd.DataFrame:
    """One row per (repeat, fold, subject) with its role: train, validation or test."""
    rows = []
    for f in folds:
        for role, ids in (("train", f.train_ids), ("validation", f.val_ids),
                          ("test", f.test_ids)):
            rows.extend({"repeat": f.repeat, "fold": f.fold, "participant_id": f"sub-{i}",
                         "role": role, "seed": f.seed} for i in ids)
    return pd.DataFrame(rows)


def check_calibration_leakage(fold: Fold, calibration_ids) -> None:
    """Raise DataLeakageError if calibration or threshold choice saw an outer test subject."""
    overlap = sorted(set(calibration_ids) & set(fold.test_ids))
    if overlap:
        raise DataLeakageError(
            f"repeat {fold.repeat} fold {fold.fold}: calibration or threshold choice used "
            f"outer test subject(s) {overlap}; they must be fitted on the outer training "
            "fold only.")
