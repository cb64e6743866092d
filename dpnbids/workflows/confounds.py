"""The group level's confounds: the confound table of the labelled subjects, the outer
folds of ``--cv-scheme leave-group-out``, the in-fold deconfounder of ``--covariates`` /
``--harmonize``, the confound-only baselines and their warnings (maths in
:mod:`dpnbids.learn.confounds`)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

LOGGER = logging.getLogger(__name__)


def run_mean_fd(output_dir, source) -> float:
    """Mean framewise displacement of one run from the participant level's confounds table
    (OSError or ValueError when it has none)."""
    from dpnbids.derivatives import DerivativesWriter

    conf = DerivativesWriter(output_dir).path(source=source, suffix="timeseries",
                                              extension=".tsv", desc="confounds")
    fd = pd.read_csv(conf, sep="\t", usecols=["framewise_displacement"], na_values=["n/a"])
    return float(np.nanmean(fd["framewise_displacement"].to_numpy(float)))


def patient_confounds(bids_dir, output_dir, source, subject, needed) -> pd.DataFrame:
    """The one-row confound table of a new patient (``participant --model``): the
    ``needed`` participants.tsv columns and the run's own mean FD."""
    from dpnbids.bids import read_participants
    from dpnbids.learn.confounds import confound_table

    try:
        mean_fd = {subject: run_mean_fd(output_dir, source)}
    except (OSError, ValueError):
        mean_fd = None
    return confound_table(read_participants(bids_dir), [subject], mean_fd=mean_fd,
                          required=tuple(needed),
                          source=str(Path(bids_dir) / "participants.tsv"))


def subject_mean_fd(config, runs) -> dict:
    """Mean framewise displacement of each subject over its runs' confounds tables (the
    participant level's ``desc-confounds_timeseries.tsv``); subjects without one are left
    out (and logged)."""
    per_subject: dict[str, list] = {}
    missing = []
    for run in runs:
        try:
            fd = run_mean_fd(config.execution.output_dir, run.source)
        except (OSError, ValueError):
            missing.append(run.key)
            continue
        per_subject.setdefault(run.subject, []).append(fd)
    if missing:
        LOGGER.warning("no framewise_displacement column for %s: mean FD is n/a there",
                       ", ".join(missing))
    return {s: float(np.mean(v)) for s, v in per_subject.items()}


def group_confounds(config, runs, subjects) -> pd.DataFrame:
    """The confound table of ``subjects``: mean FD, participants.tsv's site/age/sex-like
    columns and every column named by --covariates, --harmonize and --cv-group."""
    from dpnbids.bids import read_participants
    from dpnbids.learn.confounds import confound_table

    cnn = config.cnn
    required = tuple(cnn.covariates or ()) + tuple(c for c in (cnn.harmonize, cnn.cv_group)
                                                   if c)
    return confound_table(read_participants(config.execution.bids_dir), subjects,
                          mean_fd=subject_mean_fd(config, runs), required=required,
                          source=str(config.execution.bids_dir / "participants.tsv"))


def check_confound_columns(config, subjects) -> None:
    """At the door: the participants.tsv columns of --covariates, --harmonize and
    --cv-group exist and are filled for every labelled subject (InputError otherwise)."""
    from dpnbids.bids import read_participants
    from dpnbids.learn.confounds import MEAN_FD, confound_table

    cnn = config.cnn
    required = [c for c in (*(cnn.covariates or ()), cnn.harmonize, cnn.cv_group)
                if c and c != MEAN_FD]
    if required:
        confound_table(read_participants(config.execution.bids_dir), subjects,
                       required=tuple(required),
                       source=str(config.execution.bids_dir / "participants.tsv"))


def deconfounder(config, table):
    """The in-fold :class:`FoldDeconfounder` of --covariates / --harmonize, or None."""
    from dpnbids.learn.confounds import FoldDeconfounder

    deconf = FoldDeconfounder(table, covariates=config.cnn.covariates or (),
                              harmonize=config.cnn.harmonize)
    return deconf if deconf else None


def group_folds(config, subjects, y, table):
    """Leave-one-group-out outer folds (--cv-scheme leave-group-out), else None."""
    from dpnbids.learn.confounds import make_group_splits

    if config.cnn.cv_scheme != "leave-group-out":
        return None
    return make_group_splits(subjects, y, table[config.cnn.cv_group].astype(str),
                             random_state=config.seed("cv.splits"),
                             group_name=config.cnn.cv_group)


def confound_cv(config, table, y, folds, perm_splits) -> tuple[pd.DataFrame, dict]:
    """Predictions of the confound-only baselines on the outer folds, and their
    label-permutation nulls ``{"confounds NAME": (observed, null)}``
    (``--n-permutations-baselines``; ``perm_splits(y)`` gives the permutations'
    (outer-training, test) index arrays)."""
    from dpnbids.learn.confounds import (CONFOUND_INPUT_SET, confound_baselines,
                                         confound_permutations)
    from dpnbids.learn.metrics import fold_mean_auc

    columns = [c for c in table.columns if table[c].notna().any()]
    if not columns:
        return pd.DataFrame(), {}
    preds = confound_baselines(table, y, folds, threshold_rule=config.cnn.threshold_rule,
                               columns=columns)
    preds["leaky"] = False
    nulls = {}
    if config.cnn.n_permutations_baselines:
        found = confound_permutations(table, y, perm_splits,
                                      n_permutations=config.cnn.n_permutations_baselines,
                                      random_state=config.seed("perm.confounds"),
                                      columns=columns)
        for name, (_, null) in found.items():
            observed = fold_mean_auc(preds[preds["model"] == name], score="raw_score")
            nulls[f"{CONFOUND_INPUT_SET} {name}"] = (observed, null)
    return preds, nulls


def confound_section(table: pd.DataFrame | None, y, warnings) -> str:
    """The group report's confound section: the warnings, then each confound per class."""
    from dpnbids.learn.confounds import confounds_by_class
    from dpnbids.reports.subject import esc, note

    if table is None or not len(table.columns):
        return note("No confounds were available (no mean FD, no site/age/sex columns).")
    parts = [f'<div class="warning">{esc(w)}</div>' for w in warnings]
    if not warnings:
        parts.append("<p>No confound alone predicts the label (every confound-only "
                     "baseline has AUC &lt; 0.70 and permutation p &ge; 0.05).</p>")
    by_class = confounds_by_class(table, y)
    rows = "".join(f"<tr><td class=\"l\">{esc(r.confound)}</td><td>{esc(r.responders)}</td>"
                   f"<td>{esc(r.non_responders)}</td><td>{r.p_value:.3g}</td></tr>"
                   for r in by_class.itertuples())
    parts.append("<h3>Head motion and other confounds per class</h3><table><tr><th></th>"
                 "<th>responders</th><th>non-responders</th><th>p</th></tr>" + rows +
                 "</table><p class=\"note\">mean_fd: mean framewise displacement (mm) over "
                 "each subject's runs. Numbers: mean ± SD, Welch t-test; categories: counts, "
                 "chi-squared test. The confound-only baselines (input set 'confounds' in "
                 "Table 2) predict the label from each confound alone on the same outer "
                 "folds. See docs/confounds.md.</p>")
    return "".join(parts)
