"""Confounds of a response classifier: confound-only baselines, covariate removal and site
harmonisation fitted inside each outer training fold, and leave-group-out splits.

* :func:`confound_table` gathers, per subject, mean framewise displacement and the
  participants.tsv columns that can confound a prediction (``site``, ``scanner``, ``age``,
  ``sex``, ``gender``, and any column named by ``--covariates``, ``--harmonize`` or
  ``--cv-group``).
* :func:`confound_baselines` predicts the label from each confound alone (an L2 logistic
  regression on the encoded confound) on the outer folds the brain models use, calibrated
  and thresholded inside each outer training fold like every other model.
* :class:`FoldDeconfounder` removes ``--covariates`` (ordinary least squares, fitted on the
  outer-training subjects, applied frozen to the test subjects) and harmonises
  ``--harmonize`` sites (ComBat, :mod:`dpnbids.learn.harmonize`) with the covariates
  protected. Each ICA map (input channel) is fitted on its own: its voxels are the features
  among which ComBat's empirical-Bayes priors are pooled.
* :func:`make_group_splits` gives leave-one-group-out outer folds (``--cv-scheme
  leave-group-out --cv-group site``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dpnbids.config import derive_seed
from dpnbids.exceptions import DataLeakageError, InputError
from dpnbids.learn.harmonize import CombatFit, apply_combat, fit_combat

#: The input set of the confound-only baselines in predictions.tsv and metrics.tsv.
CONFOUND_INPUT_SET = "confounds"
#: participants.tsv columns used as confound baselines whenever they exist.
KNOWN_CONFOUNDS = ("site", "scanner", "age", "sex", "gender")
#: The mean framewise displacement column (from the confounds tables).
MEAN_FD = "mean_fd"
#: A confound baseline at or above this AUC (or below this permutation p) is reported.
WARN_AUC, WARN_P = 0.7, 0.05
_MISSING = {"", "n/a", "na", "nan", "none"}
#: ComBat's empirical-Bayes shrinkage on voxel maps: the scale only. Shrinking each
#: voxel's site location towards the mean over voxels (neuroCombat's default) leaves part
#: of a spatially structured site effect (a gain, a bias field) in the maps: on 10 null
#: site cohorts a linear SVM still read the site at AUC 0.63, against 0.49 with the
#: location unshrunk (docs/confounds.md, benchmarks/bench_confounds.py).
COMBAT_SHRINK = "scale"


# ----------------------------------------------------------------------------- the table
def _column_values(raw: pd.Series) -> pd.Series:
    """Numbers where every non-missing value parses as one, else strings; missing -> NaN."""
    text = raw.astype(str).str.strip()
    missing = text.str.lower().isin(_MISSING)
    numbers = pd.to_numeric(text.where(~missing), errors="coerce")
    if numbers[~missing].notna().all():
        return numbers.astype(float)
    return text.where(~missing, other=np.nan)


def confound_table(participants: pd.DataFrame, subjects, *, mean_fd=None, required=(),
                   source="participants.tsv") -> pd.DataFrame:
    """One row per subject (in ``subjects`` order): ``mean_fd`` (when ``mean_fd`` maps
    subjects to values), the :data:`KNOWN_CONFOUNDS` columns participants.tsv has, and the
    ``required`` columns (``--covariates``, ``--harmonize``, ``--cv-group``), which must
    exist and be filled for every subject."""
    subjects = [str(s) for s in subjects]
    columns = {c.lower(): c for c in participants.columns}
    out = pd.DataFrame(index=pd.Index(subjects, name="participant"))
    if mean_fd is not None:
        out[MEAN_FD] = [float(mean_fd.get(s, np.nan)) for s in subjects]
    wanted = [c for c in KNOWN_CONFOUNDS if c in columns] + \
        [c for c in required if c != MEAN_FD]
    for name in dict.fromkeys(wanted):
        col = columns.get(name.lower()) if name not in participants.columns else name
        if col is None:
            raise InputError(f"{source} has no {name!r} column (columns: "
                             f"{', '.join(participants.columns)}); add it or drop {name!r} "
                             "from `covariates` / `harmonize` / `cv_group`.")
        out[name] = _column_values(participants.reindex(subjects)[col]).to_numpy()
    for name in required:
        if name not in out:
            raise InputError(f"{name!r} is not available: mean_fd needs the participant "
                             "level's confounds tables; rerun the participant level.")
        empty = [f"sub-{s}" for s, v in out[name].items() if pd.isna(v)]
        if empty:
            raise InputError(f"{source}: {name!r} is n/a or empty for {', '.join(empty)}; "
                             f"every subject needs a value to control for {name!r}. Fill it "
                             "in, or exclude them with `participant_label`.")
    return out


def is_categorical(values: pd.Series) -> bool:
    return not pd.api.types.is_numeric_dtype(values)


# ----------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class Coding:
    """How one confound becomes numbers, fitted on training subjects: a number is
    z-scored (missing -> the training mean); a category is one-hot coded against its
    first training level (a level or a missing value never seen in training is coded
    as the training proportions: the average subject)."""

    name: str
    levels: tuple = ()
    mean: float = 0.0
    sd: float = 1.0
    proportions: tuple = ()

    @classmethod
    def fit(cls, name: str, values) -> "Coding":
        values = _as_array(values)
        if values.dtype == object:
            vals = values[values != ""]
            levels = tuple(sorted(set(vals.tolist())))
            props = tuple(float((vals == lev).mean()) for lev in levels[1:])
            return cls(name, levels=levels, proportions=props)
        v = values[np.isfinite(values)]
        mean = float(v.mean()) if v.size else 0.0
        sd = float(v.std()) if v.size > 1 and v.std() > 0 else 1.0
        return cls(name, mean=mean, sd=sd)

    def transform(self, values) -> np.ndarray:
        values = _as_array(values)
        if not self.levels:
            v = (values.astype(float) - self.mean) / self.sd
            return np.where(np.isfinite(v), v, 0.0)[:, None]
        out = (values[:, None] == np.asarray(self.levels[1:], dtype=object)[None, :]) * 1.0
        seen = np.isin(values, np.asarray(self.levels, dtype=object))
        out[~seen] = self.proportions
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "levels": list(self.levels), "mean": self.mean,
                "sd": self.sd, "proportions": list(self.proportions)}

    @classmethod
    def from_dict(cls, d: dict) -> "Coding":
        return cls(d["name"], tuple(d.get("levels", ())), float(d.get("mean", 0.0)),
                   float(d.get("sd", 1.0)), tuple(d.get("proportions", ())))


def _as_array(values) -> np.ndarray:
    """A confound's values as floats (NaN missing) or as strings ("" missing)."""
    if isinstance(values, np.ndarray) and values.dtype == float:
        return values
    if isinstance(values, np.ndarray) and values.dtype == object and all(
            isinstance(v, str) for v in values):
        return values
    series = pd.Series(values)
    if is_categorical(series):
        return np.asarray([("" if pd.isna(v) else str(v)) for v in series], dtype=object)
    return series.to_numpy(dtype=float)


def encode(table: pd.DataFrame, columns, rows) -> tuple[list, np.ndarray]:
    """Codings of ``columns`` fitted on ``rows`` and the design of all rows of ``table``."""
    rows = np.asarray(rows, dtype=int)
    arrays = {c: _as_array(table[c]) for c in columns}
    codings = [Coding.fit(c, arrays[c][rows]) for c in columns]
    design = np.hstack([c.transform(arrays[c.name]) for c in codings]) if codings \
        else np.zeros((len(table), 0))
    return codings, design


def check_fit_leakage(fold, fitted_on, what: str) -> None:
    """Raise DataLeakageError if a fit of ``what`` saw one of the fold's test subjects."""
    overlap = sorted(set(fitted_on) & set(fold.test_ids))
    if overlap:
        raise DataLeakageError(
            f"repeat {fold.repeat} fold {fold.fold}: the {what} fit used outer test "
            f"subject(s) {overlap}; it must be fitted on the outer training fold only.")


# ----------------------------------------------------------------------------- baselines
def _logistic_values(f_tr, y_tr, f_te):
    from dpnbids.learn.linear import fit_decision

    if f_tr.shape[1] == 0:  # a confound with one level: nothing to learn
        return fit_decision("majority", f_tr, y_tr, f_te)
    return fit_decision("logreg", f_tr, y_tr, f_te)


def _ranking_values(f_tr, y_tr, f_te):
    """Test values that rank like :func:`_logistic_values` (enough for an AUC), fast: with
    one column, the L2 logistic slope has the sign of the score at zero slope,
    ``sum((y - mean(y)) f)``, so the ranking is ``sign * f``."""
    if f_tr.shape[1] != 1:
        return _logistic_values(f_tr, y_tr, f_te)
    return np.sign(np.sum((y_tr - y_tr.mean()) * f_tr[:, 0])) * f_te[:, 0]


def _inner_values(f, y, seed, n_splits: int = 5) -> np.ndarray:
    """Cross-validated decision values of the outer-training subjects (for calibration)."""
    from dpnbids.learn.splits import stratified_folds

    k = int(min(n_splits, np.bincount(y, minlength=2).min()))
    if k < 2:
        return _logistic_values(f, y, f)
    out = np.empty(len(y))
    for a, b in stratified_folds(y, k, seed):
        out[b] = _logistic_values(f[a], y[a], f[b])
    return out


def confound_baselines(table: pd.DataFrame, y, folds, *, threshold_rule="youden",
                       columns=None) -> pd.DataFrame:
    """Out-of-fold predictions of the label from each confound alone, on ``folds``: rows
    of predictions.tsv with input set :data:`CONFOUND_INPUT_SET` and the confound's name
    as the model. ``table`` is indexed by subject in the order of ``y``."""
    from dpnbids.learn.cv import _calibrate, _prediction_rows

    y = np.asarray(y, dtype=int)
    ids = list(table.index)
    index = {s: i for i, s in enumerate(ids)}
    rows = []
    for name in (columns if columns is not None else list(table.columns)):
        for fold in folds:
            outer = np.array([index[s] for s in fold.outer_train_ids])
            te = np.array([index[s] for s in fold.test_ids])
            codings, design = encode(table, [name], outer)
            check_fit_leakage(fold, [ids[i] for i in outer], f"{name} coding")
            inner = _inner_values(design[outer], y[outer], derive_seed(fold.seed, name))
            cal = _calibrate(inner, y[outer], threshold_rule, fold, [ids[i] for i in outer])
            dv = _logistic_values(design[outer], y[outer], design[te])
            rows.extend(_prediction_rows(fold, CONFOUND_INPUT_SET, name, list(fold.test_ids),
                                         y[te], dv, cal, dv))
    return pd.DataFrame(rows)


def confound_permutations(table: pd.DataFrame, y, splits_fn, *, n_permutations: int,
                          random_state=None, columns=None) -> dict:
    """Label-permutation nulls of each confound baseline's fold-mean AUC; ``splits_fn(y)``
    gives (outer-training, test) index arrays. Returns ``{name: (observed, null)}``."""
    from dpnbids.learn.linear import fold_auc

    y = np.asarray(y, dtype=int)
    names = columns if columns is not None else list(table.columns)
    arrays = {name: _as_array(table[name]) for name in names}

    def statistics(labels):
        aucs = {name: [] for name in names}
        for outer, te in splits_fn(labels):
            for name, values in arrays.items():
                coding = Coding.fit(name, values[outer])
                f_tr, f_te = coding.transform(values[outer]), coding.transform(values[te])
                aucs[name].append(fold_auc(labels[te], _ranking_values(f_tr, labels[outer],
                                                                       f_te)))
        return {name: float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
                for name, a in aucs.items()}

    rng = np.random.default_rng(derive_seed(random_state, "confounds"))
    null = [statistics(rng.permutation(y)) for _ in range(int(n_permutations))]
    observed = statistics(y)
    return {name: (observed[name], np.array([n[name] for n in null])) for name in names}


def flag_for(name: str, values: pd.Series | None = None) -> str:
    """The option that controls for confound ``name``."""
    if values is not None and is_categorical(values) and name.lower() in ("site", "scanner"):
        return f"`harmonize` {name} (or `cv_scheme` leave-group-out `cv_group` {name})"
    return f"`covariates` {name}"


def confound_warnings(summary: pd.DataFrame, permutation: pd.DataFrame | None = None,
                      table: pd.DataFrame | None = None) -> list[str]:
    """Worded warnings for every confound baseline with AUC >= 0.7 or permutation
    p < 0.05, naming the confound and the flag that controls for it."""
    out = []
    rows = summary[summary["input_set"] == CONFOUND_INPUT_SET]
    for _, row in rows.iterrows():
        name, auc = str(row["model"]), float(row["auc"])
        p = float("nan")
        if permutation is not None and len(permutation):
            hit = permutation[(permutation["input_set"] == CONFOUND_INPUT_SET)
                              & (permutation["model"] == name)]
            p = float(hit.iloc[0]["p_value"]) if len(hit) else p
        if not (auc >= WARN_AUC or p < WARN_P):
            continue
        what = "head motion" if name == MEAN_FD else f"the confound {name!r}"
        values = table[name] if table is not None and name in table else None
        out.append(f"{name} alone predicts the label (AUC {auc:.2f}"
                   + (f", permutation p = {p:.3f}" if np.isfinite(p) else "")
                   + f"): the brain models may be reading {what}, not the brain. Control "
                   f"for it with {flag_for(name, values)} and compare the AUCs.")
    return out


def confounds_by_class(table: pd.DataFrame, y) -> pd.DataFrame:
    """Each confound per class (responders vs non-responders): mean ± SD of a number
    (Welch t-test p), counts per level of a category (chi-squared p)."""
    from scipy import stats

    y = np.asarray(y, dtype=int)
    rows = []
    for name in table.columns:
        v = table[name]
        r, n = v[y == 1], v[y == 0]
        if is_categorical(v):
            levels = sorted(set(v.dropna().astype(str)))
            counts = np.array([[int((r.astype(str) == lev).sum()) for lev in levels],
                               [int((n.astype(str) == lev).sum()) for lev in levels]])
            keep = counts.sum(0) > 0
            p = (stats.chi2_contingency(counts[:, keep])[1]
                 if keep.sum() > 1 else float("nan"))
            cells = [", ".join(f"{lev}: {c}" for lev, c in zip(levels, row)) for row in counts]
        else:
            a, b = r.dropna().to_numpy(float), n.dropna().to_numpy(float)
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) \
                if a.size > 1 and b.size > 1 else float("nan")
            cells = [f"{x.mean():.3f} ± {x.std(ddof=1):.3f}" if x.size > 1 else "n/a"
                     for x in (a, b)]
        rows.append({"confound": name, "responders": cells[0], "non_responders": cells[1],
                     "p_value": float(p)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- in-fold fits
def fit_residualiser(x, design) -> np.ndarray:
    """OLS coefficients (1 + Q, P) of training data ``x`` (S, P) on ``[1, design]``."""
    d = np.hstack([np.ones((x.shape[0], 1)), design])
    return np.linalg.lstsq(d, np.asarray(x, dtype=np.float64), rcond=None)[0]


def apply_residualiser(beta, x, design) -> np.ndarray:
    """Remove the covariate effects (not the intercept) fitted by :func:`fit_residualiser`."""
    return np.asarray(x, dtype=np.float64) - design @ beta[1:]


@dataclass
class ChannelFit:
    """The fits of one input channel: the support voxels, the ComBat fit, the residualiser."""

    support: np.ndarray
    combat: CombatFit | None
    beta: np.ndarray | None


class FoldDeconfounder:
    """Removes ``covariates`` and harmonises ``harmonize`` sites, fitted on training subjects.

    ``table``: :func:`confound_table` rows in the order of the CV's subjects. Call
    :meth:`fit` with training data (S, ..., C) and their row indices, then
    :meth:`transform` any rows; :meth:`fold` does both for one outer fold.
    """

    def __init__(self, table: pd.DataFrame, *, covariates=(), harmonize=None,
                 combat_shrink: str = COMBAT_SHRINK):
        self.table = table
        self.covariates = tuple(covariates)
        self.harmonize = harmonize
        self.combat_shrink = combat_shrink
        if harmonize is not None and harmonize in self.covariates:
            raise InputError(f"{harmonize!r} is given to both `harmonize` and `covariates`; "
                             "ComBat removes its effect already: name it once.")

    def __bool__(self) -> bool:
        return bool(self.covariates or self.harmonize)

    def fit(self, x, rows) -> "FoldDeconfounder":
        rows = np.asarray(rows, dtype=int)
        self.codings_, design = encode(self.table, self.covariates, rows)
        self.fitted_on_ = [str(self.table.index[i]) for i in rows]
        cov = design[rows]
        sites = None if self.harmonize is None else self.table[self.harmonize].iloc[rows]
        x = np.asarray(x)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        self.channels_ = []
        for c in range(flat.shape[-1]):
            support = np.flatnonzero(np.any(flat[:, :, c] != 0, axis=0))
            data = flat[:, support, c].astype(np.float64)
            combat = None
            if sites is not None:
                combat = fit_combat(data, sites.to_numpy(), cov, shrink=self.combat_shrink)
                data, _ = apply_combat(combat, data, sites.to_numpy(), cov)
            beta = fit_residualiser(data, cov) if self.covariates else None
            self.channels_.append(ChannelFit(support, combat, beta))
        return self

    def transform(self, x, rows=None, *, table=None) -> tuple[np.ndarray, list]:
        """Deconfounded copy of ``x`` (rows ``rows`` of the table, or of ``table``) and the
        sites the fit never saw."""
        tab = self.table if table is None else table
        tab = tab if rows is None else tab.iloc[np.asarray(rows, dtype=int)]
        cov = np.hstack([c.transform(tab[c.name]) for c in self.codings_]) \
            if self.codings_ else np.zeros((len(tab), 0))
        sites = None if self.harmonize is None else tab[self.harmonize].to_numpy()
        x = np.asarray(x, dtype=np.float32)
        out = x.copy().reshape(x.shape[0], -1, x.shape[-1])
        flat = x.reshape(out.shape)
        unseen: set = set()
        for c, fit in enumerate(self.channels_):
            data = flat[:, fit.support, c].astype(np.float64)
            if fit.combat is not None:
                data, new = apply_combat(fit.combat, data, sites, cov)
                unseen.update(new)
            if fit.beta is not None:
                data = apply_residualiser(fit.beta, data, cov)
            out[:, fit.support, c] = data
        return out.reshape(x.shape), sorted(unseen)

    def fold(self, x_outer, x_test, outer, test, fold) -> dict:
        """Fit on the outer-training rows, apply to both: the deconfounded ``outer`` and
        ``test`` inputs and the fold manifest's ``record``."""
        self.fit(x_outer, outer)
        check_fit_leakage(fold, self.fitted_on_, "covariate/harmonisation")
        xo, _ = self.transform(x_outer, outer)
        xt, unseen = self.transform(x_test, test)
        return {"outer": xo, "test": xt, "record": self.record(unseen)}

    def record(self, unseen=()) -> dict:
        return {"covariates": list(self.covariates), "harmonize": self.harmonize,
                "method": self.method(), "fitted_on": list(self.fitted_on_),
                "sites_unseen_in_training": list(unseen)}

    def method(self) -> str:
        parts = []
        if self.harmonize:
            parts.append(f"ComBat (empirical Bayes) on {self.harmonize!r} per input channel"
                         + (", covariates protected" if self.covariates else ""))
        if self.covariates:
            parts.append("OLS removal of " + ", ".join(self.covariates))
        return "; ".join(parts) + ", fitted on the outer training fold, applied frozen to " \
                                  "its test subjects"

    def state(self) -> tuple[dict, dict]:
        """The fitted state as JSON-able metadata and named arrays (a model bundle's
        ``bundle.json`` entry and ``deconfound.npz``); :meth:`from_state` restores it."""
        meta = {"covariates": list(self.covariates), "harmonize": self.harmonize,
                "method": self.method(), "codings": [c.to_dict() for c in self.codings_],
                "fitted_on": list(self.fitted_on_), "n_channels": len(self.channels_),
                "sites": [] if self.harmonize is None else
                list(self.channels_[0].combat.sites)}
        arrays = {}
        for c, fit in enumerate(self.channels_):
            arrays[f"c{c}_support"] = fit.support
            if fit.beta is not None:
                arrays[f"c{c}_beta"] = fit.beta
            if fit.combat is not None:
                arrays.update({f"c{c}_combat_{k}": v for k, v in fit.combat.to_arrays().items()})
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays) -> "FoldDeconfounder":
        """A fitted deconfounder from :meth:`state`'s metadata and arrays."""
        self = cls(pd.DataFrame(), covariates=meta["covariates"], harmonize=meta["harmonize"])
        self.codings_ = [Coding.from_dict(d) for d in meta["codings"]]
        self.fitted_on_ = list(meta.get("fitted_on", []))
        self.channels_ = []
        for c in range(int(meta["n_channels"])):
            prefix = f"c{c}_combat_"
            combat = {k[len(prefix):]: arrays[k] for k in arrays if k.startswith(prefix)}
            self.channels_.append(ChannelFit(
                np.asarray(arrays[f"c{c}_support"]),
                CombatFit.from_arrays(combat) if combat else None,
                np.asarray(arrays[f"c{c}_beta"]) if f"c{c}_beta" in arrays else None))
        return self

    def fit_apply_2d(self, x2d, train_rows) -> np.ndarray:
        """Deconfounded copy of subject-by-feature data (all rows), fitted on
        ``train_rows``: the component summaries of in-fold SSC selection."""
        x = np.asarray(x2d, dtype=np.float64)[:, :, None]
        self.fit(x[np.asarray(train_rows, dtype=int)], train_rows)
        return self.transform(x)[0][:, :, 0]


# ----------------------------------------------------------------------------- splits
def make_group_splits(subject_ids, labels, groups, *, val_fraction: float = 0.2,
                      random_state=None, group_name: str = "group") -> list:
    """Leave-one-group-out outer folds: each level of ``groups`` (e.g. sites) is one test
    fold, with a seeded, stratified inner validation split of the other groups."""
    from sklearn.model_selection import train_test_split

    from dpnbids.learn.splits import Fold, check_no_leakage

    ids = np.asarray([str(s) for s in subject_ids])
    y = np.asarray(labels, dtype=int)
    g = np.asarray([str(v) for v in groups])
    levels = sorted(set(g))
    if len(levels) < 2:
        raise InputError(f"`cv_scheme` leave-group-out needs at least two levels of "
                         f"{group_name!r}; all subjects have {levels[0]!r}.")
    folds = []
    for k, level in enumerate(levels):
        test, train = np.flatnonzero(g == level), np.flatnonzero(g != level)
        ytr = y[train]
        if min((ytr == 1).sum(), (ytr == 0).sum()) < 2:
            raise InputError(f"leaving out {group_name}={level!r} leaves "
                             f"{int((ytr == 1).sum())} responders and "
                             f"{int((ytr == 0).sum())} non-responders to train on; each class "
                             "needs at least two. Merge small groups or use `cv_scheme` "
                             "stratified.")
        seed = derive_seed(random_state, k, bits=32)
        n_val = max(2, int(round(val_fraction * train.size)))
        inner, val = train_test_split(train, test_size=n_val, stratify=ytr,
                                      random_state=seed % (2**31))
        fold = Fold(0, k, tuple(ids[np.sort(inner)].tolist()), tuple(ids[np.sort(val)].tolist()),
                    tuple(ids[test].tolist()), seed)
        check_no_leakage(fold)
        folds.append(fold)
    return folds


def linear_cv_auc(x, y, subject_ids, folds, *, deconfound=None, model: str = "svm") -> float:
    """Fold-mean test AUC of a linear baseline (``svm`` or ``logreg``) on ``folds``, with the
    in-fold deconfounding of :func:`dpnbids.learn.cv.run_nested_cv` but without the CNN:
    a quick check of what ``--covariates`` / ``--harmonize`` leave for a linear reader."""
    from dpnbids.learn.cv import _fold_inputs
    from dpnbids.learn.linear import GramCache, decision_values, fold_auc

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=int)
    index = {s: i for i, s in enumerate(subject_ids)}
    aucs = []
    for fold in folds:
        outer = np.array([index[s] for s in fold.outer_train_ids])
        te = np.array([index[s] for s in fold.test_ids])
        _, _, xo, xt, _ = _fold_inputs(x, outer, te, None, fold, "linear", deconfound)
        gram = GramCache(np.concatenate([xo, xt]))
        local = np.arange(outer.size + te.size)
        dv = decision_values(gram, model, local[:outer.size], local[outer.size:],
                             np.concatenate([y[outer], y[te]]), np.arange(x.shape[-1]))
        aucs.append(fold_auc(y[te], dv))
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")
